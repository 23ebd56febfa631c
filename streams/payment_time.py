"""Deciding a transaction at payment time (`POST /score`'s fast path), from the state of
this worker's shards as it stands, without waiting for the stream.

A transaction decided here stays *in flight* (`AtPayment`) until its user shard completes
it: later payments on its keys (`in_flight_keys`) are decided with it applied first, and
the stream follows its decision, as it follows any standing one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from features.stages import REFERRAL, partition_of, splice, transaction_routes
from features.user import TxContext
from graph.layer import RingScore
from rebate_guard.contract.order import order_key
from rebate_guard.contract.records import Decision, Transaction
from rebate_guard.core.decider import Features
from streams.alignment import Released
from streams.batch import Counters
from streams.coalesce import Coalesced
from streams.console.store import ConsoleStore, Indexed
from streams.graph_status import GraphStatus
from streams.referral_walks import run_walks
from streams.registry import ShardRegistry
from streams.shards import UserShard, ring_of
from streams.sink import key_partition
from streams.store import DecisionStore, RingKey

log = logging.getLogger(__name__)

#: How long a decision at payment time waits for a transaction before it, on one of its
#: keys, that is half-way into the stream (or still being decided) to be placeable.
EARLIER_WAIT_S = 0.1


@dataclass
class AtPayment:
    """A transaction being decided at payment time here, until its user shard completes it:
    the decision (None: left to the stream) resolves the stream's wait for it."""

    tx: Transaction
    partition: int
    #: The user and identifiers whose features it changes (see `in_flight_keys`).
    keys: tuple[str, ...]
    decided: asyncio.Future[Decision | None]
    #: Resolved once the stream has it (or it never entered the stream).
    settled: asyncio.Future[None]
    #: Once decided: its user context, decision and full feature vector (what later
    #: payments on its keys apply before their own, while the stream has not got it).
    context: TxContext | None = None
    decision: Decision | None = None
    x: Features | None = None
    #: The entity partitions that have applied it (the stream under way).
    applied_at: set[int] = field(default_factory=set)
    #: Its decision was stored here first and is in the console's views, all but its
    #: history row, which the stream's user shard makes (`Publisher.decisions`).
    indexed: bool = False


def in_flight_keys(tx: Transaction) -> tuple[str, ...]:
    """The keys a transaction decided at payment time is found by, until the stream has
    it: its user and identifiers. A later payment on one of them is decided with it applied
    first (on the copies of the state it reads), so bursts count exactly. Merchant and
    category figures aggregate many users: another user's payment in flight there, on none
    of these keys, is not applied (docs/policy.md)."""
    keys = [f"u:{tx.user_id}"]
    for kind, key in (("m", tx.merchant_id), ("d", tx.device_id), ("i", tx.ip), ("c", tx.card_id)):
        if key is not None:
            keys.append(f"{kind}:{key}")
    return tuple(keys)


@dataclass(frozen=True)
class _Fetched:
    referral: tuple[str | None, int | None]
    depth: int
    rings: dict[RingKey, RingScore] | None
    graph_down: bool


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Marks a background task's exception as seen (its awaiter may have gone)."""
    if not task.cancelled():
        task.exception()


class LeftToStream(Exception):
    """Why a transaction cannot be decided at payment time (a counter name)."""


class _Waiting(Exception):
    """A transaction before this one cannot be placed yet: wait for `until`."""

    def __init__(self, until: asyncio.Future[Any]) -> None:
        self.until = until


class PaymentTimeDecider:
    def __init__(
        self,
        shards: ShardRegistry,
        store: DecisionStore,
        *,
        graph: GraphStatus,
        counters: Counters,
        clock: Callable[[], float],
        console: ConsoleStore | None = None,
    ) -> None:
        self.shards = shards
        self.store = store
        self.graph = graph
        self.counters = counters
        self.clock = clock
        self.console = console
        #: Transactions decided (or being decided) at payment time, by tx_id, until their
        #: user shard completes them; and their tx_ids by key (`in_flight_keys`).
        self.entries: dict[str, AtPayment] = {}
        self.in_flight: dict[str, list[str]] = {}
        #: The decisions made in one turn of the event loop, stored together (`_store`).
        self.stores: Coalesced[tuple[Decision, Transaction], bytes | None] = Coalesced(self._store)

    async def decide(
        self,
        tx: Transaction,
        produce: Callable[[], Awaitable[None]],
        rings: dict[RingKey, RingScore] | None = None,
    ) -> tuple[bool, Decision | None]:
        """(whether `tx` was produced, its standing decision or None). Decides `tx` from
        the state as it stands, without waiting for the stream, when this worker holds its
        user shard and every entity shard its features come from, and event time has not
        passed it (the state then holds only events before it, as the stream's decision
        would, less what is still in flight: see `in_flight_keys`). The decision is stored
        first-write-wins like the stream's, and when the stream reaches `tx` its user shard
        follows it (ledger, caps) as it follows any standing decision. `tx` is produced
        first (a decision is never made on a transaction the log may not have): a failure
        to produce propagates, with nothing decided. Not decided here (False, None): the
        caller produces and waits. `rings`: the ring scores of `GraphStatus.ring_keys([tx])`
        if the caller has read them."""
        try:
            entry = self._claim(tx)
        except LeftToStream as why:
            self._left_to_stream(str(why))
            return False, None
        # What the decision reads from Redis is fetched while the broker acknowledges.
        fetching = asyncio.ensure_future(self._fetch(entry, rings))
        fetching.add_done_callback(_retrieved)
        try:
            await produce()
        except BaseException:
            fetching.cancel()
            self.settle(tx.tx_id)  # never entered the stream
            raise
        value = None
        try:
            value = await self._decide_now(entry, await fetching)
            self.counters.decided_at_payment += 1
        except LeftToStream as why:
            self._left_to_stream(str(why))
        except Exception:
            log.exception("deciding %s at payment time failed; the stream decides it", tx.tx_id)
            self._left_to_stream("failed")
        finally:  # the stream waits for this (`decided_among`): always resolve it
            if not entry.decided.done():
                entry.decided.set_result(value)
        return True, value

    # --- what the stream tells it, and asks it ---------------------------------------------
    def settle(self, tx_id: str) -> None:
        """The stream has `tx_id` decided (or it never entered it): its keys are free."""
        entry = self.entries.pop(tx_id, None)
        if entry is None:
            return
        if not entry.decided.done():
            entry.decided.set_result(None)
        entry.settled.set_result(None)
        for key in entry.keys:
            others = self.in_flight[key]
            others.remove(tx_id)
            if not others:
                del self.in_flight[key]

    def settle_all(self, tx_ids: Iterable[str]) -> None:
        """All of the stream's state has `tx_ids` now."""
        if self.entries:
            for tx_id in tx_ids:
                self.settle(tx_id)

    def released(self, partitions: Iterable[int]) -> None:
        """This worker gave up the user shards of `partitions`: their new owner decides
        what is still in flight there."""
        for partition in partitions:
            for entry in [e for e in self.entries.values() if e.partition == partition]:
                self.settle(entry.tx.tx_id)

    def applied_at(self, q: int, released: list[Released]) -> None:
        """Entity shard `q` applied `released`: those in flight here are under way."""
        if not self.entries:
            return
        for item in released:
            event = item.event
            if isinstance(event, Transaction):
                entry = self.entries.get(event.tx_id)
                if entry is not None:
                    entry.applied_at.add(q)

    async def decided_among(self, ready: list[Transaction]) -> dict[str, Decision]:
        """The decisions made at payment time among `ready` (waiting for any still being
        made: they stand, and the ledger must follow them)."""
        out: dict[str, Decision] = {}
        if not self.entries:
            return out
        for tx in ready:
            entry = self.entries.get(tx.tx_id)
            if entry is not None:
                decision = await asyncio.shield(entry.decided)
                if decision is not None:
                    out[tx.tx_id] = decision
        return out

    def indexed(self, tx_ids: Iterable[str]) -> set[str]:
        """Those of `tx_ids` (decided here) already in the console's views."""
        return {t for t in tx_ids if self.entries[t].indexed}

    # --- deciding -------------------------------------------------------------------------
    def _claim(self, tx: Transaction) -> AtPayment:
        if tx.tx_id in self.entries:
            raise LeftToStream("in_stream")
        partition = key_partition(tx.user_id.encode(), self.shards.n_partitions)
        self._user_shard_for(tx, partition)
        keys = in_flight_keys(tx)
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[Decision | None] = loop.create_future()
        entry = AtPayment(tx, partition, keys, decided, loop.create_future())
        self.entries[tx.tx_id] = entry
        for key in keys:
            self.in_flight.setdefault(key, []).append(tx.tx_id)
        return entry

    def _left_to_stream(self, why: str) -> None:
        counts = self.counters.left_to_stream
        counts[why] = counts.get(why, 0) + 1

    def _user_shard_for(self, tx: Transaction, partition: int) -> UserShard:
        """The user shard to decide `tx` if it is here and its state still holds only
        events before `tx`."""
        shard = self.shards.users.get(partition)
        if shard is None:
            raise LeftToStream("not_here")
        if tx.tx_id in shard.seen:
            raise LeftToStream("in_stream")
        if shard.aligner.watermark > tx.ts:
            raise LeftToStream("event_time_past")
        return shard

    async def _fetch(
        self, entry: AtPayment, rings: dict[RingKey, RingScore] | None = None
    ) -> _Fetched:
        """What deciding `entry` needs from Redis: its referral depth (for the referrer and
        signup it has now), ring scores, whether the graph shard runs."""
        tx = entry.tx
        referral = self._user_shard_for(entry.tx, entry.partition).users.referral(tx.user_id, tx.ts)
        depth = await self._depth_now(tx, *referral)
        # No retries here: a Redis failure leaves the transaction to the stream, and the
        # request to its fail-closed answer, rather than waiting for Redis to come back.
        if not self._user_shard_for(entry.tx, entry.partition).feeds_graph:
            rings = None
        elif rings is None:
            rings = await self.store.get_ring_scores(self.graph.ring_keys([tx]))
        graph_down = rings is not None and not await self.graph.running(retry=False)
        return _Fetched(referral, depth, rings, graph_down)

    async def _decide_now(self, entry: AtPayment, fetched: _Fetched) -> Decision:
        """The decision from the state as it is now (after what it waits for, if any)."""
        tx = entry.tx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EARLIER_WAIT_S
        while True:
            shard = self._user_shard_for(entry.tx, entry.partition)
            try:
                earlier = self._earlier(entry)
                break
            except _Waiting as waiting:
                left = deadline - loop.time()
                if left <= 0:
                    raise LeftToStream("in_flight") from None
                await asyncio.wait([waiting.until], timeout=left)
        mine = [
            e.tx for e in earlier if e.tx.user_id == tx.user_id and e.tx.tx_id not in shard.seen
        ]
        vector, context = shard.users.peek(tx, mine)
        if (context.referrer, context.signup_ts) != fetched.referral:
            raise LeftToStream("in_flight")  # the user's signup came in meanwhile
        context.depth = fetched.depth
        parts: dict[int, list[float | None]] = {}
        for q, families in transaction_routes(tx, context, n_partitions=self.shards.n_partitions):
            entity = self.shards.entities.get(q)
            if entity is None:
                raise LeftToStream("not_here")
            if entity.aligner.watermark > tx.ts:
                raise LeftToStream("event_time_past")
            before = [(e.tx, e.context) for e in earlier if e.context and q not in e.applied_at]
            parts[families] = entity.entities.peek(tx, context, families=families, earlier=before)
        splice(parts, vector)
        ring = ring_of(tx, vector, fetched.rings or {})
        pending = [e.decision for e in earlier if e.decision is not None]
        decider = shard.decider
        now_ms = int(self.clock() * 1000)
        decision, x, _ = decider.assess(
            tx,
            vector,
            decided_at=now_ms,
            ring=ring,
            graph_down=fetched.graph_down,
            pending=pending,
        )
        entry.context, entry.decision, entry.x = context, decision, x
        prior = await self.stores((decision, tx))
        if prior is not None:
            entry.decision = Decision.loads(prior)
        else:
            entry.indexed = self.console is not None
        return entry.decision

    async def _store(self, decided: list[tuple[Decision, Transaction]]) -> list[bytes | None]:
        """Stores the decisions made at payment time in one turn of the event loop
        (`stores`), first-write-wins like the stream's (the prior decision of each, if
        any, stands), and puts the new ones in the console's views: two round trips for
        all of them."""
        priors = await self.store.put_new([(d.tx_id, d.dumps()) for d, _ in decided])
        if self.console is not None:
            new = [
                Indexed(d, tx)
                for (d, tx), prior in zip(decided, priors, strict=True)
                if prior is None
            ]
            if new:
                await self.console.record(new)
        return priors

    def _earlier(self, entry: AtPayment) -> list[AtPayment]:
        """The transactions decided here at payment time, not yet in the stream, that share
        a key with `entry` and come before it in event time, in that order: its features
        count them, where the stream's state does not have them yet (the stream may have
        begun: its user shard released it, some entity shards applied it; its decider gets
        it last, when the user shard completes it, and it is settled then). One still being
        decided cannot be placed yet: `_Waiting` for it."""
        found: dict[str, AtPayment] = {}
        mine = order_key(entry.tx, 0)
        for key in entry.keys:
            for tx_id in self.in_flight.get(key, ()):
                if tx_id == entry.tx.tx_id or tx_id in found:
                    continue
                other = self.entries[tx_id]
                if order_key(other.tx, 0) > mine:
                    continue  # after it in event time: not in its features
                if other.partition not in self.shards.users:
                    raise _Waiting(other.settled)  # its shard is moving to another worker
                if other.context is None:  # being decided, or left to the stream
                    raise _Waiting(other.settled if other.decided.done() else other.decided)
                found[tx_id] = other
        return sorted(found.values(), key=lambda e: order_key(e.tx, 0))

    async def _depth_now(self, tx: Transaction, referrer: str | None, signup: int | None) -> int:
        """The user's referral depth: memoised by the entity shard of its referrer, or
        walked in Redis's referral tree as the entity shard would."""
        if referrer is None or signup is None:
            return 0  # not read: the referral family reads depth only with a referrer
        partition = partition_of(REFERRAL, referrer, n_partitions=self.shards.n_partitions)
        entity = self.shards.entities.get(partition)
        if entity is None:
            raise LeftToStream("not_here")
        known = entity.depths.get(tx.user_id, signup)
        if known is not None:
            return known
        key = (tx.user_id, signup)
        walked = await run_walks({key: (referrer, tx.user_id, signup)}, self.store.get_referrals)
        return walked[key]
