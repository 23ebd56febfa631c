"""What user shards tell each other on the results topic: labels and the examples they teach.

A label keyed by tx_id goes to every user shard (any of them may have decided that
transaction), and the one that did sends the labelled vectors (`Example`s) to the others, so
every shard's classifier learns every label. A peer's message waits here until the
receiver's own event time has passed it: placing it in the completion queue earlier could let
a transaction the receiver has not released yet be scored after learning from its future.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from features.windows import drop_oldest
from rebate_guard.contract.order import KIND_RANK
from rebate_guard.contract.records import Label, from_row
from rebate_guard.core.decider import Example
from streams.shards.completion import Entry
from streams.shards.wire import OrderKey, drain


@dataclass
class PeerExchange:
    """User partition `partition`'s side of the exchange with its `n_user - 1` peers."""

    partition: int
    n_user: int
    #: Items to send per peer, drained after every call (so empty in any checkpoint).
    outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
    #: What peers sent and event time has not reached yet: (key, arrival, entry) in a heap.
    held: list[tuple[OrderKey, int, Entry]] = field(default_factory=list)
    #: Identities of peer items taken in -> their ts, kept for the decision TTL (a peer
    #: restored from its checkpoint sends some again).
    seen: dict[tuple[Any, ...], int] = field(default_factory=dict)
    arrivals: int = 0

    def tell(self, item: list[Any]) -> None:
        """Sends `item` (a label, or an example) to every peer."""
        for peer in range(self.n_user):
            if peer != self.partition:
                items = self.outbox.get(peer)
                if items is None:
                    items = self.outbox[peer] = []
                items.append(item)

    def hear(self, peer: int, items: list[list[Any]]) -> None:
        """Labels and examples from user shard `peer`, each taken in once."""
        identity: tuple[Any, ...]
        for item in items:
            if item[0] == "l":  # ["l", code, offset, label row]
                identity = ("l", peer, item[1], item[2])
                if identity in self.seen:
                    continue
                label = from_row(Label, item[3])
                self.seen[identity] = label.ts
                self._hold(Entry(label, (item[1], item[2]), peer))
            else:  # ["x", origin, code, offset, label id, tx_id, fraud, risk, ts, x, sampled]
                _, origin, code, offset, label_id, tx_id, fraud, risk, ts, x = item[:10]
                identity = ("x", origin, code, offset, tx_id)
                if identity in self.seen:
                    continue
                self.seen[identity] = ts
                # A peer from before the review sample sends ten fields: not sampled.
                sampled = bool(item[10]) if len(item) > 10 else False
                example = Example(tx_id, x, fraud, risk, ts, sampled)
                key = (ts, KIND_RANK[Label], label_id)  # where its label sits
                self._hold(Entry(example, (code, offset), origin, key))

    def _hold(self, entry: Entry) -> None:
        self.arrivals += 1
        heapq.heappush(self.held, (entry.key, self.arrivals, entry))

    def due(self, watermark: int, *, drained: bool) -> Iterator[Entry]:
        """The held items event time has reached (all of them once the receiver's input is
        `drained`), in event-time order."""
        held = self.held
        while held and (drained or held[0][0][0] < watermark):
            yield heapq.heappop(held)[2]

    def forget(self, horizon: int) -> None:
        """Forgets the identities of items older than `horizon` (past the decision TTL)."""
        drop_oldest(self.seen, horizon)

    def envelopes(self) -> list[tuple[int, bytes]]:
        """(user partition, envelope) pairs for the results topic: labels and examples."""
        return drain(self.outbox, {"from": self.partition})
