"""What the worker's batches put out: decisions stored first-write-wins then produced,
feature vectors, ledger adjustments, dead letters, rings, the solvency monitor's readings and
alerts, envelopes to the internal topics, and the console's views of them. Every write is
retried until it succeeds (`Retrying`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from graph.layer import ACTIVE, RingEvent, RingScore
from rebate_guard.contract.records import (
    DEAD_LETTERS,
    DECISIONS,
    FEATURES,
    PLATFORM_ALERTS,
    REBATE_ADJUSTMENTS,
    RINGS,
    SOLVENCY,
    DeadLetter,
    Decision,
    Label,
    PlatformAlert,
    RebateAdjustment,
    SolvencyReading,
)
from rebate_guard.settings import Settings
from streams.batch import BatchOutcome, Counters, RawEvent
from streams.console.store import ConsoleStore, Indexed, resolved_holds
from streams.retry import Retrying
from streams.shards import Completed, UserShard
from streams.shards.solvency import Output
from streams.sink import Sink
from streams.store import DecisionStore, RingKey

log = logging.getLogger(__name__)


def feature_vector_json(decision: Decision, x: dict[str, Any]) -> bytes:
    """A `FeatureVector` record as JSON, built directly: faust's generic record serialiser
    cost ~30% of the worker's throughput for 47-feature vectors (benchmarks/README.md)."""
    vector = {"tx_id": decision.tx_id, "ts": decision.ts, "features": x}
    return json.dumps(vector, separators=(",", ":"), allow_nan=False).encode()


def _standing(items: list[tuple[str, bytes]], existing: list[bytes | None]) -> dict[str, bytes]:
    """Id -> the value that stands: the one stored now, or the one that was there."""
    return {
        key: value if prior is None else prior
        for (key, value), prior in zip(items, existing, strict=True)
    }


def _balances(a: RebateAdjustment) -> tuple[str, int, int, int]:
    """What an adjustment did, apart from when it was made (`decided_at`)."""
    return a.kind, a.granted_cents, a.held_cents, a.voided_cents


class Publisher:
    def __init__(
        self,
        store: DecisionStore,
        sink: Sink,
        settings: Settings,
        *,
        retry: Retrying,
        counters: Counters,
        clock: Callable[[], float],
        console: ConsoleStore | None = None,
        on_decided: Callable[[dict[str, bytes]], None] = lambda standing: None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.settings = settings
        self.retry = retry
        self.counters = counters
        self.clock = clock
        #: Where the console's views are kept (streams/console/store/); None: not kept.
        self.console = console
        #: Told the standing decision (tx_id -> JSON) of every transaction a batch decided
        #: or re-answered, once stored: `POST /score` requests waiting on it wake from it.
        self.on_decided = on_decided

    async def produce(self, kind: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        topic = self.settings.topic(kind)
        await self.retry(f"produce {kind}", lambda: self.sink.send_many(topic, records))

    async def send(self, kind: str, envelopes: list[tuple[int, bytes]]) -> None:
        """Envelopes to the internal topic `kind`, each to its partition."""
        if not envelopes:
            return
        self.counters.envelopes_sent += len(envelopes)
        topic = self.settings.topic(kind)
        await self.retry(f"produce {kind}", lambda: self.sink.send_to_partitions(topic, envelopes))

    async def decisions(
        self, finished: list[Completed], outcome: BatchOutcome, indexed: set[str]
    ) -> None:
        """Stores and produces the decisions of `finished`, and keeps the console's views of
        the new ones; `indexed`: those decided at payment time whose history rows are yet to
        be kept."""
        order = [tx_id for done in finished for tx_id in done.order]
        if not order:
            return
        decisions = [decided for done in finished for decided in done.decisions]
        items = [(d.tx_id, d.dumps()) for d, _ in decisions]
        existing = await self.retry("store decisions", lambda: self.store.put_new(items))
        standing: dict[str, bytes] = {}
        for (tx_id, value), prior in zip(items, existing, strict=True):
            standing[tx_id] = value if prior is None else prior
        earlier = [t for done in finished for t in done.repeats if t not in standing]
        if earlier:  # decided in an earlier batch: answer with what Redis holds
            standing.update(
                await self.retry("read decisions", lambda: self.store.get_many(earlier))
            )
        self.on_decided(standing)
        decided = sum(1 for prior in existing if prior is None)
        if self.console is not None:
            await self._index(finished, existing, indexed)
        outcome.decided += decided
        outcome.redelivered += len(order) - decided
        records = [(t.encode(), standing[t]) for t in order if t in standing]
        produced = [self.produce(DECISIONS, records)]
        if self.settings.log_features and decisions:
            vectors = [(d.tx_id.encode(), feature_vector_json(d, x)) for d, x in decisions]
            produced.append(self.produce(FEATURES, vectors))
        await asyncio.gather(*produced)

    async def points(self, finished: list[Completed], outcome: BatchOutcome) -> None:
        """Stores the decisions on points requests first-write-wins by event_id (a re-run
        after a restart finds the one it made before, which stands), and produces the
        standing ones, with those of repeated requests, on the decisions topic."""
        made = [d for done in finished for d in done.points]
        repeats = [e for done in finished for e in done.points_repeats]
        if not made and not repeats:
            return
        items = [(d.tx_id, d.dumps()) for d in made]
        existing = await self.retry("store decisions", lambda: self.store.put_new(items))
        standing = _standing(items, existing)
        earlier = [e for e in repeats if e not in standing]
        if earlier:
            stored = await self.retry("read decisions", lambda: self.store.get_many(earlier))
            standing.update(stored)
        self.on_decided(standing)
        decided = existing.count(None)
        outcome.decided += decided
        outcome.redelivered += len(items) + len(repeats) - decided
        order = [d.tx_id for d in made] + repeats
        await self.produce(DECISIONS, [(t.encode(), standing[t]) for t in order if t in standing])

    async def solvency(self, outputs: list[Output], current: dict[str, SolvencyReading]) -> None:
        """What the solvency shard closed: readings in Redis, and each alert there first
        stored wins (a period read again after a restore alerts once: the list and the log
        take the new ones alone); then both on their topics keyed by scope, an alert as it
        stands. Then the running figures."""
        readings = [o for o in outputs if isinstance(o, SolvencyReading)]
        alerts = [o for o in outputs if isinstance(o, PlatformAlert)]
        running = {scope: r.dumps() for scope, r in current.items()}
        values = [(r.scope, r.period_end, r.dumps()) for r in readings]
        put = partial(self.store.put_solvency, values, running)
        await self.retry("store solvency readings", put)
        records = [(scope.encode(), value) for scope, _, value in values]
        if alerts:
            items = [(a.alert_id, a.dumps()) for a in alerts]
            existing = await self.retry("store alerts", lambda: self.store.put_alerts(items))
            for alert, prior in zip(alerts, existing, strict=True):
                if prior is None:
                    log.warning("solvency alert %s: %s", alert.alert_id, alert.message)
            standing = _standing(items, existing)
            stood = [(a.scope.encode(), standing[a.alert_id]) for a in alerts]
            await self.produce(PLATFORM_ALERTS, stood)
        if records:
            await self.produce(SOLVENCY, records)

    async def _index(
        self, finished: list[Completed], existing: list[bytes | None], indexed: set[str]
    ) -> None:
        """The console's views of the decisions that were new (a redelivery's stand), and
        the history rows of those decided here at payment time (`indexed`: in the views
        already, but without the row, which only the stream's user shard makes)."""
        console = self.console
        assert console is not None
        made = [
            Indexed(decision, tx, row)
            for done in finished
            for (decision, _), tx, row in zip(
                done.decisions, done.transactions, done.history_rows, strict=True
            )
        ]
        fresh = [entry for entry, prior in zip(made, existing, strict=True) if prior is None]
        await self.retry("index decisions for the console", lambda: console.record(fresh))
        rows = [e for e in made if e.decision.tx_id in indexed and e.history_row is not None]
        if rows:
            await self.retry("keep history rows", lambda: console.record_history(rows))

    async def labels(self, labels: list[Label]) -> None:
        """The console's view of the labels a batch took in."""
        console = self.console
        if console is not None and labels:
            await self.retry("index labels", lambda: console.record_labels(labels))

    async def adjustments(self, adjustments: list[tuple[UserShard, RebateAdjustment]]) -> None:
        """Store the ledger's adjustments first-write-wins by id (a re-run after a restart
        finds the ones it made before, which stand, and the ledger of the shard that made
        each follows them), then produce the standing ones on the adjustments topic, keyed
        by tx_id."""
        if not adjustments:
            return
        items = [(a.adjustment_id, a.tx_id, a.dumps()) for _, a in adjustments]
        existing = await self.retry("store adjustments", lambda: self.store.put_adjustments(items))
        records: list[tuple[bytes | None, bytes]] = []
        for (shard, a), (_, tx_id, value), prior in zip(adjustments, items, existing, strict=True):
            if prior is not None and prior != value:
                standing = RebateAdjustment.loads(prior)
                if _balances(standing) != _balances(a):
                    shard.decider.ledger.follow(standing)
            records.append((tx_id.encode(), value if prior is None else prior))
        await self.produce(REBATE_ADJUSTMENTS, records)
        console, resolved = self.console, resolved_holds([a for _, a in adjustments])
        if console is not None and resolved:
            await self.retry("resolve holds", lambda: console.resolve_holds(resolved))

    async def dead_letters(self, dead: list[DeadLetter]) -> None:
        await self.produce(DEAD_LETTERS, [(None, d.dumps()) for d in dead])
        positions = [(d.topic, d.partition, d.offset) for d in dead]
        await self.retry("count dead letters", lambda: self.store.count_dead_letters(positions))
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)

    def dead_letter(self, message: RawEvent, reason: str) -> DeadLetter:
        payload = b"" if message.value is None else message.value
        return DeadLetter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
            payload=payload.decode("utf-8", errors="backslashreplace"),
            received_at=int(self.clock() * 1000),
        )

    async def rings(self, events: list[RingEvent], scores: dict[RingKey, RingScore]) -> None:
        """What the graph shard found: ring scores in Redis first (once the event is on the
        topic, a reader may look the scores up), then the ring events, then the console's
        versions. A re-run after a restore publishes the same again (same values)."""
        records = [(e.ring_id.encode(), e.dumps()) for e in events]
        latest = {
            e.ring_id: (value if e.status == ACTIVE else None)
            for e, (_, value) in zip(events, records, strict=True)
        }
        put = partial(self.store.put_rings, list(latest.items()), scores)
        await self.retry("store ring scores", put)
        send = partial(self.sink.send_many, self.settings.topic(RINGS), records)
        await self.retry("produce rings", send)
        if self.console is not None:
            versions = [(e.ring_id, value) for e, (_, value) in zip(events, records, strict=True)]
            record = partial(self.console.record_rings, versions)
            await self.retry("keep ring versions", record)
        for event in events:
            log.info(
                "ring %s v%d %s: %d users, %d merchants, score %.2f",
                event.ring_id,
                event.version,
                event.status,
                len(event.users),
                len(event.merchants),
                event.score,
            )
