"""The parts `BatchProcessor` is composed of, each alone and broker-free: the shard
registry, the shards' reports, retrying, the publisher, the graph's status, the
payment-time decider's bookkeeping and the memory sink's loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from rebate_guard.contract.records import Decision
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.settings import Settings
from streams.batch import BatchOutcome, Counters, RawEvent
from streams.graph_status import GraphStatus
from streams.payment_time import PaymentTimeDecider, in_flight_keys
from streams.publisher import Publisher
from streams.registry import ShardRegistry, entity_unit, graph_unit, solvency_unit, user_unit
from streams.retry import Retrying
from streams.shard_reports import ShardReports
from streams.shards import Completed
from streams.shards.wire import REQUESTER
from streams.sink import MemorySink, key_partition
from streams.store import MemoryDecisionStore
from tests.factories import decision, tx


def _registry(own_missing: bool = False, **settings: Any) -> ShardRegistry:
    config = Settings(**{"topic_prefix": "p.", "partitions": 2, **settings})
    return ShardRegistry(config, clock=lambda: 100.0, own_missing=own_missing)


# --- the shard registry --------------------------------------------------------------------
def test_the_registry_installs_releases_and_restores_shards_by_unit() -> None:
    shards = _registry()
    shards.own_all()
    assert sorted(shards.units()) == sorted(
        [
            user_unit(0),
            user_unit(1),
            entity_unit(0),
            entity_unit(1),
            graph_unit(0),
            solvency_unit(0),
        ]
    )
    assert shards.heard[(0, 3)] == 100.0  # a new user shard has just heard every input
    assert shards.release([user_unit(1), entity_unit(0), solvency_unit(0)]) == [1]
    assert sorted(shards.units()) == [entity_unit(1), graph_unit(0), user_unit(0)]
    assert shards.user(1) is None and shards.solvency(0) is None  # not owned: not here

    snapshots, written = shards.checkpoints()
    assert set(snapshots) == set(shards.units())
    restored = _registry()
    restored.install(user_unit(0), snapshots[user_unit(0)]())
    assert restored.users[0].redo  # it may re-decide what came after its checkpoint
    with pytest.raises(TypeError, match="not an entity shard checkpoint"):
        restored.install(entity_unit(0), snapshots[user_unit(0)]())
    with pytest.raises(TypeError, match="not a solvency checkpoint"):
        restored.install(solvency_unit(0), snapshots[user_unit(0)]())
    user = shards.users[0]
    user.books.mark = 1_767_225_600_000  # where its books stood at the checkpoint
    snapshots, written = shards.checkpoints()
    user.books.mark += 60_000  # and moved on before the write was done
    written()
    assert user.durable_floor == user.floor()
    assert user.books.durable == 1_767_225_600_000  # the solvency shard may forget below it


def test_without_a_broker_the_registry_owns_every_partition_looked_up() -> None:
    shards = _registry(own_missing=True)
    assert shards.units() == []
    shard = shards.entity(1)
    assert shard is not None and shards.units() == [entity_unit(1)]
    assert shards.entity(1) is shard


def test_envelopes_carried_in_process_get_their_shards_next_offsets_in_order() -> None:
    shards = _registry(own_missing=True)
    assert shards.entity(0) is not None
    shards.entities[0].next_offset = 7
    messages = shards.at_next_offsets("entity-requests", [(0, b"a"), (1, b"b"), (0, b"c")])
    assert [(m.partition, m.offset, m.value) for m in messages] == [
        (0, 7, b"a"),
        (1, 0, b"b"),
        (0, 8, b"c"),
    ]


def test_a_new_policy_reaches_every_user_shard_and_those_installed_later() -> None:
    shards = _registry()
    shards.install(user_unit(0), None)
    shards.install(solvency_unit(0), None)
    lines = dataclasses.replace(shards.policy.solvency, warning_ratio=2.0)
    shards.set_policy(dataclasses.replace(shards.policy, version="next", solvency=lines))
    shards.install(user_unit(1), None)
    assert [s.decider.policy.version for s in shards.users.values()] == ["next", "next"]
    assert shards.solvencies[0].monitor.terms.warning_ratio == 2.0  # the books' lines too


def test_reports_read_the_shards_event_time_models_and_graph() -> None:
    shards = _registry()
    reports = ShardReports(shards)
    assert reports.event_time()["watermark"] is None and reports.graph_state() is None
    shards.own_all()
    assert set(reports.models()) == {user_unit(0), user_unit(1)}
    assert set(reports.budgets()) == {user_unit(0), user_unit(1)}
    graph = reports.graph_state()
    assert graph is not None and graph["unit"] == graph_unit(0) and graph["edges"] == 0


# --- retrying -------------------------------------------------------------------------------
def test_retrying_waits_out_failures_and_counts_them() -> None:
    counters = Counters()
    retry = Retrying(counters, base_s=0.001, max_s=0.002)
    failures = iter([ConnectionError("down"), ConnectionError("down"), None])

    async def call() -> str:
        failure = next(failures)
        if failure is not None:
            raise failure
        return "done"

    assert asyncio.run(retry("call", call)) == "done"
    assert counters.retries == 2


# --- the publisher --------------------------------------------------------------------------
def _publisher(**settings: Any) -> tuple[Publisher, MemoryDecisionStore, MemorySink, list[Any]]:
    store, sink = MemoryDecisionStore(), MemorySink(loopback=False)
    woken: list[dict[str, bytes]] = []
    config = Settings(**{"topic_prefix": "p.", **settings})
    publisher = Publisher(
        store,
        sink,
        config,
        retry=Retrying(Counters()),
        counters=Counters(),
        clock=lambda: 12.5,
        on_decided=woken.append,
    )
    return publisher, store, sink, woken


def test_the_publisher_stores_first_write_wins_and_produces_what_stands() -> None:
    publisher, store, sink, woken = _publisher()
    earlier = decision("t1", "hold")
    store.decisions["t1"] = earlier.dumps()
    done = Completed(
        decisions=[(decision("t1", "allow"), {}), (decision("t2", "allow"), {})],
        order=["t1", "t2"],
    )
    outcome = BatchOutcome()
    asyncio.run(publisher.decisions([done], outcome, set()))
    assert (outcome.decided, outcome.redelivered) == (1, 1)
    produced = {k: Decision.loads(v) for k, v in sink.sent["p.decisions"]}
    assert produced[b"t1"] == earlier and produced[b"t2"].action == "allow"
    assert woken == [{"t1": earlier.dumps(), "t2": produced[b"t2"].dumps()}]


def test_the_publisher_makes_counts_and_produces_dead_letters() -> None:
    publisher, store, sink, _ = _publisher()
    letter = publisher.dead_letter(RawEvent("p.transactions", 1, 9, None, b"{bad"), "not JSON")
    assert (letter.offset, letter.payload, letter.received_at) == (9, "{bad", 12_500)
    asyncio.run(publisher.dead_letters([letter]))
    assert store.dead == {("p.transactions", 1, 9)}
    assert json.loads(sink.sent["p.dead-letters"][0][1])["reason"] == "not JSON"


def test_the_publisher_counts_envelopes_and_sends_none_when_empty() -> None:
    publisher, _, sink, _ = _publisher()
    asyncio.run(publisher.send("entity-requests", []))
    asyncio.run(publisher.send("entity-requests", [(1, b"e")]))
    assert sink.to_partitions == {"p.entity-requests": [(1, b"e")]}
    assert publisher.counters.envelopes_sent == 1


# --- the graph's status ---------------------------------------------------------------------
def test_the_graph_runs_elsewhere_while_its_heartbeat_is_recent() -> None:
    shards, store, now = _registry(graph_stale_after_s=5.0), MemoryDecisionStore(), [1_000.0]
    status = GraphStatus(
        shards, store, shards.settings, retry=Retrying(Counters()), clock=lambda: now[0]
    )
    assert not asyncio.run(status.running())  # never beaten
    store.graph_beat_ms = 998_000
    assert asyncio.run(status.running())
    now[0] = 1_004.0
    assert not asyncio.run(status.running())
    shards.install(graph_unit(0), None)
    assert asyncio.run(status.running())  # here
    asyncio.run(status.beat())
    assert store.graph_beat_ms == 1_004_000
    payment = parse_transaction(tx("t1", user_id="u1", merchant_id="m1"))
    assert status.ring_keys([payment]) == [("m", "m1"), ("u", "u1")]
    # With the users of the points requests about to be decided: the ring their requests read.
    assert status.ring_keys([payment], ["u9", "u1"]) == [
        ("m", "m1"),
        (REQUESTER, "u1"),
        (REQUESTER, "u9"),
        ("u", "u1"),
    ]


# --- the payment-time decider's bookkeeping -------------------------------------------------
def _decider() -> tuple[PaymentTimeDecider, ShardRegistry, Counters]:
    shards, counters = _registry(graph=False), Counters()
    graph = GraphStatus(
        shards, MemoryDecisionStore(), shards.settings, retry=Retrying(counters), clock=lambda: 1.0
    )
    decider = PaymentTimeDecider(
        shards, MemoryDecisionStore(), graph=graph, counters=counters, clock=lambda: 1.0
    )
    return decider, shards, counters


async def _nothing() -> None:
    pass


def test_a_payment_whose_user_shard_is_elsewhere_is_left_to_the_stream() -> None:
    decider, _, counters = _decider()
    payment = parse_transaction(tx("p1"))
    assert asyncio.run(decider.decide(payment, _nothing)) == (False, None)
    assert counters.left_to_stream == {"not_here": 1} and decider.entries == {}


def test_a_payment_in_flight_holds_its_keys_until_the_stream_or_a_handover_settles_it() -> None:
    decider, shards, counters = _decider()
    payment = parse_transaction(tx("p1", device_id="d1"))
    partition = key_partition(b"u1", shards.n_partitions)
    shards.install(user_unit(partition), None)  # no entity shards here: left to the stream

    async def run() -> None:
        assert await decider.decide(payment, _nothing) == (True, None)
        assert counters.left_to_stream == {"not_here": 1}
        entry = decider.entries["p1"]
        assert set(decider.in_flight) == set(in_flight_keys(payment)) >= {"u:u1", "d:d1"}
        assert await decider.decided_among([payment]) == {}  # nothing decided here
        decider.released([partition])
        assert decider.entries == {} and decider.in_flight == {} and entry.settled.done()
        assert await decider.decide(payment, _nothing) == (True, None)
        decider.settle_all(["p1"])
        assert decider.entries == {} and decider.in_flight == {}

    asyncio.run(run())


def test_in_flight_keys_are_the_user_and_the_identifiers_present() -> None:
    payment = parse_transaction(tx("p1", user_id="u9", device_id=None, ip="1.2.3.4"))
    keys = in_flight_keys(payment)
    assert keys[0] == "u:u9" and "i:1.2.3.4" in keys and not any(k.startswith("d:") for k in keys)


# --- the memory sink's loopback -------------------------------------------------------------
def test_the_loopback_returns_internal_envelopes_once_and_keeps_records() -> None:
    sink = MemorySink()

    async def run() -> None:
        await sink.send_to_partitions("p.entity-requests", [(0, b"a"), (1, b"b")])
        await sink.send_many("p.decisions", [(b"t1", b"{}")])
        assert await sink.partition_count("p.decisions") is None

    asyncio.run(run())
    assert sink.take_returned("p.entity-requests") == [(0, b"a"), (1, b"b")]
    assert sink.take_returned("p.entity-requests") == []
    assert sink.to_partitions == {} and sink.sent["p.decisions"] == [(b"t1", b"{}")]
    assert sink.loopback and not MemorySink(loopback=False).loopback


def test_the_publisher_keeps_each_alert_once_and_produces_it_as_it_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A period read again (a solvency shard restored from its checkpoint) produces its
    readings again, but its alert is stored, listed and logged once; the topic carries the
    alert as first stored."""
    from rebate_guard.core.solvency import Movement, SolvencyMonitor

    monitor = SolvencyMonitor()
    outputs = monitor.apply(Movement("g1", 1_767_225_600_000, "m1", "east", liability_cents=5))
    outputs += monitor.advance(1_767_225_600_000 + 3_600_000)
    alerts = [o for o in outputs if o.__class__.__name__ == "PlatformAlert"]
    assert alerts
    publisher, store, sink, _ = _publisher()
    with caplog.at_level("WARNING", logger="streams.publisher"):
        asyncio.run(publisher.solvency(outputs, monitor.current()))
        asyncio.run(publisher.solvency(outputs, monitor.current()))
    logged = [r.getMessage() for r in caplog.records if "solvency alert" in r.getMessage()]
    assert len(logged) == len(alerts) and alerts[0].message in logged[0]
    assert [json.loads(a)["alert_id"] for a in store.alerts] == [a.alert_id for a in alerts]
    produced = sink.sent["p.platform-alerts"]
    assert len(produced) == 2 * len(alerts) and produced[: len(alerts)] == produced[len(alerts) :]
    assert len(store.solvency_series["platform"]) == 1  # the period once
    assert len(sink.sent["p.solvency"]) == 2 * sum(o not in alerts for o in outputs)
