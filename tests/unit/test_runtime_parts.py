"""The parts `Runtime` is composed of, each alone and broker-free: admission and failing
closed (whose decision the decision core makes), `POST /score`'s requests and their
waiters, the policy watcher and the checkpoint writer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from rebate_guard.contract.records import Decision, Transaction
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.decider import FAIL_CLOSED_MODEL, fail_closed_decision
from rebate_guard.core.policy import FAILED_CLOSED, Policy
from rebate_guard.settings import Settings
from streams.admission import Admission
from streams.batch import Counters
from streams.checkpoint_writer import CheckpointWriter
from streams.policy_watch import PolicyWatcher
from streams.registry import ShardRegistry, user_unit
from streams.retry import Retrying
from streams.score_requests import DecisionWaiters, ScoreRequests
from streams.shards import load_checkpoint
from streams.sink import MemorySink
from streams.store import MemoryDecisionStore, RingKey
from tests.factories import decision, tx


# --- failing closed -------------------------------------------------------------------------
def test_a_fail_closed_decision_grants_nothing_and_says_which_part_failed() -> None:
    payment = parse_transaction(tx("t1", amount_cents=10_000, rebate_rate=0.05))
    made = fail_closed_decision(
        payment, "redis", action="block", policy_version="p-3", decided_at=42
    )
    assert (made.action, made.rebate_granted_cents, made.rebate_requested_cents) == (
        "block",
        0,
        500,
    )
    assert made.reasons == ["fail_closed:redis"] and made.threshold_version == FAILED_CLOSED
    assert (made.risk, made.trust_weight, made.policy_version) == (1.0, 0.0, "p-3")
    refund = parse_transaction(tx("r1", kind="refund", ref_tx_id="t1", amount_cents=10_000))
    made = fail_closed_decision(refund, "broker", action="hold", policy_version="p", decided_at=0)
    assert made.rebate_requested_cents == 0  # a refund earns no rebate
    assert FAIL_CLOSED_MODEL == "fail_closed:model"


def _admission(limit: int = 0) -> Admission:
    settings = Settings(score_max_in_flight=limit, fail_closed_action="hold")
    return Admission(settings, counters=Counters(), policy_version=lambda: "v7", clock=lambda: 3.0)


def test_admission_turns_requests_away_past_the_limit_while_they_are_in_flight() -> None:
    admission = _admission(limit=2)
    with admission.admitted():
        assert not admission.full
        with admission.admitted():
            assert admission.full and admission.in_flight == 2
    assert not admission.full and admission.in_flight == 0
    assert not _admission(limit=0).full  # no limit


def test_admission_answers_provisional_and_counts_why() -> None:
    admission = _admission()
    payment = parse_transaction(tx("t1"))
    shed = admission.overloaded(payment, None)
    failed = admission.overloaded(payment, ConnectionError("broker down"))
    assert shed.provisional and shed.decision.reasons == ["fail_closed:overload"]
    assert failed.decision.reasons == ["fail_closed:broker"]
    assert shed.decision.decided_at == 3_000 and shed.decision.policy_version == "v7"
    assert (admission.counters.overload, admission.counters.fail_closed) == (2, 2)


# --- POST /score's requests -----------------------------------------------------------------
def test_waiters_wake_with_the_standing_decision_and_are_forgotten() -> None:
    async def run() -> None:
        waiters = DecisionWaiters()
        first, second = waiters.add("t1"), waiters.add("t1")
        waiters.wake({"t1": b"{}", "t2": b"{}"})
        assert first.result() == b"{}" and second.result() == b"{}"
        waiters.remove("t1", first)
        assert list(waiters.waiting) == ["t1"]
        waiters.remove("t1", second)
        assert waiters.waiting == {}

    asyncio.run(run())


def _requests(
    store: MemoryDecisionStore, decide_now: Any = None, **settings: Any
) -> tuple[ScoreRequests, MemorySink, DecisionWaiters]:
    config = Settings(**{"topic_prefix": "p.", "score_at_payment": False, **settings})
    sink, waiters = MemorySink(), DecisionWaiters()

    async def left_to_stream(
        tx: Transaction, produce: Any, rings: dict[RingKey, Any] | None
    ) -> tuple[bool, Decision | None]:
        return False, None

    requests = ScoreRequests(
        config,
        store,
        sink,
        admission=Admission(config, counters=Counters(), policy_version=lambda: "v"),
        waiters=waiters,
        decide_now=decide_now or left_to_stream,
        ring_keys=lambda ready: [],
    )
    return requests, sink, waiters


def test_a_request_is_answered_with_the_stored_decision_without_producing() -> None:
    store = MemoryDecisionStore()
    stored = decision("t1", "scale")
    store.decisions["t1"] = stored.dumps()
    requests, sink, waiters = _requests(store)
    answer = asyncio.run(requests.score(parse_transaction(tx("t1")), b"{}", 1.0))
    assert answer.decision == stored and not answer.provisional
    assert "p.transactions" not in sink.sent and waiters.waiting == {}


def test_a_request_produces_its_transaction_and_wakes_when_it_is_decided() -> None:
    requests, sink, waiters = _requests(MemoryDecisionStore())
    made = decision("t1", "allow")

    async def run() -> None:
        answer = asyncio.ensure_future(requests.score(parse_transaction(tx("t1")), b"v", 5.0))
        while "p.transactions" not in sink.sent:
            await asyncio.sleep(0.001)
        assert sink.sent["p.transactions"] == [(b"u1", b"v")]
        waiters.wake({"t1": made.dumps()})
        status = await answer
        assert status.decision == made and not status.provisional

    asyncio.run(run())


def test_a_request_not_decided_in_time_fails_closed() -> None:
    requests, _, _ = _requests(MemoryDecisionStore())
    answer = asyncio.run(requests.score(parse_transaction(tx("t1")), b"v", 0.01))
    assert answer.provisional and answer.decision.reasons == ["fail_closed:timeout"]


def test_a_request_decided_at_payment_time_is_answered_at_once() -> None:
    made = decision("t1", "hold")

    async def decide_now(tx: Transaction, produce: Any, rings: Any) -> tuple[bool, Decision]:
        await produce()
        return True, made

    requests, sink, _ = _requests(MemoryDecisionStore(), decide_now, score_at_payment=True)
    answer = asyncio.run(requests.score(parse_transaction(tx("t1")), b"v", 5.0))
    assert answer.decision == made and len(sink.sent["p.transactions"]) == 1


class _CountedReads(MemoryDecisionStore):
    """Counts the reads a request's first look-up makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def decision_and_rings(self, tx_id, keys):  # type: ignore[no-untyped-def]
        self.reads.append("decision_and_rings")
        return await super().decision_and_rings(tx_id, keys)

    async def get_many(self, tx_ids):  # type: ignore[no-untyped-def]
        self.reads.append("get_many")
        return await super().get_many(tx_ids)

    async def get_ring_scores(self, keys):  # type: ignore[no-untyped-def]
        self.reads.append("get_ring_scores")
        return await super().get_ring_scores(keys)


def test_requests_arriving_together_are_looked_up_together() -> None:
    """Each gets its own stored decision (if any) and its own ring scores, from two reads
    for all of them; a lone request makes one."""
    store = _CountedReads()
    stored = decision("t1", "scale")
    store.decisions["t1"] = stored.dumps()
    store.ring_scores[("u", "u2")] = (0.9, "cluster", "r-1")
    store.ring_scores[("u", "u3")] = (0.4, "cluster", "r-2")
    seen: dict[str, Any] = {}

    async def decide_now(tx: Transaction, produce: Any, rings: Any) -> tuple[bool, Decision]:
        seen[tx.tx_id] = rings
        await produce()
        return True, decision(tx.tx_id, "allow")

    requests, _, _ = _requests(store, decide_now, score_at_payment=True)
    requests.ring_keys = lambda ready: [("u", t.user_id) for t in ready]

    async def run() -> list[Any]:
        payments = [parse_transaction(tx(f"t{i}", user_id=f"u{i}")) for i in (1, 2, 3)]
        return await asyncio.gather(*(requests.score(p, b"v", 5.0) for p in payments))

    answers = asyncio.run(run())
    assert answers[0].decision == stored and "t1" not in seen  # stored: not decided again
    assert seen == {
        "t2": {("u", "u2"): (0.9, "cluster", "r-1")},
        "t3": {("u", "u3"): (0.4, "cluster", "r-2")},
    }
    assert sorted(store.reads) == ["get_many", "get_ring_scores"]
    store.reads.clear()
    asyncio.run(requests.score(parse_transaction(tx("t4", user_id="u4")), b"v", 5.0))
    assert store.reads[0] == "decision_and_rings" and "get_many" not in store.reads


# --- the policy watcher ---------------------------------------------------------------------
def _watcher(store: MemoryDecisionStore) -> tuple[PolicyWatcher, list[Policy]]:
    applied: list[Policy] = [Settings().policy()]
    watcher = PolicyWatcher(
        store, current=lambda: applied[-1], apply=applied.append, lock=asyncio.Lock()
    )
    return watcher, applied


def test_the_watcher_seeds_redis_with_the_starting_policy_then_takes_new_ones() -> None:
    store = MemoryDecisionStore()
    watcher, applied = _watcher(store)
    asyncio.run(watcher.refresh())
    assert store.policy is not None and len(applied) == 1
    assert watcher.status["source"] == "redis"
    store.policy = dataclasses.replace(applied[0], version="v2").to_json().encode()
    asyncio.run(watcher.refresh())
    assert [p.version for p in applied][-1] == "v2" and watcher.status["version"] == "v2"


def test_the_watcher_rejects_an_invalid_policy_and_keeps_the_current_one() -> None:
    store = MemoryDecisionStore()
    watcher, applied = _watcher(store)
    broken = json.loads(applied[0].to_json())
    broken["version"] = ""
    store.policy = json.dumps(broken).encode()
    asyncio.run(watcher.refresh())
    assert len(applied) == 1 and "version" in watcher.status["rejected"]


# --- the checkpoint writer ------------------------------------------------------------------
def test_the_writer_saves_every_shard_then_acknowledges_what_it_covers() -> None:
    store, counters = MemoryDecisionStore(), Counters()
    shards = ShardRegistry(Settings(partitions=1, graph=False), clock=lambda: 0.0)
    writer = CheckpointWriter(
        shards,
        store,
        shards.settings,
        lock=asyncio.Lock(),
        retry=Retrying(counters),
        counters=counters,
    )
    acked: list[str] = []
    writer.ack = acked.append
    writer.hold(["m1", "m2"])
    asyncio.run(writer.checkpoint())
    assert store.checkpoints == {} and acked == []  # nothing owned: nothing to cover
    shards.install(user_unit(0), None)
    asyncio.run(writer.handover())
    assert set(store.checkpoints) == {"user-0"} and acked == ["m1", "m2"]
    assert counters.checkpoints == 1 and writer.held == []
    assert type(load_checkpoint(store.checkpoints["user-0"])).__name__ == "UserShard"
