"""A user shard's completion queue: what waits in it, what completing it gives, and the ring
score each transaction is decided with.

Released events wait in event-time order until every entity partition has sent its part of
their features; `UserShard.complete` then decides them from the head of the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from graph.layer import RingScore, merchant_ring_counts, ring_score_of
from rebate_guard.contract.order import Event, order_key
from rebate_guard.contract.records import (
    Decision,
    Label,
    PlatformEvent,
    RebateAdjustment,
    Transaction,
)
from rebate_guard.core.decider import REPEAT_AT_MERCHANT, Example, Features
from streams.shards.wire import REQUESTER, Identity, OrderKey


class Entry:
    """A released event in a user shard's completion queue, or an example to learn that
    another user shard sent (placed where its label sits in event-time order)."""

    __slots__ = ("event", "head", "identity", "key", "missing", "origin", "parts", "repeat")

    def __init__(
        self,
        event: Event | Example,
        identity: Identity,
        origin: int,
        key: OrderKey | None = None,
    ) -> None:
        self.event = event
        self.identity = identity
        self.origin = origin  # the user partition whose input `identity` names
        if key is None:
            assert not isinstance(event, Example), "an example sits where its label does"
            key = order_key(event, 0)[:3]
        self.key = key
        self.head: list[float | None] = []  # the user-stage features
        self.parts: dict[int, list[float | None]] = {}  # families mask -> values
        self.missing = 0  # entity results still to come
        self.repeat = False  # a second message for a tx_id: its first decision stands

    def add(self, families: int, values: list[float | None]) -> None:
        if families not in self.parts:
            self.parts[families] = values
            self.missing -= 1


@dataclass
class Completed:
    """What a user shard finished: decisions (with their vectors) and repeated tx_ids, and
    every transaction's tx_id in order (the decisions topic answers each message)."""

    decisions: list[tuple[Decision, Features]] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    #: The ledger's adjustments (labels, refunds, hold timeouts), in order.
    adjustments: list[RebateAdjustment] = field(default_factory=list)
    #: The payment or refund of each of `decisions`, in the same order (the console's index),
    #: and each payment's history row (`rebate_guard.core.backtest.HistoryRow` JSON; None for a
    #: refund or when the shard keeps none): what policy backtests re-decide.
    transactions: list[Transaction] = field(default_factory=list)
    history_rows: list[bytes | None] = field(default_factory=list)
    #: The labels taken in, in order (the console shows each case's newest).
    labels: list[Label] = field(default_factory=list)
    #: The decisions on points requests (`Decider.platform_event`), and the event_ids of
    #: repeated requests (answered with the decision that stands).
    points: list[Decision] = field(default_factory=list)
    points_repeats: list[str] = field(default_factory=list)


def ring_of(
    tx: Transaction,
    vector: list[float | None],
    ring_scores: Mapping[tuple[str, str], RingScore],
) -> tuple[float, list[str]] | None:
    """The ring score and reason `tx` is decided with (`graph.layer.ring_score_of`), from the
    ring scores the graph shard published: its user's strongest ring, or its merchant's for a
    returning customer (`graph.layer.merchant_ring_counts`)."""
    at_merchant = None
    if merchant_ring_counts(vector[REPEAT_AT_MERCHANT]):
        at_merchant = ring_scores.get(("m", tx.merchant_id))
    return ring_score_of(ring_scores.get(("u", tx.user_id)), at_merchant)


def requester_ring(
    event: PlatformEvent, ring_scores: Mapping[tuple[str, str], RingScore]
) -> tuple[float, list[str]] | None:
    """The ring score and reason a points request is decided with: its requester's strongest
    ring that is not a signup batch, as the graph shard published it (`REQUESTER`), as replay
    reads it from its ring book (`rebate_guard.core.decider.Scorer.requester_ring`).

    No key: no such ring (the graph shard deletes it for a user in batches alone, and a
    graph shard restored from before the key publishes it for every member of a ring:
    `GraphShard.__setstate__`)."""
    if event.user_id is None:
        return None
    return ring_score_of(ring_scores.get((REQUESTER, event.user_id)))
