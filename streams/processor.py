"""One batch of raw input events -> state updates, decisions, dead letters. Agents call this.

Per transaction batch (at-least-once input, exactly-once effects):
1. parse every event; what breaks the contract becomes a dead letter with the reason;
2. drop repeats of a tx_id inside the batch, and look up which tx_ids already have a
   decision in Redis (a redelivery): those are answered with the stored decision, and do not
   touch scoring state again;
3. score the new ones in event-time order (pure `Scorer`);
4. store them first-write-wins in Redis (one Lua call); a decision some other delivery stored
   meanwhile wins over ours;
5. produce the standing decision of every transaction in the batch, and the dead letters,
   and wait until the broker has them. Only then does the agent acknowledge the batch.
A crash anywhere before 5 completes means redelivery, which lands in step 2.
Failures of Redis or the broker are retried (with backoff) rather than raised: an exception
would make Faust acknowledge the batch unprocessed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rebate_guard.scoring import Event, Scorer, order_key
from rebate_guard.settings import Settings
from streams.records import (
    DEAD_LETTERS,
    DECISIONS,
    LABELS,
    SIGNUPS,
    TRANSACTIONS,
    DeadLetter,
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


@dataclass
class Counters:
    """Process-local totals (Redis holds the cluster-wide, exactly-once ones)."""

    batches: int = 0
    events: int = 0
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    retries: int = 0


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

    async def handle(self, kind: str, raw: Sequence[RawEvent]) -> BatchOutcome:
        """Process one batch from the input topic `kind` (a contract name, no prefix)."""
        parser = PARSERS[kind]
        events: list[tuple[Event, RawEvent]] = []
        dead: list[DeadLetter] = []
        for message in raw:
            try:
                events.append((parser(decode_json_object(message.value)), message))
            except InvalidEvent as exc:
                dead.append(self._dead_letter(message, str(exc)))
        outcome = BatchOutcome(dead_letters=len(dead))
        if kind == TRANSACTIONS:
            await self._transactions(events, outcome)
        else:
            ordered = sorted(enumerate(e for e, _ in events), key=lambda p: order_key(p[1], p[0]))
            for _, event in ordered:
                self.scorer.apply(event, decided_at=self._now_ms())
            outcome.applied = len(events)
        if dead:
            await self._dead_letters(dead)
        self._count(len(raw), outcome)
        return outcome

    async def _transactions(
        self, events: list[tuple[Event, RawEvent]], outcome: BatchOutcome
    ) -> None:
        batch: dict[str, Transaction] = {}
        for event, _ in events:
            assert isinstance(event, Transaction)
            batch.setdefault(event.tx_id, event)  # a repeat inside the batch: first stands
        tx_ids = list(batch)
        stored = await self._retry("read decisions", lambda: self.store.get_many(tx_ids))
        fresh = [tx for tx in batch.values() if tx.tx_id not in stored]
        ordered = sorted(enumerate(fresh), key=lambda p: order_key(p[1], p[0]))
        decisions = [self.scorer.transaction(tx, decided_at=self._now_ms()) for _, tx in ordered]
        items = [(d.tx_id, d.dumps()) for d in decisions]
        existing = await self._retry("store decisions", lambda: self.store.put_new(items))
        standing: dict[str, bytes] = dict(stored)
        for (tx_id, value), prior in zip(items, existing, strict=True):
            standing[tx_id] = value if prior is None else prior
        outcome.decided = sum(1 for prior in existing if prior is None)
        outcome.redelivered = len(events) - outcome.decided
        records = [(tx_id.encode(), standing[tx_id]) for tx_id in tx_ids]
        topic = self.settings.topic(DECISIONS)
        await self._retry("produce decisions", lambda: self.sink.send_many(topic, records))

    async def _dead_letters(self, dead: list[DeadLetter]) -> None:
        topic = self.settings.topic(DEAD_LETTERS)
        records = [(None, d.dumps()) for d in dead]
        await self._retry("produce dead letters", lambda: self.sink.send_many(topic, records))
        positions = [(d.topic, d.partition, d.offset) for d in dead]
        await self._retry("count dead letters", lambda: self.store.count_dead_letters(positions))
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

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
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

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
