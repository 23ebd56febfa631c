"""The batch processor with in-memory store and sink (its shards talk in-process: the
sink's loopback): idempotency, dead letters, event-time order across topics and partitions, and
exact resumption from checkpoints."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rebate_guard.contract.records import Decision, FeatureVector
from rebate_guard.core.policy import Policy
from rebate_guard.settings import Settings
from streams.batch import BatchOutcome, RawEvent
from streams.console.store import ConsoleStore
from streams.processor import BatchProcessor
from streams.registry import entity_unit, user_unit
from streams.shards.wire import REQUESTER
from streams.sink import MemorySink
from streams.store import MemoryDecisionStore
from tests.factories import HOUR, T0, label, signup, tx

IDLE_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def raw(topic: str, offset: int, payload: dict[str, Any] | bytes, partition: int = 0) -> RawEvent:
    value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawEvent(topic=topic, partition=partition, offset=offset, key=b"k", value=value)


def make(
    store: MemoryDecisionStore | None = None,
    *,
    console: ConsoleStore | None = None,
    **settings: Any,
) -> tuple[BatchProcessor, MemoryDecisionStore, MemorySink]:
    store, sink = store or MemoryDecisionStore(), MemorySink()
    defaults: dict[str, Any] = {"topic_prefix": "p.", "source_idle_s": IDLE_S, "partitions": 2}
    config = Settings(**{**defaults, "log_features": True, **settings})
    proc = BatchProcessor(store, sink, config, clock=Clock(), console=console, retry_base_s=0.001)
    proc.shards.own_all()
    return proc, store, sink


def payments_of(proc: BatchProcessor, user: str, partition: int = 0) -> int:
    return len(proc.users[partition].users.user.activity[user].payments)


def handle(proc: BatchProcessor, kind: str, batch: list[RawEvent]) -> BatchOutcome:
    return asyncio.run(proc.handle(kind, batch))


def drain(proc: BatchProcessor) -> BatchOutcome:
    """Let every source fall idle, which releases whatever the aligner still holds."""
    assert isinstance(proc.clock, Clock)
    proc.clock.now += IDLE_S + 1
    return asyncio.run(proc.tick())


def test_every_transaction_gets_exactly_one_stored_decision() -> None:
    proc, store, sink = make()
    batch = [raw("p.transactions", i, tx(f"t{i}", T0 + i)) for i in range(5)]
    handle(proc, "transactions", batch)
    assert drain(proc).decided == 5
    assert set(store.decisions) == {f"t{i}" for i in range(5)}
    produced = [Decision.loads(v).tx_id for _, v in sink.sent["p.decisions"]]
    assert produced == [f"t{i}" for i in range(5)]  # in event-time order
    assert store.counters["decisions"] == 5
    vectors = [json.loads(v) for _, v in sink.sent["p.features"]]
    assert [v["tx_id"] for v in vectors] == produced
    assert vectors[4]["features"]["user_tx_count_24h"] == 4


def test_offsets_already_in_the_state_are_skipped_and_grant_nothing() -> None:
    proc, store, _ = make()
    batch = [raw("p.transactions", i, tx(f"t{i}", T0 + i)) for i in range(3)]
    handle(proc, "transactions", batch)
    drain(proc)
    first, granted = dict(store.decisions), store.counters["rebate_granted_cents"]
    again = handle(proc, "transactions", batch)
    assert again.skipped == 3 and again.decided == 0 and drain(proc).decided == 0
    assert store.decisions == first and store.counters["rebate_granted_cents"] == granted
    assert payments_of(proc, "u1") == 3


def test_a_second_message_for_a_tx_id_gets_the_first_decision_and_changes_no_state() -> None:
    proc, _, sink = make()
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t1", T0))])
    drain(proc)
    handle(proc, "transactions", [raw("p.transactions", 1, tx("t1", T0, amount_cents=999))])
    outcome = drain(proc)
    assert outcome.decided == 0 and outcome.redelivered == 1
    assert sink.sent["p.decisions"][1] == sink.sent["p.decisions"][0]
    assert payments_of(proc, "u1") == 1


def test_a_decision_already_in_redis_stands_over_a_recomputed_one() -> None:
    store = MemoryDecisionStore()
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
    store.decisions["t1"] = other.dumps()  # e.g. stored before a crash
    proc, _, sink = make(store)
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t1"))])
    drain(proc)
    assert sink.sent["p.decisions"] == [(b"t1", other.dumps())]


def test_repeats_inside_one_batch_are_scored_once() -> None:
    proc, store, _ = make()
    handle(proc, "transactions", [raw("p.transactions", i, tx("same", T0)) for i in range(3)])
    outcome = drain(proc)
    assert outcome.decided == 1 and outcome.redelivered == 2 and store.counters["decisions"] == 1
    assert payments_of(proc, "u1") == 1


def test_bad_events_go_to_the_dead_letter_topic_and_good_ones_still_flow() -> None:
    proc, store, sink = make()
    batch = [
        raw("p.transactions", 0, b"not json"),
        raw("p.transactions", 1, tx("ok")),
        raw("p.transactions", 2, tx("neg", amount_cents=-5)),
    ]
    assert handle(proc, "transactions", batch).dead_letters == 2
    assert drain(proc).decided == 1
    letters = [json.loads(v) for _, v in sink.sent["p.dead-letters"]]
    assert [(d["offset"], d["topic"]) for d in letters] == [
        (0, "p.transactions"),
        (2, "p.transactions"),
    ]
    assert "not valid JSON" in letters[0]["reason"] and letters[0]["payload"] == "not json"
    assert "must be positive" in letters[1]["reason"]
    assert store.counters["dead_letters"] == 2


def test_a_signup_arriving_after_the_payment_in_wall_time_still_counts_in_event_time() -> None:
    proc, _, sink = make()
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t", T0))])
    assert "p.decisions" not in sink.sent  # held: the signups partition has not spoken yet
    handle(proc, "signups", [raw("p.signups", 0, signup("u1", T0 - 1000))])
    drain(proc)
    features = json.loads(sink.sent["p.features"][0][1])["features"]
    assert features["user_account_age_s"] == 1.0


def test_storage_failures_are_retried_not_dropped() -> None:
    proc, store, _ = make()  # retrying after 1 ms
    real_put = store.put_new
    failures = {"left": 2}

    async def flaky(items: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("redis went away")
        return await real_put(items)

    store.put_new = flaky  # type: ignore[method-assign]
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t"))])
    assert drain(proc).decided == 1 and proc.counters.retries == 2
    assert "t" in store.decisions


def _traffic() -> list[tuple[str, RawEvent]]:
    """Two partitions of transactions and points granted, and one of signups, interleaved
    and batch-shaped."""
    out: list[tuple[str, RawEvent]] = []
    for i in range(40):
        user = f"u{i % 5}"
        if i < 5:
            out.append(("signups", raw("p.signups", i, signup(user, T0 - HOUR + i))))
        part = i % 2
        payload = tx(f"t{i}", T0 + i * 60_000, user_id=user, merchant_id=f"m{i % 3}")
        out.append(("transactions", raw("p.transactions", i // 2, payload, part)))
        if i % 4 == 0:
            grant = points_grant(f"g{i}", T0 + i * 60_000 + 1, user, 100 + i)
            at = raw("p.platform-events", i // 8, grant, (i // 4) % 2)
            out.append(("platform-events", at))
    return out


def points_grant(event_id: str, ts: int, user: str, cents: int) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": ts,
        "kind": "points_grant",
        "amount_cents": cents,
        "user_id": user,
        "merchant_id": "m1",
        "region": "east",
    }


def _run(proc: BatchProcessor, traffic: list[tuple[str, RawEvent]], batch: int) -> None:
    for start in range(0, len(traffic), batch):
        chunk = traffic[start : start + batch]
        for kind in ("signups", "platform-events", "transactions"):
            items = [r for k, r in chunk if k == kind]
            if items:
                handle(proc, kind, items)


def _features(sink: MemorySink) -> dict[str, bytes]:
    return {k.decode(): v for k, v in sink.sent.get("p.features", []) if k is not None}


def test_batch_boundaries_do_not_change_any_feature() -> None:
    results = []
    for batch in (1, 7, 100):
        proc, _, sink = make(allowed_lateness_ms=0)
        _run(proc, _traffic(), batch)
        drain(proc)
        results.append(_features(sink))
    assert len(results[0]) == 40 and results[0] == results[1] == results[2]


def test_restoring_a_checkpoint_and_rereading_from_its_offsets_is_exact() -> None:
    traffic = _traffic()
    whole, whole_store, whole_sink = make(allowed_lateness_ms=0)
    _run(whole, traffic, 5)
    drain(whole)

    store = MemoryDecisionStore()
    first, _, first_sink = make(store, allowed_lateness_ms=0)
    _run(first, traffic[:20], 5)
    snapshots, written = first.shards.checkpoints()
    blobs = {unit: snapshot() for unit, snapshot in snapshots.items()}
    written()
    _run(first, traffic[20:30], 5)  # processed, then lost in a crash: not in the checkpoint

    resumed, _, resumed_sink = make(store, allowed_lateness_ms=0)
    for unit, blob in blobs.items():
        resumed.shards.install(unit, blob)
    # Input is re-read from the checkpoint's offsets (earlier ones too, as a broker may).
    _run(resumed, traffic, 5)
    drain(resumed)
    assert set(blobs) == {"user-0", "user-1", "entity-0", "entity-1", "graph-0", "solvency-0"}
    assert resumed.users[0].next_offset[0] > 0 and resumed.users[1].next_offset[0] > 0
    before, after = _features(first_sink), _features(resumed_sink)
    assert all(after[t] == v for t, v in before.items() if t in after)  # re-decided: identical
    assert {**before, **after} == _features(whole_sink)
    # Nothing was granted twice: one stored decision per transaction, and in the books.
    assert len(store.decisions) == 40 and store.counters["decisions"] == 40
    granted = sum(Decision.loads(v).rebate_granted_cents for v in store.decisions.values())
    points = sum(100 + i for i in range(0, 40, 4))
    platform = json.loads(store.solvency_current["platform"])
    assert platform["liability_cents"] == granted + points
    assert store.solvency_current == whole_store.solvency_current


def test_feature_vectors_are_valid_records_of_the_contract() -> None:
    proc, _, sink = make()
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t1", T0))])
    drain(proc)
    ((key, value),) = sink.sent["p.features"]
    record = FeatureVector.loads(value)
    assert key == b"t1" and record.tx_id == "t1" and record.ts == T0
    assert record.features["amount_cents"] == 10_000 and record.features["is_night"] == 1  # 00:00


def test_event_time_status_shows_what_waits_behind_the_watermark() -> None:
    proc, _, _ = make(allowed_lateness_ms=0)
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t1", T0))])
    before = proc.reports.event_time()
    assert before == {
        "watermark": None,
        "pending": 1,
        "sources": 8,
        "idle_sources": 0,
        "late": 0,
        "late_by_stage": {"user": 0, "entity": 0, "graph": 0, "solvency": 0},
    }
    handle(proc, "signups", [raw("p.signups", 0, signup("u1", T0 + 5))])
    handle(proc, "labels", [raw("p.labels", 0, label("x", T0 + 9))])
    assert proc.reports.event_time()["watermark"] is None  # platform events may still come
    handle(
        proc, "platform-events", [raw("p.platform-events", 0, points_grant("g", T0 + 7, "u1", 5))]
    )
    after = proc.reports.event_time()
    assert after["watermark"] == T0 and after["pending"] == 4  # all wait: ties may come
    drain(proc)
    drained = proc.reports.event_time()
    assert drained["pending"] == 0 and drained["idle_sources"] == 8


def test_a_silent_input_is_idle_only_once_caught_up() -> None:
    """Silence also happens while a restarted consumer has not begun fetching; idling such
    an input would let the others' events overtake its own, which would then be late."""
    proc, _, sink = make()
    behind = {"p.signups"}
    proc.caught_up = lambda topic, partition, offset: topic not in behind
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t", T0))])
    drain(proc)
    assert "p.decisions" not in sink.sent  # signups may still hold an earlier event
    assert proc.reports.event_time()["late"] == 0
    handle(proc, "signups", [raw("p.signups", 0, signup("u1", T0 - 1000))])
    behind.clear()
    drain(proc)
    features = json.loads(sink.sent["p.features"][0][1])["features"]
    assert features["user_account_age_s"] == 1.0 and proc.reports.event_time()["late"] == 0


def test_late_events_are_counted_by_the_stage_they_reached_late() -> None:
    proc, _, _ = make()
    handle(proc, "transactions", [raw("p.transactions", 0, tx("t", T0))])
    drain(proc)  # every input caught up and silent: event time moves past T0
    handle(proc, "signups", [raw("p.signups", 0, signup("u1", T0 - 1000))])
    drain(proc)
    late = proc.reports.event_time()
    assert late["late_by_stage"]["user"] == 1  # the signup, behind its shard's event time
    assert late["late_by_stage"]["entity"] >= 1  # and its device, IP, referrer requests
    assert late["late"] == sum(late["late_by_stage"].values())


def test_model_state_and_drift_are_reported_per_shard() -> None:
    proc, _, _ = make()
    handle(proc, "transactions", [raw("p.transactions", i, tx(f"t{i}", T0 + i)) for i in range(3)])
    drain(proc)
    models = proc.reports.models()
    assert set(models) == {"user-0", "user-1"}
    assert models["user-0"]["version"] == "risk.l0.t3"  # 3 transactions learned, no label
    assert models["user-0"]["score_drifts"] == 0 and models["user-1"]["version"] == "risk.l0.t0"


def test_each_user_shards_friction_budget_is_reported() -> None:
    proc, _, _ = make()
    handle(proc, "transactions", [raw("p.transactions", i, tx(f"t{i}", T0 + i)) for i in range(3)])
    drain(proc)
    budgets = proc.reports.budgets()
    assert set(budgets) == {"user-0", "user-1"}
    assert budgets["user-0"]["mode"] == "budget"  # the shipped policy
    assert budgets["user-0"]["groups"]["*"]["cut"] is None  # fewer than min_payments yet
    assert json.loads(json.dumps(budgets)) == budgets


def _without_the_graph_shard(store: MemoryDecisionStore) -> tuple[BatchProcessor, MemorySink]:
    """A worker owning user and entity shards while the graph shard runs elsewhere: the
    entity stage's envelopes are carried between the stages by hand, as a broker would."""
    sink = MemorySink(loopback=False)
    config = Settings(topic_prefix="p.", source_idle_s=IDLE_S, partitions=1)
    proc = BatchProcessor(store, sink, config, clock=Clock())
    proc.shards.install(user_unit(0), None)
    proc.shards.install(entity_unit(0), None)
    return proc, sink


def _decide_through_the_stages(proc: BatchProcessor, sink: MemorySink, payment: RawEvent) -> None:
    handle(proc, "transactions", [payment])
    drain(proc)
    requests = sink.to_partitions.pop("p.entity-requests")
    first = proc.shards.entities[0].next_offset
    batch = [RawEvent("r", q, first + i, None, v) for i, (q, v) in enumerate(requests)]
    asyncio.run(proc.handle_requests(batch))
    results = sink.to_partitions.pop("p.entity-results")
    first = proc.users[0].next_result_offset
    batch = [RawEvent("s", p, first + i, None, v) for i, (p, v) in enumerate(results)]
    asyncio.run(proc.handle_results(batch))


def test_decisions_fail_closed_while_the_graph_shard_is_not_running() -> None:
    """With the graph shard on another worker, ring scores come from Redis; while that
    shard shows no sign of running (no heartbeat within RG_GRAPH_STALE_AFTER_S) a payment
    is held, not allowed without its ring check, and decisions recover once it beats."""
    store = MemoryDecisionStore()
    proc, sink = _without_the_graph_shard(store)
    assert isinstance(proc.clock, Clock)
    stale_after = proc.settings.graph_stale_after_s

    def decided(tx_id: str, offset: int) -> Decision:
        _decide_through_the_stages(
            proc, sink, raw("p.transactions", offset, tx(tx_id, T0 + offset))
        )
        return Decision.loads(store.decisions[tx_id])

    never = decided("t0", 0)  # no heartbeat ever
    assert (never.action, never.rebate_granted_cents) == ("hold", 0)
    assert never.reasons[0] == "fail_closed:graph"

    asyncio.run(store.put_graph_heartbeat(int(proc.clock.now * 1000)))
    running = decided("t1", 1)
    assert "fail_closed:graph" not in running.reasons and running.rebate_granted_cents > 0

    proc.clock.now += stale_after + 1  # the graph shard's worker stopped beating
    stale = decided("t2", 2)
    assert stale.action == "hold" and stale.reasons[0] == "fail_closed:graph"
    assert proc.users[0].decider.graph_failures == 2
    proc.set_policy(Policy.from_document({"version": "b", "lists": {"block_users": ["u1"]}}))
    blocked = decided("t3", 3)  # failing closed never loosens a block
    assert blocked.action == "block" and "blocklist:user" in blocked.reasons


def _platform(event_id: str, ts: int, kind: str, cents: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "ts": ts, "kind": kind, "amount_cents": cents} | fields


def test_a_points_request_is_weighed_with_its_requesters_published_ring() -> None:
    """The worker reads the ring score the graph shard published for each points request's
    user, as for a payment's: a ring member's voucher is held, another user's allowed."""
    proc, store, _ = make(partitions=1)
    for key in (("u", "u1"), (REQUESTER, "u1")):  # as the graph shard puts them
        store.ring_scores[key] = (0.9, "brushing", "r-1")
    events = [
        points_grant("g1", T0, "u1", 10_000),
        points_grant("g2", T0 + 1, "u2", 10_000),
        _platform("r1", T0 + 2, "points_redeem", 300, user_id="u1", merchant_id="m1"),
        _platform("r2", T0 + 3, "points_redeem", 300, user_id="u2", merchant_id="m1"),
    ]
    handle(proc, "platform-events", [raw("p.platform-events", i, e) for i, e in enumerate(events)])
    drain(proc)
    member, other = Decision.loads(store.decisions["r1"]), Decision.loads(store.decisions["r2"])
    assert (member.action, member.reasons) == ("hold", ["requester_in_ring"])
    assert (other.action, other.rebate_granted_cents) == ("allow", 300)


def test_platform_events_are_validated_decided_once_and_move_the_books() -> None:
    """Bad platform events are dead letters; points requests get one stored decision each
    (a withdrawal is always blocked), a redelivered one is answered with it, and every event
    moves the books once: the solvency shard's readings, alerts and running figures."""
    proc, store, sink = make(partitions=1)
    events = [
        points_grant("g1", T0, "u1", 10_000),
        _platform("w1", T0 + 1, "points_withdraw", 100, user_id="u1"),
        _platform("r1", T0 + 2, "points_redeem", 300, user_id="u1", merchant_id="m1"),
        _platform("bad", T0 + 3, "points_transfer", 5, user_id="u1"),  # to no one
        _platform("s1", T0 + 2 * HOUR, "merchant_settlement", 90_000, merchant_id="m1"),
    ]
    batch = [raw("p.platform-events", i, e) for i, e in enumerate(events)]
    batch.append(raw("p.platform-events", len(events), b"{broken"))
    outcome = handle(proc, "platform-events", batch)
    assert outcome.dead_letters == 2
    drain(proc)
    reasons = [json.loads(v)["reason"] for _, v in sink.sent["p.dead-letters"]]
    assert "needs 'counterparty_id'" in reasons[0] and "not valid JSON" in reasons[1]
    withdraw, redeem = Decision.loads(store.decisions["w1"]), Decision.loads(store.decisions["r1"])
    assert (withdraw.action, withdraw.reasons) == ("block", ["policy:points_not_withdrawable"])
    assert (redeem.action, redeem.rebate_granted_cents) == ("allow", 300)
    again = handle(proc, "platform-events", [raw("p.platform-events", 9, events[1])])
    drain(proc)
    assert again.redelivered == 1 and len(store.decisions) == 2
    produced = [(k, v) for k, v in sink.sent["p.decisions"]]
    assert [k for k, _ in produced] == [b"w1", b"r1", b"w1"] and produced[0] == produced[2]
    platform = json.loads(store.solvency_current["platform"])
    assert (platform["liability_cents"], platform["payouts_cents"]) == (10_000 - 300, 300)
    # The first hour owed points with nothing paid in: critical, closed once event time
    # passed it (the settlement's hour is still open).
    alerts = [json.loads(a) for a in store.alerts]
    assert [(a["alert_id"], a["previous_level"]) for a in alerts] == [
        # merchant:m1 is read (below) but alerts only with `alert_merchants`.
        (f"{scope}:critical:{T0}", "ok")
        for scope in ("platform", "region:east")
    ]
    assert [json.loads(v)["alert_id"] for _, v in sink.sent["p.platform-alerts"]] == [
        a["alert_id"] for a in alerts
    ]
    series = [json.loads(r) for r in store.solvency_series["platform"]]
    assert [r["period_start"] for r in series] == [T0]
    assert json.loads(store.solvency_latest["platform"]) == series[-1]
    readings = [json.loads(v) for k, v in sink.sent["p.solvency"]]
    assert {r["scope"] for r in readings} >= {"platform", "region:east", "merchant:m1"}
    assert json.loads(store.solvency_current["platform"])["merchant_funding_cents"] == 90_000
