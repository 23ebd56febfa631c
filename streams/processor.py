"""Raw input batches -> event-time-ordered state updates, decisions, dead letters.

At-least-once input, exactly-once effects:
1. every message is parsed; what breaks the contract becomes a dead letter with the reason;
2. a message at an offset the state already covers (re-read after a restart) is skipped;
3. valid events go through the `Aligner`, which releases them in replay order across all
   assigned partitions of the three input topics (event time, then kind, then id);
4. released events update the `Scorer` in that order; a transaction whose tx_id was already
   seen (a second message for it) keeps its first decision and does not touch state again;
5. new decisions are stored first-write-wins in Redis (one Lua call; after a restart from a
   checkpoint a re-decided transaction finds its earlier decision there, which stands), then
   the standing decisions, their feature vectors and the dead letters are produced and
   awaited.
The state (scorer, aligner buffer, offsets, seen tx_ids) is checkpointed with `snapshot()`;
`restore()` plus re-reading input from the checkpoint's offsets gives exactly the state of an
uninterrupted run. Failures of Redis or the broker are retried (with backoff), never dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from features.windows import drop_oldest
from rebate_guard.scoring import Event, Scorer
from rebate_guard.settings import Settings
from streams.alignment import Aligner, Released
from streams.records import (
    DEAD_LETTERS,
    DECISIONS,
    FEATURES,
    LABELS,
    SIGNUPS,
    TRANSACTIONS,
    DeadLetter,
    Decision,
    Transaction,
)
from streams.sink import Sink
from streams.store import DecisionStore
from streams.validation import (
    InvalidEvent,
    decode_json_object,
    parse_label,
    parse_signup,
    parse_transaction,
)

log = logging.getLogger(__name__)

PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    TRANSACTIONS: parse_transaction,
    SIGNUPS: parse_signup,
    LABELS: parse_label,
}

T = TypeVar("T")

Source = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class RawEvent:
    """An input message as it came off the broker (value still bytes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchOutcome:
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    applied: int = 0
    skipped: int = 0  # offsets the state already covered
    late: int = 0


@dataclass
class Counters:
    """Process-local totals (Redis holds the cluster-wide, exactly-once ones)."""

    batches: int = 0
    events: int = 0
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    retries: int = 0
    late: int = 0
    checkpoints: int = 0


def feature_vector_json(decision: Decision, x: dict[str, Any]) -> bytes:
    """A `FeatureVector` record as JSON, built directly: faust's generic record serialiser
    cost ~30% of the worker's throughput for 47-feature vectors (benchmarks/README.md)."""
    vector = {"tx_id": decision.tx_id, "ts": decision.ts, "features": x}
    return json.dumps(vector, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class ProcessorState:
    """Everything a checkpoint must carry to resume exactly."""

    scorer: Scorer
    aligner: Aligner[Source]
    #: Next offset to read per source: everything before it is in the state.
    next_offset: dict[Source, int] = field(default_factory=dict)
    #: tx_id -> ts of transactions decided, oldest first, kept for the decision TTL.
    seen: dict[str, int] = field(default_factory=dict)


@dataclass
class BatchProcessor:
    scorer: Scorer
    store: DecisionStore
    sink: Sink
    settings: Settings
    clock: Callable[[], float] = time.time
    counters: Counters = field(default_factory=Counters)
    retry_base_s: float = 0.2
    retry_max_s: float = 5.0
    #: Wall-clock time each source last delivered (not checkpointed: a clock, not state).
    heard: dict[Source, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        aligner: Aligner[Source] = Aligner(frozenset(), self.settings.allowed_lateness_ms)
        self.state = ProcessorState(self.scorer, aligner)

    # --- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        if not isinstance(state, ProcessorState):
            raise TypeError(f"not a processor checkpoint: {type(state).__name__}")
        self.state = state
        self.scorer = state.scorer

    def event_time(self) -> dict[str, Any]:
        """Where event time stands: the watermark, and what waits behind it."""
        aligner = self.state.aligner
        return {
            "watermark": aligner.watermark if aligner.watermark > 0 else None,
            "pending": aligner.pending(),
            "sources": len(aligner.sources),
            "idle_sources": len(aligner.idle_sources),
            "late": aligner.late,
        }

    @property
    def offsets(self) -> dict[Source, int]:
        return dict(self.state.next_offset)

    async def assign(self, sources: frozenset[Source]) -> BatchOutcome:
        """The partitions this worker reads changed (a rebalance)."""
        now = self.clock()
        for source in sources:
            self.heard.setdefault(source, now)
        outcome = BatchOutcome()
        await self._apply(self.state.aligner.set_sources(sources), outcome)
        return outcome

    # --- input ----------------------------------------------------------------------------
    async def handle(self, kind: str, raw: Sequence[RawEvent]) -> BatchOutcome:
        """Process one batch from the input topic `kind` (a contract name, no prefix)."""
        parser = PARSERS[kind]
        state = self.state
        aligner = state.aligner
        outcome = BatchOutcome()
        dead: list[DeadLetter] = []
        released: list[Released] = []
        now = self.clock()
        for message in raw:
            source = (message.topic, message.partition)
            if message.offset < state.next_offset.get(source, 0):
                outcome.skipped += 1
                continue
            state.next_offset[source] = message.offset + 1
            self.heard[source] = now
            try:
                event = parser(decode_json_object(message.value))
            except InvalidEvent as exc:
                dead.append(self._dead_letter(message, str(exc)))
                continue
            if source not in aligner.sources:  # delivered before its assignment was seen
                released += aligner.set_sources(aligner.sources | {source})
            released += aligner.offer(source, event)
        outcome.dead_letters = len(dead)
        await self._apply(released, outcome)
        if dead:
            await self._dead_letters(dead)
        self._count(len(raw), outcome)
        return outcome

    async def tick(self) -> BatchOutcome:
        """Called periodically: sources silent for `source_idle_s` stop holding event time."""
        now = self.clock()
        idle_after = self.settings.source_idle_s
        released: list[Released] = []
        for source in self.state.aligner.sources:
            if now - self.heard.get(source, now) >= idle_after:
                released += self.state.aligner.idle(source)
        outcome = BatchOutcome()
        if released:
            await self._apply(released, outcome)
            self._count(0, outcome)
        return outcome

    async def _apply(self, released: list[Released], outcome: BatchOutcome) -> None:
        scorer, seen = self.scorer, self.state.seen
        decisions: list[tuple[Decision, dict[str, Any]]] = []
        repeats: list[str] = []
        order: list[str] = []
        for item in released:
            event = item.event
            outcome.late += item.late
            if not isinstance(event, Transaction):
                scorer.apply(event, decided_at=self._now_ms())
                outcome.applied += 1
                continue
            order.append(event.tx_id)
            if event.tx_id in seen:
                repeats.append(event.tx_id)  # a second message for it: the first stands
                continue
            seen[event.tx_id] = event.ts
            decisions.append(scorer.decide(event, decided_at=self._now_ms()))
        if decisions:
            # Forget tx_ids once their decisions' idempotency horizon has passed.
            horizon = decisions[-1][0].ts - self.settings.decision_ttl_s * 1000
            drop_oldest(seen, horizon)
        if order:
            await self._publish(decisions, repeats, order, outcome)

    async def _publish(
        self,
        decisions: list[tuple[Decision, dict[str, Any]]],
        repeats: list[str],
        order: list[str],
        outcome: BatchOutcome,
    ) -> None:
        items = [(d.tx_id, d.dumps()) for d, _ in decisions]
        existing = await self.retry("store decisions", lambda: self.store.put_new(items))
        standing: dict[str, bytes] = {}
        for (tx_id, value), prior in zip(items, existing, strict=True):
            standing[tx_id] = value if prior is None else prior
        earlier = [t for t in repeats if t not in standing]
        if earlier:  # decided in an earlier batch: answer with what Redis holds
            standing.update(
                await self.retry("read decisions", lambda: self.store.get_many(earlier))
            )
        outcome.decided = sum(1 for prior in existing if prior is None)
        outcome.redelivered = len(order) - outcome.decided
        records = [(tx_id.encode(), standing[tx_id]) for tx_id in order if tx_id in standing]
        topic = self.settings.topic(DECISIONS)
        await self.retry("produce decisions", lambda: self.sink.send_many(topic, records))
        if self.settings.log_features and decisions:
            vectors = [(d.tx_id.encode(), feature_vector_json(d, x)) for d, x in decisions]
            topic = self.settings.topic(FEATURES)
            await self.retry("produce features", lambda: self.sink.send_many(topic, vectors))

    async def _dead_letters(self, dead: list[DeadLetter]) -> None:
        topic = self.settings.topic(DEAD_LETTERS)
        records = [(None, d.dumps()) for d in dead]
        await self.retry("produce dead letters", lambda: self.sink.send_many(topic, records))
        positions = [(d.topic, d.partition, d.offset) for d in dead]
        await self.retry("count dead letters", lambda: self.store.count_dead_letters(positions))
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)

    def _dead_letter(self, message: RawEvent, reason: str) -> DeadLetter:
        payload = b"" if message.value is None else message.value
        return DeadLetter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
            payload=payload.decode("utf-8", errors="backslashreplace"),
            received_at=self._now_ms(),
        )

    async def retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_base_s
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any I/O failure: wait and try again, never drop
                self.counters.retries += 1
                log.warning(
                    "%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _count(self, n: int, outcome: BatchOutcome) -> None:
        c = self.counters
        c.batches += 1
        c.events += n
        c.decided += outcome.decided
        c.redelivered += outcome.redelivered
        c.dead_letters += outcome.dead_letters
        c.late += outcome.late

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
