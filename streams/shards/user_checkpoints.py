"""A user shard's checkpoints: the lowest input offsets it could still send an item for (its
floor), made durable with the books' mark once written, and the shard pickled whole or as a
delta (`streams.shards.deltas`)."""

from __future__ import annotations

import pickle

from streams.alignment import Aligner
from streams.shards.deltas import USER_STORES, Plan, delta_blob
from streams.shards.solvency import MovementFeed
from streams.shards.wire import TOPIC_CODES, Identity


class UserCheckpoints:
    """What `UserShard` (a dataclass with these fields) does for its checkpoints."""

    next_offset: dict[int, int]
    aligner: Aligner[int]
    durable_floor: list[int]
    books: MovementFeed
    orphans: dict[Identity, dict[int, list[float | None]]]

    def floor(self) -> list[int]:
        """Per topic code, the lowest offset this shard could still send an item for: the
        next unread offset, or an earlier one still waiting in the aligner."""
        floor = [self.next_offset.get(code, 0) for code in range(len(TOPIC_CODES))]
        for _, _, (code, offset) in self.aligner.buffer:
            if offset < floor[code]:
                floor[code] = offset
        return floor

    def snapshot(self, floor: list[int], plan: Plan | None = None) -> bytes:
        """The checkpoint (a delta if `plan` extends an earlier one); `floor` (from `floor()`
        now) and the books' mark become durable once it is written (`durable`), and are
        durable by definition in the state it restores."""
        books = self.books
        durable = self.durable_floor, books.durable
        self.durable_floor, books.durable = floor, books.mark
        try:
            if plan is not None and plan.extends is not None:
                return delta_blob(self, USER_STORES, plan)
            return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            self.durable_floor, books.durable = durable

    def durable(self, floor: list[int], books_mark: int) -> None:
        """The checkpoint taken with `floor` and the books at `books_mark` is written: the
        stages it feeds may forget what came before them."""
        self.durable_floor, self.books.durable = floor, books_mark

    def _drop_stale_orphans(self) -> None:
        floor = self.floor()
        stale = [i for i in self.orphans if i[1] < floor[i[0]]]
        for identity in stale:  # released already, and complete: a duplicate result
            del self.orphans[identity]
