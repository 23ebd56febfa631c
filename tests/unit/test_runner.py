"""The `up` feed: episodes of simulated traffic that keep the stream in event-time order."""

from __future__ import annotations

from rebate_guard.settings import Settings
from rebate_guard.tools.runner import compressed_lateness_ms, episode_config
from rebate_guard.tools.simulator import simulate_world


def test_each_episode_starts_after_everything_the_previous_one_fed() -> None:
    """Backdated signups of a fresh episode must not arrive behind the watermark."""
    first, second = (simulate_world(episode_config(3, k, 1_800_000_000_000)) for k in (0, 1))
    last_of_first = max(
        frame["ts"].max() for frame in (first.transactions, first.signups, first.labels)
    )
    earliest_of_second = min(
        frame["ts"].min() for frame in (second.transactions, second.signups, second.labels)
    )
    assert earliest_of_second > last_of_first
    assert second.signups["ts"].min() < second.transactions["ts"].min()  # it has a history
    assert not set(first.signups["user_id"]) & set(second.signups["user_id"])


def test_lateness_covers_a_second_of_skew_at_the_feed_speed() -> None:
    world = simulate_world(episode_config(3, 0, 1_800_000_000_000))
    events = world.transactions.height + world.signups.height + world.labels.height
    slow, fast = Settings(simulate_rate=100.0), Settings(simulate_rate=1000.0)
    # At 100 events/s the episode takes events/100 seconds of wall time to feed.
    span_ms = 14 * 86_400_000
    assert compressed_lateness_ms(world, slow) == int(span_ms / (events / 100.0))
    assert compressed_lateness_ms(world, fast) > 9 * compressed_lateness_ms(world, slow)
    # Never below what the settings allow anyway.
    assert compressed_lateness_ms(world, Settings(simulate_rate=1e-6)) == 2000


def test_the_worker_keeps_the_log_level_asked_for_instead_of_faust_s_debug() -> None:
    """Faust's spinner turns the root logger to DEBUG at WARNING and above, so every
    library's debug call builds a record; the worker keeps the level it was given."""
    import logging

    import faust

    from streams.transport import QuietWorker

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    app = faust.App("log-level-test", broker="memory://", web_enabled=False)
    try:
        for worker_class, debug_on in ((faust.Worker, True), (QuietWorker, False)):
            worker = worker_class(app, loglevel="WARNING", quiet=True)
            worker._setup_logging()
            assert root.level == (logging.DEBUG if debug_on else logging.WARNING)
            assert logging.getLogger("probe.library").isEnabledFor(logging.DEBUG) is debug_on
            root.handlers[:] = saved[1]
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


class _Proc:
    """A worker process as `up` sees it: running until `code` is set."""

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


def test_the_feed_stops_when_a_worker_exits_without_finishing_its_episode() -> None:
    import asyncio

    from rebate_guard.tools.runner import _while_workers_run

    async def run() -> None:
        running, stopping = _Proc(), _Proc()
        episode = asyncio.Event()
        cancelled = []

        async def feed() -> None:
            try:
                await episode.wait()  # an episode that never ends by itself
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        asyncio.get_running_loop().call_later(0.1, setattr, stopping, "code", 0)
        done = await asyncio.wait_for(_while_workers_run([running, stopping], feed()), 30)
        assert done is False and cancelled == [True]

        async def short_feed() -> int:
            return 7

        assert await _while_workers_run([_Proc()], short_feed()) is True

    asyncio.run(run())
