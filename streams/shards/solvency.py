"""The platform's books in the stream: what user shards send the solvency shard, and the shard.

Every user shard's decider moves the books (`rebate_guard.core.solvency.Movement`: rebates
granted, released or clawed back, points flows, money paid in and out). The books are the
whole platform's, so one shard keeps them: the `SolvencyShard`, fed by every user shard on the
solvency-movements topic's partition `SOLVENCY_PARTITION` in envelopes with watermarks, as the
graph shard is. Its aligner orders movements by (ts, movement_id), so the `SolvencyMonitor`
sees each period's movements whatever the partitioning; within a period the monitor's outputs
do not depend on the order (`rebate_guard.core.solvency`), so its readings and alerts are
replay's exactly.

Where a user shard's event time stands for its books (`MovementFeed.mark`): the oldest event
it still has to decide, or its aligner's watermark when none waits; holds past their timeout
by then are resolved first (`Decider.advance`), so every movement it sends later has a ts at
or past the mark, except those of late events (flagged).

Exactly once across restarts: a restored user shard sends again what it sent after its
checkpoint, by then with ts at or past the mark in that checkpoint (its *floor*, durable once
written). So the solvency shard skips a movement_id it has applied, and forgets the ids below
the sender's floor; those of late events it keeps for `late_memory_ms` of event time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import PlatformAlert, SolvencyReading, from_row, to_row
from rebate_guard.core.decider import Decider
from rebate_guard.core.solvency import Movement, SolvencyMonitor
from streams.alignment import START, Aligner, Released
from streams.shards.inbox import Inbox
from streams.shards.wire import Mark, marked_envelopes

#: The solvency-movements partition the solvency shard reads (the topic has `RG_PARTITIONS`
#: like every internal topic, for co-partitioning; the others stay empty).
SOLVENCY_PARTITION = 0
#: What a movement item is: ["m", late (0 or 1), the movement's row].
MOVEMENT = "m"


@dataclass
class MovementFeed:
    """A user shard's side of the solvency channel: the movements to send, and its mark."""

    #: Movement items to send, drained after every call (so empty in any checkpoint).
    outbox: list[list[Any]] = field(default_factory=list)
    #: Every later movement has a ts at or past this (except a late event's).
    mark: int = START
    #: The mark in the newest durable checkpoint: the solvency shard may forget below it.
    durable: int = START
    #: What the solvency shard was last told: (mark, idle, (durable,)).
    told: Mark | None = None

    def take(self, movements: Iterable[Movement]) -> None:
        """Movements the decider made; those older than the mark already sent come from late
        events (flagged: the solvency shard remembers their ids longer)."""
        for movement in movements:
            late = int(movement.ts < self.mark)
            self.outbox.append([MOVEMENT, late, to_row(movement)])

    def follow(self, decider: Decider, mark: int, *, decided_at: int) -> None:
        """Takes the decider's movements; then, if event time for the books moved to
        `mark`, the holds past their timeout by then resolve first (`Decider.advance`), so
        that nothing sent later is older than the mark."""
        self.take(decider.take_movements())
        if mark > self.mark:
            self.mark = mark
            decider.advance(mark, decided_at=decided_at)
            self.take(decider.take_movements())

    def envelopes(self, partition: int, *, idle: bool) -> list[tuple[int, bytes]]:
        """(solvency partition, envelope) pairs: new movements, and the mark if it moved."""
        mark: Mark = (self.mark, idle, (self.durable,))
        items = self.outbox or None
        if items is None and self.told == mark:
            return []
        self.outbox = []
        told, self.told = self.told, mark
        return [
            (SOLVENCY_PARTITION, e)
            for e in marked_envelopes(partition, items, told=told, mark=mark)
        ]


class MovementAligner(Aligner[int]):
    """Orders movements by (ts, movement_id): the one order every partitioning gives."""

    def _key(self, event: Event, seq: int) -> tuple[int, int, str, int]:
        movement: Movement = event  # type: ignore[assignment]
        return (movement.ts, 0, movement.movement_id, seq)


Output = SolvencyReading | PlatformAlert


@dataclass
class SolvencyShard(Inbox):
    """The platform's books (`SolvencyMonitor`), fed in event-time order by every user shard.
    Outputs, drained by the driver (`take`): the readings and alerts of the periods closed."""

    monitor: SolvencyMonitor
    #: How long (event time) the ids of late events' movements are remembered.
    late_memory_ms: int
    outputs: list[Output] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.aligner = MovementAligner(frozenset(range(self.n_user)))
        #: Per user partition, movement_id -> (ts, late) of the movements applied and not
        #: yet below the sender's floor.
        self.movements: dict[int, dict[str, tuple[int, int]]] = {}
        #: The running figures last given out (`running`); not checkpointed.
        self.shown: dict[str, SolvencyReading] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A restored shard gives all its running figures again: the store may hold newer
        # ones, from work lost with the shard that made them.
        state.pop("shown", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.shown = {}

    def _take(self, p: int, item: list[Any]) -> Event | None:
        row = item[2]
        movement_id, ts = row[0], row[1]
        applied = self.movements.setdefault(p, {})
        if movement_id in applied:
            return None  # sent again by a restored user shard
        applied[movement_id] = (ts, item[1])
        movement: Any = from_row(Movement, row)
        return movement  # ordered by `MovementAligner`

    def _moved(self, p: int, watermark: int, *, idle: bool) -> list[Released]:
        """An idle user shard's mark still says how far its event time went (its holds due
        by then are resolved): periods before it may close."""
        released = self.aligner.advance(p, watermark)
        return released + (self.aligner.idle(p) if idle else [])

    def _forget(self, p: int, floor: tuple[int, ...]) -> None:
        applied = self.movements.get(p)
        if applied:
            (durable,) = floor
            late_horizon = durable - self.late_memory_ms
            self.movements[p] = {
                m: (ts, late)
                for m, (ts, late) in applied.items()
                if ts >= (late_horizon if late else durable)
            }

    def apply(self, released: list[Released]) -> None:
        """Applies released movements in order, then closes the periods event time has
        passed (every movement before the watermark is in)."""
        monitor = self.monitor
        for item in released:
            self.late += item.late
            movement: Any = item.event
            self.outputs += monitor.apply(movement)
        if self.aligner.watermark > START:
            self.outputs += monitor.advance(self.aligner.watermark)

    def take(self) -> list[Output]:
        """The readings and alerts since the last call, in order."""
        out, self.outputs = self.outputs, []
        return out

    def current(self) -> dict[str, SolvencyReading]:
        """The running figures of the platform and each region (not the merchants': a
        reading per merchant moved in the period, not shown)."""
        return self.monitor.current(merchants=False)

    def running(self) -> dict[str, SolvencyReading]:
        """The running figures (`current`) that changed since the last call: what the
        store is to be given after a batch (nothing, when it moved nothing)."""
        changed = {s: r for s, r in self.current().items() if self.shown.get(s) != r}
        self.shown.update(changed)
        return changed
