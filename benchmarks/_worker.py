"""A `rebate-guard worker` in its own process, as the benchmarks run it (as in production)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rebate_guard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """Start one worker with `settings` (its environment), logging to `log`."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": path}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rebate_guard.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
