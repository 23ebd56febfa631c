"""`POST /score`: a decision at payment time, or the stream's decision awaited for a while.

The stored decision if the transaction was decided already (same tx_id, same answer); else
the transaction goes into the pipeline (the same logic, idempotent by tx_id) and is decided
at once from the state as it stands where this worker can (`streams.payment_time`), or else
its decision is awaited for up to the request's wait. If it cannot be had in time, the
provisional fail-closed answer (`streams.admission`).

The wait wakes when this worker stores the decision (its user partition is usually here:
`DecisionWaiters`); Redis is asked only every `SCORE_POLL_S`, for a decision made by
another worker: many waiting requests must not crowd the worker's own loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from graph.layer import RingScore
from rebate_guard.client import RebateStatus, rebate_status
from rebate_guard.contract.records import TRANSACTIONS, Decision, Transaction
from rebate_guard.settings import Settings
from streams.admission import Admission
from streams.coalesce import Coalesced
from streams.sink import Sink
from streams.store import DecisionStore, RingKey

#: How often a waiting `POST /score` asks Redis for a decision another worker made.
SCORE_POLL_S = 0.05

#: `PaymentTimeDecider.decide`: (transaction, produce it, ring scores if read) ->
#: (whether produced, the decision made now or None).
DecideNow = Callable[
    [Transaction, Callable[[], Awaitable[None]], dict[RingKey, RingScore] | None],
    Awaitable[tuple[bool, Decision | None]],
]


#: A request's first read: (tx_id, the ring keys deciding it reads) -> (its stored
#: decision or None, the ring scores found).
Lookup = tuple[str, list[RingKey]]
Found = tuple[bytes | None, dict[RingKey, RingScore]]


class DecisionWaiters:
    """`POST /score` requests waiting for a decision this worker makes, by tx_id."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[asyncio.Future[bytes]]] = {}

    def add(self, tx_id: str) -> asyncio.Future[bytes]:
        decided = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(tx_id, []).append(decided)
        return decided

    def remove(self, tx_id: str, decided: asyncio.Future[bytes]) -> None:
        waiters = self.waiting.get(tx_id, [])
        if decided in waiters:
            waiters.remove(decided)
        if not waiters:
            self.waiting.pop(tx_id, None)

    def wake(self, standing: dict[str, bytes]) -> None:
        """The standing decisions (tx_id -> JSON) a batch stored: their waiters have them."""
        if not self.waiting:
            return
        for tx_id, value in standing.items():
            for waiter in self.waiting.get(tx_id, ()):
                if not waiter.done():
                    waiter.set_result(value)


class ScoreRequests:
    def __init__(
        self,
        settings: Settings,
        store: DecisionStore,
        sink: Sink,
        *,
        admission: Admission,
        waiters: DecisionWaiters,
        decide_now: DecideNow,
        ring_keys: Callable[[Sequence[Transaction]], list[RingKey]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.admission = admission
        self.waiters = waiters
        self.decide_now = decide_now
        self.ring_keys = ring_keys
        #: The requests' first reads in one turn of the event loop, made together.
        self.lookups: Coalesced[Lookup, Found] = Coalesced(self._look_up)

    async def _look_up(self, lookups: list[Lookup]) -> list[Found]:
        """Each request's stored decision, if any, and the ring scores it asked for: one
        round trip for one request, two (decisions, ring scores) for many."""
        if len(lookups) == 1:
            return [await self.store.decision_and_rings(*lookups[0])]
        tx_ids = [tx_id for tx_id, _ in lookups]
        keys = sorted({key for _, ring_keys in lookups for key in ring_keys})
        stored, rings = await asyncio.gather(
            self.store.get_many(tx_ids), self.store.get_ring_scores(keys)
        )
        return [
            (stored.get(tx_id), {key: rings[key] for key in ring_keys if key in rings})
            for tx_id, ring_keys in lookups
        ]

    async def score(self, tx: Transaction, value: bytes, wait_s: float) -> RebateStatus:
        """The answer to `POST /score` for `tx` (its JSON: `value`), waiting at most
        `wait_s` for its decision; past the admission limit, provisional at once."""
        if self.admission.full:
            # Not even the stored-decision check: a repeated tx_id gets a provisional
            # answer, which grants nothing; the stream dedupes the transaction by tx_id.
            try:
                await self._produce(tx, value)
            except Exception as exc:
                return self.admission.overloaded(tx, exc)
            return self.admission.overloaded(tx, None)
        with self.admission.admitted():
            return await self._score(tx, value, wait_s)

    async def _score(self, tx: Transaction, value: bytes, wait_s: float) -> RebateStatus:
        fail_closed = self.admission.fail_closed
        deadline = time.monotonic() + wait_s
        decided = self.waiters.add(tx.tx_id)
        at_payment = self.settings.score_at_payment
        try:
            try:  # decided already? (and, to decide now, the ring scores: one round trip)
                ring_keys = self.ring_keys([tx]) if at_payment else []
                stored, rings = await self.lookups((tx.tx_id, ring_keys))
            except Exception as exc:
                return fail_closed(tx, "redis", exc)
            if stored is not None:
                return await self._status_of(stored)
            produce = partial(self._produce, tx, value)
            try:
                produced = False
                if at_payment:
                    known = rings if ring_keys else None
                    produced, now = await self.decide_now(tx, produce, known)
                    if now is not None:  # just decided: no ledger change yet
                        return rebate_status(now, None)
                if not produced:
                    await produce()
            except Exception as exc:
                return fail_closed(tx, "broker", exc)
            while not decided.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return fail_closed(tx, "timeout", None)
                await asyncio.wait([decided], timeout=min(left, SCORE_POLL_S))
                if decided.done():
                    break
                try:
                    status = await self._stored_status(tx.tx_id)
                except Exception as exc:
                    return fail_closed(tx, "redis", exc)
                if status is not None:
                    return status
            return await self._status_of(decided.result())
        finally:
            self.waiters.remove(tx.tx_id, decided)

    async def _produce(self, tx: Transaction, value: bytes) -> None:
        await self.sink.send_one(self.settings.topic(TRANSACTIONS), tx.user_id.encode(), value)

    async def _status_of(self, value: bytes) -> RebateStatus:
        decision = Decision.loads(value)
        try:
            ledger = await self.store.get_ledger(decision.tx_id)
        except Exception:  # the decision stands; only the ledger's later changes are unknown
            ledger = None
        return rebate_status(decision, ledger)

    async def _stored_status(self, tx_id: str) -> RebateStatus | None:
        found = await self.store.get_many([tx_id])
        if tx_id not in found:
            return None
        return await self._status_of(found[tx_id])
