"""The batch processor with in-memory store and sink: idempotency, dead letters, ordering."""

import asyncio
import json

from rebate_guard.scoring import Scorer
from rebate_guard.settings import Settings
from streams.processor import BatchProcessor, RawEvent
from streams.records import Decision
from streams.sink import MemorySink
from streams.store import MemoryDecisionStore
from tests.factories import T0, signup, tx


def raw(topic: str, offset: int, payload: dict | bytes) -> RawEvent:
    value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawEvent(topic=topic, partition=0, offset=offset, key=b"k", value=value)


def make() -> tuple[BatchProcessor, MemoryDecisionStore, MemorySink]:
    store, sink = MemoryDecisionStore(), MemorySink()
    return BatchProcessor(Scorer(), store, sink, Settings(topic_prefix="p.")), store, sink


def test_every_transaction_gets_exactly_one_stored_decision() -> None:
    proc, store, sink = make()
    batch = [raw("p.transactions", i, tx(f"t{i}", T0 + i)) for i in range(5)]
    outcome = asyncio.run(proc.handle("transactions", batch))
    assert outcome.decided == 5
    assert set(store.decisions) == {f"t{i}" for i in range(5)}
    produced = [Decision.loads(v).tx_id for _, v in sink.sent["p.decisions"]]
    assert sorted(produced) == [f"t{i}" for i in range(5)]
    assert store.counters["decisions"] == 5


def test_a_redelivered_batch_is_answered_with_the_stored_decisions_and_grants_nothing_new() -> None:
    proc, store, sink = make()
    batch = [raw("p.transactions", i, tx(f"t{i}", T0 + i)) for i in range(3)]
    asyncio.run(proc.handle("transactions", batch))
    first = dict(store.decisions)
    granted = store.counters["rebate_granted_cents"]
    again = asyncio.run(proc.handle("transactions", batch))
    assert again.decided == 0 and again.redelivered == 3
    assert store.decisions == first
    assert store.counters["rebate_granted_cents"] == granted
    # Re-produced decisions are byte-identical to the stored ones.
    assert sink.sent["p.decisions"][3:] == sink.sent["p.decisions"][:3]


def test_a_decision_stored_by_another_worker_wins_over_ours() -> None:
    proc, store, sink = make()
    other = Decision(
        tx_id="t1",
        ts=T0,
        user_id="u1",
        merchant_id="m1",
        risk=0.9,
        trust_weight=0.1,
        action="block",
        rebate_requested_cents=1000,
        rebate_granted_cents=0,
        reasons=["x"],
        model_version="v",
        decided_at=1,
    )
    real_get = store.get_many

    async def race(tx_ids):  # the other worker stores between our read and our write
        found = await real_get(tx_ids)
        store.decisions["t1"] = other.dumps()
        return found

    store.get_many = race  # type: ignore[method-assign]
    asyncio.run(proc.handle("transactions", [raw("p.transactions", 0, tx("t1"))]))
    assert sink.sent["p.decisions"] == [(b"t1", other.dumps())]


def test_repeats_inside_one_batch_are_scored_once() -> None:
    proc, store, _ = make()
    batch = [raw("p.transactions", i, tx("same", T0)) for i in range(3)]
    outcome = asyncio.run(proc.handle("transactions", batch))
    assert outcome.decided == 1 and store.counters["decisions"] == 1
    assert len(proc.scorer.features.user.activity["u1"].payments) == 1


def test_bad_events_go_to_the_dead_letter_topic_and_good_ones_still_flow() -> None:
    proc, store, sink = make()
    batch = [
        raw("p.transactions", 0, b"not json"),
        raw("p.transactions", 1, tx("ok")),
        raw("p.transactions", 2, tx("neg", amount_cents=-5)),
    ]
    outcome = asyncio.run(proc.handle("transactions", batch))
    assert outcome.decided == 1 and outcome.dead_letters == 2
    letters = [json.loads(v) for _, v in sink.sent["p.dead-letters"]]
    assert [(d["offset"], d["topic"]) for d in letters] == [
        (0, "p.transactions"),
        (2, "p.transactions"),
    ]
    assert "not valid JSON" in letters[0]["reason"] and letters[0]["payload"] == "not json"
    assert "must be positive" in letters[1]["reason"]
    # Counting is idempotent by position, like decisions by tx_id.
    asyncio.run(proc.handle("transactions", batch))
    assert store.counters["dead_letters"] == 2


def test_signups_feed_state_used_by_later_transactions() -> None:
    proc, _, _ = make()
    asyncio.run(proc.handle("signups", [raw("p.signups", 0, signup("u1", T0 - 1000))]))
    asyncio.run(proc.handle("transactions", [raw("p.transactions", 0, tx("t", T0))]))
    assert proc.scorer.features.user.profiles["u1"].signup_ts == T0 - 1000


def test_storage_failures_are_retried_not_dropped() -> None:
    proc, store, _ = make()
    proc.retry_base_s = 0.001
    real_put = store.put_new
    failures = {"left": 2}

    async def flaky(items):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("redis went away")
        return await real_put(items)

    store.put_new = flaky  # type: ignore[method-assign]
    outcome = asyncio.run(proc.handle("transactions", [raw("p.transactions", 0, tx("t"))]))
    assert outcome.decided == 1 and proc.counters.retries == 2
    assert "t" in store.decisions
