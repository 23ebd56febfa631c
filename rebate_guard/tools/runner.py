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
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rebate_guard.contract.time import DAY_MS
from rebate_guard.settings import Settings

if TYPE_CHECKING:
    from rebate_guard.tools.simulator import World, WorldConfig

log = logging.getLogger("rebate_guard")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiokafka logs every retriable hiccup of the local broker at WARNING/ERROR.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


def run_worker(settings: Settings) -> int:
    """Run one Faust worker until SIGTERM/SIGINT. Scale by starting more of them."""

    from rebate_guard.tools.topics import ensure_topics
    from streams.app import create_worker
    from streams.transport import QuietWorker

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
    if not settings.api_token:
        settings = settings.with_api_token()
        print(
            f"rebate-guard worker: no RG_API_TOKEN set; the web server takes the token in "
            f"{settings.api_token_file}",
            file=sys.stderr,
        )
    worker = create_worker(settings)
    faust_worker = QuietWorker(worker.app, loglevel=settings.log_level.upper(), quiet=True)
    faust_worker.execute_from_commandline()
    return 0


def run_up(settings: Settings, workers: int = 1, seed: int = 7) -> int:
    """The main job: local stack, `workers` worker processes, a steady simulated feed, the
    dashboard on the first worker's web port. Ctrl-C stops everything."""
    from rebate_guard.tools.stack import LocalStack

    configure_logging("info")
    # `kill`, systemd and CI send SIGTERM: shut down as gracefully as on Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    start_ms = int(time.time() * 1000)
    token_from_file = not settings.api_token
    settings = settings.with_api_token()  # the workers get it from here: one for all
    from rebate_guard.tools.simulator import simulate_world

    first = simulate_world(episode_config(seed, 0, start_ms))
    with LocalStack(settings) as stack:
        live = stack.settings(settings)
        from rebate_guard.tools.topics import ensure_topics

        asyncio.run(ensure_topics(live))
        lateness_ms = compressed_lateness_ms(first, settings)
        log.info(
            "the feed runs event time ~%.0fx faster than the clock: allowed lateness %d ms "
            "(one second of wall-clock skew between partitions)",
            lateness_ms / 1000,
            lateness_ms,
        )
        workers_settings = live.replace(allowed_lateness_ms=lateness_ms)
        procs = [_spawn_worker(workers_settings, index) for index in range(workers)]
        url = f"http://{live.web_host}:{live.web_port}/console/"
        print(f"\nRebateGuard is up: console {url}  (Ctrl-C stops)", flush=True)
        print(f"  {_login_hint(live, token_from_file)}\n", flush=True)
        print(f"  Kafka bootstrap {live.kafka_bootstrap}   Redis {live.redis_url}", flush=True)
        try:
            asyncio.run(_feed_forever(live, seed, start_ms, first, procs))
        except KeyboardInterrupt:
            pass
        finally:
            _stop_all(procs)
    return 0


def _login_hint(settings: Settings, token_from_file: bool) -> str:
    """How to log in, for the person who ran `up`: a secret they set is never printed."""
    user = settings.console_user
    if settings.console_password:
        return f"log in as {user!r} with RG_CONSOLE_PASSWORD"
    if not token_from_file:
        return f"log in as {user!r} with your RG_API_TOKEN"
    return (
        f"log in as {user!r}, password {settings.api_token} (the API token, for "
        f"`Authorization: Bearer` too; kept in {settings.api_token_file})"
    )


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _spawn_worker(settings: Settings, index: int) -> subprocess.Popen[bytes]:
    from rebate_guard.tools.stack import child_setup

    env = {**os.environ, **settings.replace(web_port=settings.web_port + index).to_env()}
    env["RG_DATA_DIR"] = str(Path(settings.data_dir) / f"worker-{index}")
    return subprocess.Popen(
        [sys.executable, "-m", "rebate_guard.cli", "worker"], env=env, preexec_fn=child_setup()
    )


#: Each episode of the feed is a fresh simulated world of this many days...
EPISODE_DAYS = 14
#: ...whose older accounts signed up up to this many days before it starts.
HISTORY_DAYS = 90
#: Validation rejects timestamps from 2100 on: the feed stops before its timeline gets there
#: (2099-01-01, hours of feeding away).
LAST_START_MS = 4_070_908_800_000


def episode_config(seed: int, episode: int, start_ms: int) -> WorldConfig:
    """Episode `episode` of the feed, continuing the timeline from `start_ms`.

    Episodes are fresh worlds (new ids), so each brings its own history of accounts that
    signed up before it starts. Starting every episode that history's length after the
    previous one ends keeps those signups after everything already fed: the stream stays
    in event-time order, as a platform's would, instead of every episode arriving late.
    """
    from rebate_guard.tools.simulator import WorldConfig

    def config(start_ts_ms: int) -> WorldConfig:
        return WorldConfig(
            seed=seed + episode,
            n_users=5_000,
            n_merchants=300,
            days=EPISODE_DAYS,
            history_days=HISTORY_DAYS,
            start_ts_ms=start_ts_ms,
            id_prefix=f"e{episode}-",
        )

    history_ms = start_ms - config(start_ms).history_start_ms
    return config(start_ms + episode * (history_ms + EPISODE_DAYS * DAY_MS))


def compressed_lateness_ms(world: World, settings: Settings, wall_skew_s: float = 1.0) -> int:
    """The allowed lateness for a feed that plays episode `world` at `RG_SIMULATE_RATE`
    events per second.

    The feed compresses weeks of event time into a minute or two, so a few milliseconds of
    skew between how far the worker has read each partition (normal: each is fetched on its
    own) span hours of event time. With the default lateness (2 s of event time) most events
    of a sparse source (signups, labels) that went idle would arrive late. Allowing
    `wall_skew_s` of wall-clock skew at the feed's speed-up keeps the one order.
    """
    events = world.transactions.height + world.signups.height + world.labels.height
    span_s = EPISODE_DAYS * DAY_MS / 1000
    speedup = span_s / max(events / settings.simulate_rate, 1e-9)
    return max(int(speedup * wall_skew_s * 1000), settings.allowed_lateness_ms)


async def _feed_forever(
    settings: Settings,
    seed: int,
    start_ms: int,
    first: World,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Simulated episodes back to back, until the workers stop (or the timeline nears
    the year 2100, hours from now: then the workers go on serving without new input)."""
    from rebate_guard.tools.producer import produce_world
    from rebate_guard.tools.simulator import simulate_world

    episode, world = 0, first
    while True:
        if episode:
            config = episode_config(seed, episode, start_ms)
            if config.start_ts_ms > LAST_START_MS:
                log.info("the simulated timeline is near the year 2100: the feed stops here")
                return
            world = simulate_world(config)
        log.info(
            "feeding simulated episode %d (%d days): %d transactions",
            episode,
            EPISODE_DAYS,
            world.transactions.height,
        )
        await _while_workers_run(procs, produce_world(settings, world, rate=settings.simulate_rate))
        for proc in procs:
            code = proc.poll()
            if code == 0:  # stopped cleanly: Ctrl-C reaches the workers too
                log.info("worker %d has stopped; so does the feed", proc.pid)
                return
            if code is not None:
                raise RuntimeError(f"worker {proc.pid} exited with {code}")
        episode += 1


#: How often the feed looks whether the workers still run.
WORKER_POLL_S = 0.5


async def _while_workers_run(procs: Sequence[Any], work: Coroutine[Any, Any, Any]) -> bool:
    """Runs `work` until it is done (True) or a worker process exits (False, `work`
    cancelled): an episode takes about a minute to feed, and a worker stopped by Ctrl-C or
    by a failure must not wait for it to end before `up` notices."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            if any(proc.poll() is not None for proc in procs):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return False
            await asyncio.wait([task], timeout=WORKER_POLL_S)
        task.result()  # its failure, if any
        return True
    finally:
        task.cancel()


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
