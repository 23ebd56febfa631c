"""The `up` feed's clock: history back-filled fast up to the wall clock, then live traffic
stamped with the clock, from a world sized to the live rate."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from rebate_guard.contract.time import DAY_MS, HOUR_MS
from rebate_guard.settings import Settings
from rebate_guard.tools.producer import FeedClock
from rebate_guard.tools.runner import (
    BACKFILL_DAYS,
    LIVE_DAYS,
    UP_GROWTH_HOURS_BEFORE_STALL,
    backfill_events,
    demo_utc_offset_minutes,
    live_spans,
    switch_ms_for,
    up_world,
    up_world_config,
)
from rebate_guard.tools.simulator import World, event_stream, platform_books, simulate_world

NOW = 1_800_000_000_000


def test_the_up_world_is_sized_so_its_payments_come_at_the_live_rate() -> None:
    config = up_world_config(3, switch_ms=NOW, live_rate=0.05)
    assert config.n_users == round(0.05 * 86_400 / 0.3)  # 14,400 users at 0.3 a day
    assert config.start_ts_ms == NOW - BACKFILL_DAYS * DAY_MS
    assert config.days == BACKFILL_DAYS + LIVE_DAYS
    world = simulate_world(config)
    live = world.transactions.filter(world.transactions["ts"] >= NOW)
    payments_per_s = live.filter(live["kind"] == "payment").height / (LIVE_DAYS * 86_400)
    assert 0.04 < payments_per_s < 0.065  # legit at the rate, abuse and its bursts on top
    # Twice the rate: twice the platform, not twice the payments per user.
    assert up_world_config(3, switch_ms=NOW, live_rate=0.1).n_users == 2 * config.n_users


@pytest.mark.parametrize(("seed", "weekday"), [(3, 0), (7, 2)])
def test_the_demo_platform_is_healthy_until_its_stall_takes_it_past_the_warning_line(
    seed: int, weekday: int
) -> None:
    """The liability : distributable ratio (hourly, granted = requested; the switch at the
    platform's midday, as `up` places it, on two different weekdays): under 2.5:1 while
    the platform grows, past the warning line (3:1) within the back-fill once its growth
    has stopped (a day after the stall is enough, the night included), well before the
    switch, so that `up` shows the alert before its live traffic, and past it from then on."""
    switch = NOW - NOW % DAY_MS + 12 * HOUR_MS + weekday * DAY_MS
    config = up_world_config(seed, switch_ms=switch, live_rate=0.05)
    stall = config.stall_ts_ms
    assert stall == config.start_ts_ms + UP_GROWTH_HOURS_BEFORE_STALL * HOUR_MS
    assert stall <= switch - DAY_MS  # the back-fill holds a day after the stall
    books = platform_books(simulate_world(config), period_ms=HOUR_MS)
    ratio, end = pl.col("ratio"), pl.col("period_end")
    growing = books.filter(end <= stall)
    assert growing.height >= UP_GROWTH_HOURS_BEFORE_STALL and growing["ratio"].max() < 2.5
    crossed = books.filter(ratio.is_null() | (ratio >= 3))["period_end"].min()
    assert stall < crossed <= switch - 12 * HOUR_MS
    after = books.filter((end >= crossed) & (end <= switch + DAY_MS))["ratio"]
    assert after.min() >= 3


def test_the_switch_is_where_a_back_fill_at_the_rate_catches_up() -> None:
    assert switch_ms_for(NOW, backfill_events=1_000, backfill_rate=500.0) == NOW + 2_000
    settings = Settings(simulate_rate=2_000.0, simulate_live_rate=0.02)
    world, switch = up_world(settings, 3, now_ms=NOW)
    events = backfill_events(world, switch)
    # Every account that signed up before the switch is in the back-fill, with a day of
    # payments; the draft that placed it counted within a few events of the final world.
    assert events >= world.signups.filter(world.signups["ts"] < switch).height
    assert abs((switch - NOW) - events / 2_000 * 1000) < 0.02 * (switch - NOW)


def test_the_demo_platform_lives_where_it_is_midday_so_live_traffic_is_not_its_night() -> None:
    midnight = NOW - NOW % DAY_MS
    assert demo_utc_offset_minutes(midnight + 3 * HOUR_MS) == 9 * 60
    assert demo_utc_offset_minutes(midnight + 15 * HOUR_MS + 1) == -3 * 60
    assert demo_utc_offset_minutes(midnight + 22 * HOUR_MS) == 14 * 60
    assert demo_utc_offset_minutes(midnight + 21 * HOUR_MS) == -9 * 60  # within -14..+14 h
    now = midnight + 3 * HOUR_MS  # the platform's night in UTC
    rates = []
    for offset in (0, demo_utc_offset_minutes(now)):
        settings = Settings(
            simulate_rate=2_000.0, simulate_live_rate=0.02, local_utc_offset_minutes=offset
        )
        world, switch = up_world(settings, 3, now_ms=now)
        payments = world.transactions.filter(world.transactions["kind"] == "payment")
        first_hour = payments.filter(
            (payments["ts"] >= switch) & (payments["ts"] < switch + HOUR_MS)
        ).height
        rates.append(first_hour / 3600)
        # Still placed on the wall clock: the back-fill ends at the switch as planned.
        assert abs((switch - now) - backfill_events(world, switch) / 2) < 0.02 * (switch - now)
    night, midday = rates
    assert night < 0.3 * 0.02 < 0.02 < midday  # UTC's night; the busy hours of its day


def _fed(world: World, *, now_ms: int, rate: float) -> list[tuple[int, int, int, bool]]:
    """(schedule ts, stamp, wall clock at sending, live) for each event as `feed_live`
    times them, on a simulated wall clock: a back-fill event takes 1/rate s to send, a live
    one waits for its time (and 3 ms to send)."""
    clock, out, wall = FeedClock(), [], float(now_ms)
    for _, _, payload in event_stream(world):
        ts = payload["ts"]
        wall += clock.wait_ms(ts, now_ms=int(wall))
        wall += 1000 / rate if not clock.live else 3
        out.append((ts, clock.stamp(ts, now_ms=int(wall)), int(wall), clock.live))
    return out


def test_the_feed_back_fills_history_then_stamps_live_traffic_with_the_clock() -> None:
    rate = 2_000.0
    world, switch = up_world(Settings(simulate_rate=rate, simulate_live_rate=0.02), 3, now_ms=NOW)
    fed = _fed(world, now_ms=NOW, rate=rate)
    stamps = [stamp for _, stamp, _, _ in fed]
    assert stamps == sorted(stamps)  # one event-time order, back-fill and live
    backfill = [f for f in fed if not f[3]]
    live = [f for f in fed if f[3]]
    assert backfill and live and fed.index(live[0]) == len(backfill)  # once live, live
    # The back-fill keeps its own ts, never ahead of the clock; it is the history
    # before the switch, and it catches up about when planned.
    assert all(stamp == ts <= wall for ts, stamp, wall, _ in backfill)
    assert len(backfill) == backfill_events(world, live[0][0])
    assert abs(backfill[-1][2] - switch) < 0.05 * (switch - NOW)
    # Live traffic is "now": stamped with the clock as sent, at its own time.
    assert all(stamp == wall >= ts for ts, stamp, wall, _ in live)
    assert max(wall - ts for ts, _, wall, _ in live) < 1_000  # no time warp: real time


def test_live_stamps_never_go_back_with_the_clock() -> None:
    clock = FeedClock()
    assert clock.wait_ms(NOW - 5, now_ms=NOW) == 0 and not clock.live
    assert clock.stamp(NOW - 5, now_ms=NOW) == NOW - 5  # back-fill: its own ts
    assert clock.wait_ms(NOW + 40, now_ms=NOW) == 40 and clock.live
    assert clock.stamp(NOW + 40, now_ms=NOW + 41) == NOW + 41
    assert clock.stamp(NOW + 41, now_ms=NOW + 30) == NOW + 41  # the clock stepped back
    # Reached late (a burst): sent at once, stamped now rather than in the past.
    assert clock.wait_ms(NOW + 42, now_ms=NOW + 90) == 0 and clock.live
    assert clock.stamp(NOW + 42, now_ms=NOW + 90) == NOW + 90


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


def test_the_feed_s_payments_ask_score_with_the_token_and_reach_the_topic_if_unanswered() -> None:
    """`PaymentScorer` against a real HTTP server: decided and provisional answers are
    tallied; a payment the server fails on is handed to the fallback (the topic)."""
    import asyncio

    from aiohttp import web

    from rebate_guard.tools.producer import PaymentScorer
    from rebate_guard.tools.stack import free_port

    seen: list[tuple[str | None, dict]] = []

    async def score(request: web.Request) -> web.Response:
        payment = await request.json()
        seen.append((request.headers.get("Authorization"), payment))
        if payment["tx_id"] == "t-broken":
            return web.json_response({"error": "boom"}, status=500)
        provisional = payment["tx_id"] == "t-late"
        reasons = ["fail_closed:timeout"] if provisional else []
        return web.json_response({"provisional": provisional, "decision": {"reasons": reasons}})

    async def run() -> list[tuple[str, bytes]]:
        app = web.Application()
        app.router.add_post("/score", score)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        to_topic: list[tuple[str, bytes]] = []

        async def fallback(key: str, body: bytes) -> None:
            to_topic.append((key, body))

        settings = Settings(web_port=port, api_token="s3cret")
        try:
            async with PaymentScorer([settings], fallback=fallback) as scorer:
                for tx_id in ("t-1", "t-late", "t-broken", "t-2"):
                    await scorer.ask("u-1", {"tx_id": tx_id, "ts": NOW})
            tally = scorer.tally
            assert (tally.decided, dict(tally.provisional), tally.unanswered) == (
                2,
                {"fail_closed:timeout": 1},
                1,
            )
            assert len(tally.latencies_ms) == 2 and "4 live payments" in tally.summary()
            assert tally.latencies_ms == []  # a summary starts the next latency window
        finally:
            await runner.cleanup()
        return to_topic

    to_topic = asyncio.run(run())
    assert {auth for auth, _ in seen} == {"Bearer s3cret"}
    assert to_topic == [("u-1", b'{"tx_id":"t-broken","ts":%d}' % NOW)]


def _small_up_world() -> tuple[World, int]:
    return up_world(Settings(simulate_rate=2_000.0, simulate_live_rate=0.02), 3, now_ms=NOW)


def test_after_its_live_week_the_platform_pays_again_as_it_did_with_new_tx_ids() -> None:
    world, switch = _small_up_world()
    span = LIVE_DAYS * DAY_MS
    assert LIVE_DAYS % 7 == 0  # a repeat falls on the same weekday and hour
    first, second, third = itertools.islice(live_spans(world, switch_ms=switch), 3)
    assert first is world
    live = world.transactions.filter(pl.col("ts") >= switch)
    again = second.transactions
    assert again["ts"].min() >= switch + span and again["ts"].max() < switch + 2 * span
    # The same users at the same merchants, one span later, under new tx_ids...
    for frame in (live, again):
        assert frame.height > 0
    payments = again.filter(pl.col("kind") == "payment")
    assert payments.select("user_id", "merchant_id", "amount_cents", pl.col("ts") - span).equals(
        live.filter(pl.col("kind") == "payment").select(
            "user_id", "merchant_id", "amount_cents", "ts"
        )
    )
    tx_ids = [f.transactions["tx_id"] for f in (first, second, third)]
    assert pl.concat(tx_ids).is_unique().all()
    assert third.transactions["tx_id"].str.starts_with("r2-").all()
    # ...whose refunds and labels follow them; none of a transaction before the span.
    for frame in (second, third):
        ids = set(frame.transactions["tx_id"])
        refs = frame.transactions["ref_tx_id"].drop_nulls()
        assert set(refs) <= ids
        assert set(frame.labels["tx_id"].drop_nulls()) <= ids
        assert frame.signups.is_empty()  # the accounts exist
    # What is left out: refunds of history, signups; nothing else.
    history_refunds = live.filter(
        pl.col("ref_tx_id").is_not_null() & (~pl.col("ref_tx_id").is_in(live["tx_id"].to_list()))
    ).height
    assert again.height == live.height - history_refunds
    assert second.labels.height <= world.labels.filter(pl.col("ts") >= switch).height
    # The platform's flows on those payments come again under new ids; what came with new
    # accounts or money (bindings, sign-up bonuses, top-ups) does not.
    for repeat, frame in ((1, second), (2, third)):
        events = frame.platform_events
        assert events.height > 0
        assert events["event_id"].str.starts_with(f"r{repeat}-").all()
        assert events["ts"].min() >= switch + repeat * span
        assert set(events["tx_id"].drop_nulls()) <= set(frame.transactions["tx_id"])
        assert not set(events["kind"]) & {"binding", "pool_topup"}
        grants = events.filter(pl.col("kind") == "points_grant")
        assert grants.filter(
            pl.col("tx_id").is_null() & pl.col("counterparty_id").is_null()
        ).is_empty()
        redeemed = events.filter(pl.col("kind") == "coupon_redeem")["coupon_id"]
        issued = events.filter(pl.col("kind") == "coupon_issue")["coupon_id"]
        assert set(redeemed) <= set(issued)
    ids = pl.concat([f.platform_events["event_id"] for f in (first, second, third)])
    assert ids.is_unique().all()


def test_live_payments_ask_the_worker_owning_their_user_partition() -> None:
    from rebate_guard.tools.producer import ScoreRoutes, ScoreTally
    from streams.sink import key_partition

    workers = [Settings(web_port=7000 + i, api_token="t", partitions=4) for i in range(2)]
    routes, tally = ScoreRoutes(workers), ScoreTally()
    users = [f"u{n}" for n in range(40)]
    # Before any assignment is known: in turn.
    assert [routes.url_for(u, tally) for u in users[:4]] == [routes.urls[i % 2] for i in range(4)]
    routes.update(0, ["user-0", "user-2", "entity-0", "entity-2", "graph-0"])
    routes.update(1, ["user-1", "user-3", "entity-1", "entity-3"])
    for user in users:
        owner = key_partition(user.encode(), 4) % 2  # what the producer's partitioner says
        assert routes.url_for(user, tally) == f"http://127.0.0.1:{7000 + owner}/score"
    assert (tally.in_turn, tally.to_owner) == (4, 40)
    assert "(sent: 40 to their partition's worker, 4 in turn)" in tally.summary()
    # A rebalance: worker 1 takes partition 2 and leaves 3 (unknown until it is told).
    routes.update(1, ["user-1", "user-2"])
    assert routes.owners == {0: 0, 1: 1, 2: 1}
    one = ScoreRoutes(workers[:1])
    assert {one.url_for(u, tally) for u in users} == {"http://127.0.0.1:7000/score"}
    assert (tally.in_turn, tally.to_owner) == (4, 40)  # one worker: no routing to count


def test_a_longer_back_fill_brings_the_classifier_labels_the_default_does_not() -> None:
    """Reviews label payments 2-9 days after them: the default two days of history have none
    yet."""
    labelled = []
    for days in (BACKFILL_DAYS, 10):
        config = up_world_config(3, switch_ms=NOW, live_rate=0.02, backfill_days=days)
        assert (config.start_ts_ms, config.days) == (NOW - days * DAY_MS, days + LIVE_DAYS)
        labels = simulate_world(config).labels
        labelled.append(labels.filter((pl.col("ts") < NOW) & (pl.col("label") == "fraud")).height)
    assert labelled[0] == 0 < labelled[1]
