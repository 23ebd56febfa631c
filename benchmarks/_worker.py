"""A `rebate-guard worker` in its own process, as the benchmarks run it (as in production)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rebate_guard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

#: The worker under cProfile timed by its main thread's CPU (`time.thread_time`): on a
#: shared box wall-clock timing charges every preemption to whatever was running, and the
#: broker consumer's thread is not profiled (measure it from /proc). Stats go to argv[1].
PROFILED = """
import cProfile, sys, time
from rebate_guard.cli import main
profile = cProfile.Profile(time.thread_time)
try:
    profile.runcall(main, ["worker"])
except SystemExit:
    pass
finally:
    profile.dump_stats(sys.argv[1])
"""


def start_worker(
    settings: Settings, log: Path, *, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start one worker with `settings` (its environment), logging to `log`; `profile`: run
    it under cProfile (`PROFILED`), stats written there when the worker stops (SIGTERM)."""
    command = ["-m", "rebate_guard.cli", "worker"]
    if profile is not None:
        command = ["-c", PROFILED, str(profile)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": path}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
