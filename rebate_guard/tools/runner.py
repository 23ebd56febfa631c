"""Process-level jobs: one Faust worker, and `up` (the whole local pipeline)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.settings import Settings

if TYPE_CHECKING:
    import polars as pl

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


def run_up(
    settings: Settings, workers: int = 1, seed: int = 7, *, backfill_days: int | None = None
) -> int:
    """The main job: local stack, `workers` worker processes, a simulated platform fed on
    the wall clock (its history back-filled, then live traffic whose payments are decided
    at payment time), the dashboard on the first worker's web port. Ctrl-C stops
    everything. `backfill_days`: of history before live traffic (`BACKFILL_DAYS`)."""
    from rebate_guard.tools.stack import LocalStack

    configure_logging("info")
    # `kill`, systemd and CI send SIGTERM: shut down as gracefully as on Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    token_from_file = not settings.api_token
    settings = settings.with_api_token()  # the workers get it from here: one for all
    if not settings.local_utc_offset_minutes:
        offset = demo_utc_offset_minutes(int(time.time() * 1000))
        log.info(
            "the simulated platform's local time is UTC%+.1f h (RG_LOCAL_UTC_OFFSET_MINUTES=%d): "
            "its live traffic starts at %02d:00 there, not in its night",
            offset / 60,
            offset,
            LIVE_LOCAL_HOUR,
        )
        settings = settings.replace(local_utc_offset_minutes=offset)
    with LocalStack(settings) as stack:
        live = stack.settings(settings)
        from rebate_guard.tools.topics import ensure_topics

        asyncio.run(ensure_topics(live))
        procs = [_spawn_worker(live, index) for index in range(workers)]
        url = f"http://{live.web_host}:{live.web_port}/console/"
        print(f"\nRebateGuard is up: console {url}  (Ctrl-C stops)", flush=True)
        print(f"  {_login_hint(live, token_from_file)}\n", flush=True)
        print(f"  Kafka bootstrap {live.kafka_bootstrap}   Redis {live.redis_url}", flush=True)
        try:
            days = BACKFILL_DAYS if backfill_days is None else backfill_days
            asyncio.run(_feed(live, seed, procs, backfill_days=days))
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


def _worker_settings(settings: Settings, index: int) -> Settings:
    """The `index`th worker's settings: its own web port, after the first one's."""
    return settings.replace(web_port=settings.web_port + index)


def _spawn_worker(settings: Settings, index: int) -> subprocess.Popen[bytes]:
    from rebate_guard.tools.stack import child_setup

    env = {**os.environ, **_worker_settings(settings, index).to_env()}
    env["RG_DATA_DIR"] = str(Path(settings.data_dir) / f"worker-{index}")
    return subprocess.Popen(
        [sys.executable, "-m", "rebate_guard.cli", "worker"], env=env, preexec_fn=child_setup()
    )


#: Days of the `up` world the feed back-fills, compressed, before the wall clock, by
#: default (`up --backfill-days`): two, the first for its platform to grow and stall in, the
#: second for the stall to take it past the solvency warning line, so that `up` shows the
#: alert in its first minutes (`UP_GROWTH_HOURS_BEFORE_STALL`). At the default 0.2
#: payments/s that is ~170k events, ~6 minutes at 500 events/s (one day: ~112k, ~4).
#: Reviews label payments 2-9 days after them, so two days' history brings the classifier
#: no label, and ten ~700...
BACKFILL_DAYS = 2
#: ...and days of live traffic after them, in real time: a week, so that when it is over
#: and the platform pays again as it did (`live_spans`), weekdays and hours still match.
LIVE_DAYS = 7
#: Its older accounts signed up up to this many days before it starts.
HISTORY_DAYS = 90
#: Legit users per legit merchant (the simulator's default world has 25).
USERS_PER_MERCHANT = 25
#: The simulator's smallest world.
MIN_USERS, MIN_MERCHANTS = 200, 20
#: The demo platform's economics (docs/economics.md, "The `up` world"): a platform whose
#: points promise more than its merchants' discount pays (the simulator's default points,
#: half the bill on top of a 6-30 % rebate: the liability grows (r + 0.5) x the bill, r ~
#: 0.12, while the merchants pay in r, a day late), kept under the warning line by its
#: members' deposits while it grows. A deposit of this many user-days (the default world's
#: members invest 50, the survivor's pay a fee of 10), by half the ~2.5 % of users joining a
#: day, brings in ~0.3 user-days of money a day per user against ~0.6 of points promised:
#: growing, with the merchants' settlements and its small opening capital, the ratio sits
#: at ~1.5 (rising to 1.5-2.2 by the stall: the settlements come a day late), "ok". Its
#: regions hold their members' deposits but not the capital (about as much again, early
#: on), so they read higher: critical in their first hour or two (before deposits and
#: settlements come in) and where few members live, then mostly ok or warning...
UP_MEMBERSHIP_USER_DAYS = 25.0
#: ...with this many days of rebates as opening capital (the platform's, no region's)...
UP_OPENING_CAPITAL_DAYS = 0.6
#: ...until, this many hours into the back-fill (its first day's evening: 20:00 at the
#: midday switch), nobody joins any more (`stall_signup_share` 0: no deposit, no joining
#: fee, no capital round). The liability then grows by (r + 0.5) of the bill while only r
#: comes in: from a ratio rho at the stall, with T busy hours of trade behind it, it reaches
#: 3 after about T x (3 / rho - 1) / (1 - 3r / (r + 0.5)) ~ 2 T busy hours. The time to the
#: line grows with the growth behind the stall, so the stall comes early and the back-fill
#: holds a day after it: 8 busy hours of growth (the afternoon and evening; the ratio at
#: most 1.4-2.6 by then, "ok") need ~16 more; the night is quiet (settlements still come
#: in), so the second day's morning and afternoon take it over the line (at 12:00-19:00),
#: 17-24 hours before the switch, whatever the weekday (seeds 3, 5, 7 at 0.05 and 0.2
#: payments/s, the switch on each of 7 days: `platform_books`). Placed otherwise it misses
#: the back-fill or the demo: with one day (`--backfill-days 1`, the stall 8 h into it) the
#: night comes between and it crosses 1-8 hours into live traffic; a stall at a second day's
#: start, after a day's growth (~17 busy hours), needs ~34 more and crosses in live traffic
#: too; a stall 3 hours into a single day crosses that evening, but with so little trade
#: behind it the opening capital carries the ratio (1.0-1.4 at the stall), and the regions,
#: which do not hold it, read critical nearly all day. A longer back-fill grows for days
#: first (the stall 8 h into its second-to-last day), so its crossing comes later, in live
#: traffic.
UP_GROWTH_HOURS_BEFORE_STALL = 8


def up_stall_hour(backfill_days: int) -> int:
    """Hours into a back-fill of `backfill_days` at which the `up` platform stops growing:
    `UP_GROWTH_HOURS_BEFORE_STALL` into its second-to-last day (its only one if it has one),
    leaving a day for the stall to take it past the warning line."""
    return max(0, backfill_days - 2) * 24 + UP_GROWTH_HOURS_BEFORE_STALL


def up_world_config(
    seed: int, *, switch_ms: int, live_rate: float, backfill_days: int = BACKFILL_DAYS
) -> WorldConfig:
    """The world `up` feeds: a platform whose legit users pay `live_rate` times a second in
    all (each the simulator's `payments_per_user_day` on average, so the users number
    `live_rate` x 86,400 / that), whose first `backfill_days` end at `switch_ms`, when the
    feed is to have caught up with the wall clock (`switch_ms_for`). It grows, living on
    its members' deposits (`UP_MEMBERSHIP_USER_DAYS`), until its growth stops
    `up_stall_hour` hours into the back-fill: the demo shows a platform under the solvency
    warning line crossing it after the stall."""
    from rebate_guard.tools.simulator import WorldConfig

    per_user_day = WorldConfig().payments_per_user_day
    n_users = max(MIN_USERS, round(live_rate * DAY_MS / 1000 / per_user_day))
    return WorldConfig(
        seed=seed,
        n_users=n_users,
        n_merchants=max(MIN_MERCHANTS, n_users // USERS_PER_MERCHANT),
        days=backfill_days + LIVE_DAYS,
        history_days=HISTORY_DAYS,
        start_ts_ms=switch_ms - backfill_days * DAY_MS,
        stall_day=up_stall_hour(backfill_days) / 24,
        stall_signup_share=0.0,
        membership_user_days=UP_MEMBERSHIP_USER_DAYS,
        opening_capital_days=UP_OPENING_CAPITAL_DAYS,
    )


#: The platform's local hour at which `up`'s live traffic starts, unless a UTC offset is set.
LIVE_LOCAL_HOUR = 12


def demo_utc_offset_minutes(now_ms: int) -> int:
    """A UTC offset (whole hours, within the settings' -14..+14 h) whose local time is
    `LIVE_LOCAL_HOUR` at `now_ms`: the simulated platform lives where it is midday now, so
    the demo's live traffic is its daytime's, not the trickle of its nights (the simulator
    plays the platform's days in local time: 01:00-06:00 is quiet)."""
    utc_hour = now_ms // HOUR_MS % 24
    hours = (LIVE_LOCAL_HOUR - utc_hour) % 24
    return (hours - 24 if hours > 14 else hours) * 60


def backfill_events(world: World, switch_ms: int) -> int:
    """The contract events of `world` before `switch_ms`: the back-fill's."""
    frames = (world.transactions, world.signups, world.labels, world.platform_events)
    return sum(int((frame["ts"] < switch_ms).sum()) for frame in frames)


def switch_ms_for(now_ms: int, *, backfill_events: int, backfill_rate: float) -> int:
    """When a back-fill of `backfill_events` started at `now_ms` at `backfill_rate` events
    per second catches up with the clock: where the world's live part is to begin."""
    return now_ms + math.ceil(backfill_events / backfill_rate * 1000)


def up_world(
    settings: Settings, seed: int, *, now_ms: int, backfill_days: int = BACKFILL_DAYS
) -> tuple[World, int]:
    """(The `up` world, its switch to live traffic): placed so that its back-fill, fed from
    `now_ms` at `RG_SIMULATE_RATE`, ends about when the clock reaches its live part. A draft
    placed at `now_ms` counts the back-fill; the world is then simulated where that puts it
    (not shifted: hours and weekdays are the simulator's). If the feed is slower or faster
    than planned, `FeedClock` switches to live traffic when it catches up, wherever that is.
    The simulator's days are in the platform's local time: its timeline is that much ahead
    of UTC (`RG_LOCAL_UTC_OFFSET_MINUTES`, which the workers' night features read too)."""
    from rebate_guard.tools.simulator import simulate_world

    live_rate = settings.simulate_live_rate
    ahead_ms = settings.local_utc_offset_minutes * MINUTE_MS

    def simulated(switch_ms: int) -> World:
        config = up_world_config(
            seed, switch_ms=switch_ms + ahead_ms, live_rate=live_rate, backfill_days=backfill_days
        )
        return _shifted(simulate_world(config), -ahead_ms)

    draft = simulated(now_ms)
    switch = switch_ms_for(
        now_ms,
        backfill_events=backfill_events(draft, now_ms),
        backfill_rate=settings.simulate_rate,
    )
    return simulated(switch), switch


def _shifted(world: World, by_ms: int) -> World:
    """`world` with every timestamp moved by `by_ms`."""
    import dataclasses

    import polars as pl

    if not by_ms:
        return world
    ts = pl.col("ts") + by_ms
    joined = pl.col("fifth_member_joined_ts") + by_ms
    return dataclasses.replace(
        world,
        transactions=world.transactions.with_columns(ts),
        signups=world.signups.with_columns(ts),
        labels=world.labels.with_columns(ts),
        platform_events=world.platform_events.with_columns(ts),
        rings_truth=world.rings_truth.with_columns(joined),
    )


def span_again(world: World, *, from_ms: int, span_ms: int, repeat: int) -> World:
    """The events of `world` in [`from_ms`, `from_ms` + `span_ms`), `repeat` spans later:
    the same users paying the same merchants on the same schedule, as a new span of the
    same platform. Its transactions get new tx_ids (prefixed `r{repeat}-`, so no tx_id
    comes twice), and refunds and labels follow them; what cannot happen twice is left out:
    signups (the accounts exist), and refunds and labels of transactions before the span
    (refunded or labelled already). User-level labels come again (the same verdict)."""
    import dataclasses

    import polars as pl

    prefix = f"r{repeat}-"
    shift = pl.col("ts") + repeat * span_ms

    def within(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter((pl.col("ts") >= from_ms) & (pl.col("ts") < from_ms + span_ms))

    transactions = within(world.transactions)
    # Refunds of transactions before the span are left out, and so is what names them (a
    # label on such a refund).
    transactions = transactions.filter(
        pl.col("ref_tx_id").is_null() | pl.col("ref_tx_id").is_in(transactions["tx_id"].implode())
    )
    ids = transactions["tx_id"].to_list()

    def renamed(column: str) -> pl.Expr:
        return pl.when(pl.col(column).is_in(ids)).then(pl.lit(prefix) + pl.col(column))

    transactions = transactions.with_columns(
        shift,
        (pl.lit(prefix) + pl.col("tx_id")).alias("tx_id"),
        renamed("ref_tx_id").alias("ref_tx_id"),
    )
    labels = (
        within(world.labels)
        .filter(pl.col("tx_id").is_null() | pl.col("tx_id").is_in(ids))
        .with_columns(shift, renamed("tx_id").alias("tx_id"))
    )
    truth = world.tx_truth.filter(pl.col("tx_id").is_in(ids)).with_columns(
        (pl.lit(prefix) + pl.col("tx_id")).alias("tx_id")
    )
    return dataclasses.replace(
        world,
        transactions=transactions,
        signups=world.signups.clear(),
        labels=labels,
        tx_truth=truth,
        platform_events=_platform_events_again(
            within(world.platform_events).with_columns(shift), ids, prefix
        ),
    )


def _platform_events_again(events: pl.DataFrame, ids: list[str], prefix: str) -> pl.DataFrame:
    """A span's platform events for `span_again` (already moved into the span): what
    follows the payments comes again (settlements, points, commissions, coupons issued in the
    span), with new ids; what came with new accounts does not (bindings, sign-up bonuses,
    top-ups: a platform repeating itself without signups has no new money)."""
    import polars as pl

    from rebate_guard.contract.records import BINDING, COUPON_ISSUE, POINTS_GRANT, POOL_TOPUP

    kind = pl.col("kind")
    signup_bonus = (kind == POINTS_GRANT) & pl.col("tx_id").is_null()
    signup_bonus &= pl.col("counterparty_id").is_null()
    issued = events.filter(kind == COUPON_ISSUE)["coupon_id"].to_list()
    kept = events.filter(
        ~kind.is_in([BINDING, POOL_TOPUP])
        & ~signup_bonus
        & (pl.col("coupon_id").is_null() | pl.col("coupon_id").is_in(issued))
        & (pl.col("tx_id").is_null() | pl.col("tx_id").is_in(ids))
    )
    return kept.with_columns(
        (pl.lit(prefix) + pl.col(name)).alias(name) for name in ("event_id", "tx_id", "coupon_id")
    )


def live_spans(
    world: World, *, switch_ms: int, span_ms: int = LIVE_DAYS * DAY_MS
) -> Iterator[World]:
    """`world`, then its live part (the `span_ms` from `switch_ms`) again and again, each
    time one span later (`span_again`): a demo left running goes on, with the same users
    and merchants, for as long as it runs."""
    yield world
    for repeat in itertools.count(1):
        log.info(
            "the simulated platform's %d live day(s) are over: its users pay again as they "
            "did, from now on (tx_ids r%d-...)",
            span_ms // DAY_MS,
            repeat,
        )
        yield span_again(world, from_ms=switch_ms, span_ms=span_ms, repeat=repeat)


async def _feed(
    settings: Settings, seed: int, procs: list[subprocess.Popen[bytes]], *, backfill_days: int
) -> None:
    """The `up` world fed on the wall clock (`feed_live`): its history, then its live week,
    then that week again and again (`live_spans`), until the workers stop. Live payments
    ask the `POST /score` of the worker that owns their user's partition."""
    from rebate_guard.tools.producer import feed_live

    now_ms = int(time.time() * 1000)
    world, switch_ms = up_world(settings, seed, now_ms=now_ms, backfill_days=backfill_days)
    log.info(
        "feeding a simulated platform: %d users, %d transactions, %d platform events (its "
        "growth stops %d h into its back-fill); first %d day(s) of history (%d "
        "events) at up to %.0f events/s, then %d days of live payments at ~%.2f/s, "
        "stamped with the clock and decided at payment time (POST /score), then those "
        "days again, until stopped",
        world.signups.height,
        world.transactions.height,
        world.platform_events.height,
        up_stall_hour(backfill_days),
        backfill_days,
        backfill_events(world, switch_ms),
        settings.simulate_rate,
        LIVE_DAYS,
        settings.simulate_live_rate,
    )
    feeding = feed_live(
        settings,
        live_spans(world, switch_ms=switch_ms),
        backfill_rate=settings.simulate_rate,
        workers=[_worker_settings(settings, index) for index in range(len(procs))],
    )
    await _while_workers_run(procs, feeding)  # endless: returns when a worker stops
    for proc in procs:
        code = proc.poll()
        if code == 0:  # stopped cleanly: Ctrl-C reaches the workers too
            log.info("worker %d has stopped; so does the feed", proc.pid)
            return
        if code is not None:
            raise RuntimeError(f"worker {proc.pid} exited with {code}")


#: How often the feed looks whether the workers still run.
WORKER_POLL_S = 0.5


async def _while_workers_run(procs: Sequence[Any], work: Coroutine[Any, Any, Any]) -> bool:
    """Runs `work` until it is done (True) or a worker process exits (False, `work`
    cancelled): the feed runs for days, and a worker stopped by Ctrl-C or by a failure must
    not wait for it to end before `up` notices."""
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
