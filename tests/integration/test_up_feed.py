"""`rebate-guard up`'s feed on the real broker, Redis and a worker: once its back-fill has
caught up with the clock, its live payments are decided at payment time by `POST /score`
of the worker that owns their partition, and the stream then stores and publishes that
same decision, once; when the live part is over, it comes again with new tx_ids."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import urllib.error
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from rebate_guard.contract.records import POINTS_REQUESTS, Decision
from rebate_guard.settings import Settings
from rebate_guard.tools.producer import feed_live, wall_ms
from rebate_guard.tools.runner import backfill_events, live_spans, up_world_config
from rebate_guard.tools.simulator import World, simulate_world
from rebate_guard.tools.stack import free_port
from rebate_guard.tools.topics import ensure_topics
from tests.integration.helpers import (
    read_topic,
    running_worker,
    stored_decisions,
    wait_for,
    worker_stats,
)

pytestmark = pytest.mark.integration

#: Events of the live part the test plays, and the seconds it plays them in.
LIVE_EVENTS, LIVE_SECONDS = 120, 20
#: How far ahead of the wall clock the test puts the switch to live traffic, ms: the worker
#: is to have read the back-fill by then (10 s missed it under load once the stalled
#: platform's accounts had joined before its window: ~7.6k events for the worker, ~6.2k
#: before).
SWITCH_LEAD_MS = 20_000


def _quick_live_part(world: World, switch_ms: int) -> World:
    """`world` up to its `LIVE_EVENTS`th payment, refund, signup or label from `switch_ms`
    on (and the platform events until then), that live part played
    in `LIVE_SECONDS` instead of the hours it spans (a test does not wait for a platform
    of a few thousand users to pay 100 times; the back-fill and the feed are `up`'s).
    Back-fill events of the last `SWITCH_LEAD_MS` before the switch are moved to just
    before that lead: the feed starts within it (after simulating), and an event still
    ahead of the clock then is rightly sent live, which would make the split between
    back-fill and live depend on how fast the box simulated."""
    frames = (world.transactions, world.signups, world.labels)  # (platform events follow)
    live_ts = pl.concat([f.select("ts").filter(pl.col("ts") >= switch_ms) for f in frames])
    last = live_ts.sort("ts")["ts"][LIVE_EVENTS - 1]
    scale = LIVE_SECONDS * 1000 / max(1, last - switch_ms)
    retimed = (
        pl.when(pl.col("ts") >= switch_ms)
        .then(switch_ms + ((pl.col("ts") - switch_ms) * scale).cast(pl.Int64))
        .otherwise(pl.min_horizontal(pl.col("ts"), pl.lit(switch_ms - SWITCH_LEAD_MS - 1)))
    )

    def cut(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("ts") <= last).with_columns(retimed.alias("ts"))

    return dataclasses.replace(
        world,
        transactions=cut(world.transactions),
        signups=cut(world.signups),
        labels=cut(world.labels),
        platform_events=cut(world.platform_events),
    )


def test_live_payments_of_the_up_feed_are_decided_at_payment_time(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    asyncio.run(ensure_topics(settings))
    with running_worker(settings, tmp_path / "worker.log") as worker:

        def assigned() -> bool:
            try:
                return len(worker_stats(worker)["models"]) == settings.partitions
            except (OSError, urllib.error.URLError):
                return False

        wait_for(assigned, timeout=120, what="the worker's user shards", worker=worker)
        # The back-fill (a day of a ~5,800-user platform: ~11k events, ~3.8k of them its
        # economics) is sent unthrottled and caught up well before the switch; the feed then
        # waits for the clock.
        switch = wall_ms() + SWITCH_LEAD_MS
        world = simulate_world(up_world_config(5, switch_ms=switch, live_rate=0.02))
        world = _quick_live_part(world, switch)
        # The live part, then once again (`up` repeats its live week) right after it.
        spans = list(
            itertools.islice(
                live_spans(world, switch_ms=switch, span_ms=LIVE_SECONDS * 1000 + 1), 2
            )
        )
        transactions = pl.concat([span.transactions for span in spans])
        live = transactions.filter(pl.col("ts") >= switch)
        payments = live.filter(pl.col("kind") == "payment")["tx_id"].to_list()
        again = spans[1].transactions.filter(pl.col("kind") == "payment").height
        assert len(payments) >= 40 and again == len(payments) / 2

        # A second worker that never answers: the owner map comes from the one that runs.
        workers = [worker.settings, worker.settings.replace(web_port=free_port())]
        report = asyncio.run(feed_live(worker.settings, spans, backfill_rate=None, workers=workers))

        assert report.backfilled == backfill_events(world, switch)
        # LIVE_EVENTS, and any event sharing the last one's ms (the world is cut at a ts).
        scheduled_live = sum(
            f.filter(pl.col("ts") >= switch).height
            for span in spans
            for f in (span.transactions, span.signups, span.labels, span.platform_events)
        )
        assert scheduled_live >= LIVE_EVENTS
        assert report.live == scheduled_live
        scores = report.scores
        # Every live payment asked the worker owning its user's partition...
        assert (scores.to_owner, scores.in_turn) == (len(payments), 0), scores.summary()
        # ...and got the pipeline's decision, none a fail-closed answer...
        assert scores.decided == len(payments), scores.summary()
        assert not scores.provisional and not scores.unanswered, scores.summary()
        # ...made at payment time, not the stream's awaited: the stream was never past it.
        counted = worker_stats(worker)["worker"]
        assert counted["decided_at_payment"] == len(payments), counted
        assert counted["left_to_stream"] == {}, counted
        # The stream reaches them and publishes the decision made at payment time, once
        # (it follows the stored one: first write wins); no tx_id twice across the spans.
        # The platform's points requests are decided too, keyed by their event_id.
        requests = pl.concat([span.platform_events for span in spans]).filter(
            pl.col("kind").is_in(POINTS_REQUESTS)
        )
        assert requests.height and requests["event_id"].is_unique().all()
        total = transactions.height + requests.height
        assert transactions["tx_id"].is_unique().all()
        published: dict[str, list[dict[str, object]]] = defaultdict(list)
        for _, value in read_topic(settings, settings.topic("decisions"), expect=total):
            decision = Decision.loads(value)
            published[decision.tx_id].append(decision.asdict())
        stored = stored_decisions(settings)
        assert set(payments) <= set(stored)
        assert all(stored[t].ts >= switch for t in payments)  # stamped live, not history
        for tx_id in payments:
            assert published[tx_id] == [stored[tx_id].asdict()], tx_id
        # ...and every other transaction and points request, once too.
        assert len(published) == total
        assert set(requests["event_id"]) <= set(published)
        assert worker.stop() == 0, worker.log()
