"""Process-level jobs: one Faust worker, and `up` (the whole local pipeline)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rebate_guard.settings import Settings

log = logging.getLogger("rebate_guard")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiokafka logs every retriable hiccup of the local broker at WARNING/ERROR.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


def run_worker(settings: Settings) -> int:
    """Run one Faust worker until SIGTERM/SIGINT. Scale by starting more of them."""
    import faust

    from rebate_guard.topics import ensure_topics
    from streams.app import create_worker

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on non-Linux
        pass
    try:
        asyncio.run(ensure_topics(settings))
    except Exception as exc:  # topics may be managed by the platform team
        print(f"rebate-guard worker: could not ensure topics ({exc}); continuing", file=sys.stderr)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = create_worker(settings)
    # Faust's `-l warn` sets the root logger to DEBUG (a known trap): pass a real level name.
    faust_worker = faust.Worker(worker.app, loglevel=settings.log_level.upper(), quiet=True)
    faust_worker.execute_from_commandline()
    return 0


def run_up(settings: Settings, workers: int = 1, seed: int = 7) -> int:
    """The main job: local stack, `workers` worker processes, a steady simulated feed, the
    dashboard on the first worker's web port. Ctrl-C stops everything."""
    from rebate_guard.stack import LocalStack

    configure_logging("info")
    # `kill`, systemd and CI send SIGTERM: shut down as gracefully as on Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with LocalStack(settings) as stack:
        live = stack.settings(settings)
        from rebate_guard.topics import ensure_topics

        asyncio.run(ensure_topics(live))
        procs = [_spawn_worker(live, index) for index in range(workers)]
        url = f"http://{live.web_host}:{live.web_port}/"
        print(f"\nRebateGuard is up: dashboard {url}  (Ctrl-C stops)\n", flush=True)
        print(f"  Kafka bootstrap {live.kafka_bootstrap}   Redis {live.redis_url}", flush=True)
        try:
            asyncio.run(_feed_forever(live, seed, procs))
        except KeyboardInterrupt:
            pass
        finally:
            _stop_all(procs)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _spawn_worker(settings: Settings, index: int) -> subprocess.Popen[bytes]:
    from rebate_guard.stack import child_setup

    env = {**os.environ, **settings.replace(web_port=settings.web_port + index).to_env()}
    env["RG_DATA_DIR"] = str(Path(settings.data_dir) / f"worker-{index}")
    return subprocess.Popen(
        [sys.executable, "-m", "rebate_guard.cli", "worker"], env=env, preexec_fn=child_setup()
    )


async def _feed_forever(
    settings: Settings, seed: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Simulated weeks back to back, each a fresh seeded world continuing the timeline."""
    from rebate_guard.producer import produce_world
    from rebate_guard.simulator import WorldConfig, simulate_world

    start_ms = int(time.time() * 1000)
    week = 0
    while True:
        config = WorldConfig(
            seed=seed + week,
            n_users=5_000,
            n_merchants=300,
            days=7,
            start_ts_ms=start_ms + week * 7 * 86_400_000,
            id_prefix=f"w{week}-",
        )
        world = simulate_world(config)
        log.info("feeding simulated week %d: %d transactions", week, world.transactions.height)
        await produce_world(settings, world, rate=settings.simulate_rate)
        for proc in procs:
            code = proc.poll()
            if code == 0:  # stopped cleanly: Ctrl-C reaches the workers too
                log.info("worker %d has stopped; so does the feed", proc.pid)
                return
            if code is not None:
                raise RuntimeError(f"worker {proc.pid} exited with {code}")
        week += 1


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
