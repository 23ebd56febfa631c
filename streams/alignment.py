"""Event-time alignment: merge several sources (topic partitions) into one event-time order.

A worker reads signups, labels and transactions from separate topics and partitions, each
roughly in event-time order but not in step with the others. Feature exactness needs one
order, the replay order (`rebate_guard.contract.order`). `Aligner` buffers events and
releases them in that order once no source can still send anything earlier:

- each source's *high mark* is the largest ts it has delivered;
- sources may be out of order by at most `lateness_ms` (the allowed lateness), so a source
  with high mark h can still deliver ts >= h - lateness_ms;
- the *watermark* is min over sources of (high - lateness): every buffered event with ts below
  it is released, in order. Ties at the watermark wait, because a tie can still arrive.

An event that arrives with ts below the watermark already passed is *late*: its place in the
order has been given away. It is released at once, in arrival order, and counted; its features
then reflect what was known when it arrived rather than its own ts (documented in
docs/features.md). A source that has never delivered holds the watermark back, until the
caller declares it `idle` (the worker does so after `RG_SOURCE_IDLE_S` of silence, e.g. a
quiet labels partition); an idle source is left out of the watermark until it delivers again.
When every source is idle everything buffered is released. `finish` (end of input) does the
same unconditionally.

Pure: `(state, event) -> (state, released events)` with no I/O and no clock, so the same input
gives the same output whatever the batch boundaries, and the state pickles into checkpoints.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rebate_guard.contract.order import Event, order_key

S = TypeVar("S", bound=Hashable)

# Far below any valid ts (validation accepts 2000..2100): "nothing released yet".
START = -(2**62)


@dataclass
class Released:
    event: Event
    late: bool = False
    #: Whatever the caller attached to the event when offering it (where it came from).
    tag: Any = None


@dataclass
class Aligner(Generic[S]):
    sources: frozenset[S]
    lateness_ms: int = 0
    high: dict[S, int] = field(default_factory=dict)
    idle_sources: set[S] = field(default_factory=set)
    #: (order key, event, tag); the key ends with the arrival number, so keys never tie.
    buffer: list[tuple[tuple[int, int, str, int], Event, Any]] = field(default_factory=list)
    watermark: int = START
    arrivals: int = 0
    late: int = 0

    def offer(self, source: S, event: Event, tag: Any = None) -> list[Released]:
        """Take one event from `source`; returns what can be released now, in order."""
        if source not in self.sources:
            raise KeyError(f"unknown source {source!r}")
        self.arrivals += 1
        woke = source in self.idle_sources
        self.idle_sources.discard(source)
        if event.ts < self.watermark:
            self.late += 1
            return [Released(event, True, tag)]
        heapq.heappush(self.buffer, (self._key(event, self.arrivals), event, tag))
        if event.ts > self.high.get(source, START):
            self.high[source] = event.ts
            return self._advance()
        return self._advance() if woke else []

    def _key(self, event: Event, seq: int) -> tuple[int, int, str, int]:
        """Where `event` sits in the order (a subclass may order other records by ts)."""
        return order_key(event, seq)

    def advance(self, source: S, ts: int) -> list[Released]:
        """`source` promises nothing earlier than `ts` from now on (a watermark it sent)."""
        if source not in self.sources:
            raise KeyError(f"unknown source {source!r}")
        woke = source in self.idle_sources
        self.idle_sources.discard(source)
        if ts > self.high.get(source, START):
            self.high[source] = ts
            return self._advance()
        return self._advance() if woke else []

    def idle(self, source: S) -> list[Released]:
        """`source` is quiet: stop waiting for it (until it delivers again)."""
        if source not in self.sources or source in self.idle_sources:
            return []
        self.idle_sources.add(source)
        return self._advance()

    def set_sources(self, sources: frozenset[S]) -> list[Released]:
        """The sources changed (partitions assigned or revoked)."""
        self.sources = sources
        self.high = {s: h for s, h in self.high.items() if s in sources}
        self.idle_sources &= sources
        return self._advance()

    def offer_many(self, source: S, events: Iterable[Event]) -> list[Released]:
        out: list[Released] = []
        for event in events:
            out.extend(self.offer(source, event))
        return out

    def finish(self) -> list[Released]:
        """End of input: release everything still buffered."""
        out = [Released(e, False, tag) for _, e, tag in sorted(self.buffer)]
        self.buffer.clear()
        if out:
            self.watermark = max(self.watermark, out[-1].event.ts)
        return out

    def pending(self) -> int:
        return len(self.buffer)

    def _advance(self) -> list[Released]:
        active = self.sources - self.idle_sources
        if not active:
            return self.finish() if self.buffer else []
        if any(s not in self.high for s in active):
            return []  # a source not heard from yet could still send anything
        watermark = min(self.high[s] for s in active) - self.lateness_ms
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        out: list[Released] = []
        buffer = self.buffer
        while buffer and buffer[0][0][0] < watermark:
            _, event, tag = heapq.heappop(buffer)
            out.append(Released(event, False, tag))
        return out
