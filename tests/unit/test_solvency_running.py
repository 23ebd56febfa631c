"""The solvency shard's running figures (what the console shows as "now"): the platform's and
the regions' only, given to the store after a batch only where they changed, and all of them
again after a restore. The books' readings and alerts: tests/unit/test_solvency_stream.py."""

from __future__ import annotations

import pickle
from typing import Any

from rebate_guard.core.solvency import Movement, SolvencyMonitor
from streams.shards import SOLVENCY_PARTITION, MovementFeed, SolvencyShard
from streams.store import MemoryDecisionStore
from tests.factories import HOUR, T0, signup
from tests.unit.test_processor import drain, handle, make, raw


def _fed(shard: SolvencyShard, movements: list[Movement], *, mark: int, offset: int) -> int:
    """`movements` from user partition 0, its event time then at `mark`: the next offset."""
    feed = MovementFeed(mark=mark)
    feed.take(movements)
    for _, envelope in feed.envelopes(0, idle=False):
        released = shard.offer(offset, envelope)
        assert released is not None
        shard.apply(released)
        offset += 1
    return offset


def test_the_running_figures_are_given_where_they_changed_and_all_after_a_restore() -> None:
    shard = SolvencyShard(SOLVENCY_PARTITION, 1, SolvencyMonitor(), late_memory_ms=0)
    moves = [
        Movement("a", T0, "m1", "east", liability_cents=500, merchant_funding_cents=1_000),
        Movement("b", T0 + 1, "m2", "west", liability_cents=200, merchant_funding_cents=900),
    ]
    offset = _fed(shard, moves, mark=T0 + 2, offset=0)
    first = shard.running()
    # The merchants' scopes are not running figures (a reading per merchant moved).
    assert set(first) == {"platform", "region:east", "region:west"}
    assert first == shard.monitor.current(merchants=False)
    assert first["platform"].liability_cents == 700
    assert shard.running() == {}  # nothing moved since
    offset = _fed(shard, [], mark=T0 + 10, offset=offset)  # event time moved, the books not
    assert shard.running() == {}
    move = Movement("c", T0 + 20, "m1", "east", liability_cents=50)
    offset = _fed(shard, [move], mark=T0 + 21, offset=offset)
    changed = shard.running()
    assert set(changed) == {"platform", "region:east"}  # west's books did not move
    assert changed["platform"].liability_cents == 750
    restored = pickle.loads(shard.snapshot())
    assert restored.running() == shard.current()  # all of them: the store may hold others
    # The period closes: as read at its end, the figures it ran with.
    offset = _fed(restored, [], mark=T0 + HOUR, offset=offset)
    assert restored.monitor.open_start is None and restored.running() == {}
    # A movement in the next one: every scope's figures are the new period's.
    _fed(
        restored,
        [Movement("d", T0 + HOUR + 5, "m1", "east", liability_cents=1)],
        mark=T0 + HOUR + 6,
        offset=offset,
    )
    after = restored.running()
    assert set(after) == {"platform", "region:east", "region:west"}
    assert {r.period_start for r in after.values()} == {T0 + HOUR}
    assert after["platform"].liability_cents == 751


class CountingStore(MemoryDecisionStore):
    """Counts the running figures the processor stores."""

    def __init__(self) -> None:
        super().__init__()
        self.running_written: list[set[str]] = []

    async def put_solvency(self, readings: Any, current: Any) -> None:
        if current:
            self.running_written.append(set(current))
        await super().put_solvency(readings, current)


def test_a_batch_that_moved_no_books_writes_no_running_figures() -> None:
    store = CountingStore()
    proc, _, _ = make(store, partitions=1)
    grant = {
        "event_id": "g1",
        "ts": T0,
        "kind": "points_grant",
        "amount_cents": 1_000,
        "user_id": "u1",
        "merchant_id": "m1",
        "region": "east",
    }
    handle(proc, "platform-events", [raw("p.platform-events", 0, grant)])
    drain(proc)
    assert store.running_written == [{"platform", "region:east"}]
    written = dict(store.solvency_current)
    for _ in range(3):  # ticks, and a signup: event time moves, the books do not
        drain(proc)
    handle(proc, "signups", [raw("p.signups", 0, signup("u2", T0 + 5))])
    drain(proc)
    assert store.running_written == [{"platform", "region:east"}]
    assert store.solvency_current == written
