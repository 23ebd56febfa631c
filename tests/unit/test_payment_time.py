"""Decisions at payment time (`PaymentTimeDecider.decide`, `POST /score`'s fast path):
the stream's decision, made from the state as it stands, without waiting for the stream;
the stream then follows it; and what cannot be decided exactly that way is left to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Decision, Label, Signup, Transaction
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.policy import Policy
from rebate_guard.settings import Settings
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from streams.batch import RawEvent
from streams.payment_time import in_flight_keys
from streams.processor import BatchProcessor
from streams.registry import user_unit
from streams.sink import key_partition
from streams.store import MemoryDecisionStore
from tests.factories import T0, tx
from tests.unit.test_processor import IDLE_S, Clock, make


class Feed:
    """Input messages into a loopback processor, keyed as the contract says."""

    def __init__(self, proc: BatchProcessor) -> None:
        self.proc = proc
        self.n = proc.n_partitions
        self.offsets: dict[tuple[str, int], int] = {}

    async def put(self, event: Event | dict[str, Any], kind: str = "transactions") -> None:
        if isinstance(event, dict):
            payload, key = event, event["user_id"]
        else:
            payload = event.asdict()
            if isinstance(event, Transaction):
                kind, key = "transactions", event.user_id
            elif isinstance(event, Signup):
                kind, key = "signups", event.user_id
            else:
                assert isinstance(event, Label)
                kind, key = "labels", event.tx_id or event.user_id or ""
        partition = key_partition(key.encode(), self.n)
        offset = self.offsets.get((kind, partition), 0)
        self.offsets[(kind, partition)] = offset + 1
        value = json.dumps(payload).encode()
        message = RawEvent(f"p.{kind}", partition, offset, key.encode(), value)
        await self.proc.handle(kind, [message])

    async def settle(self) -> None:
        """Every source falls idle: the stream decides all it has."""
        assert isinstance(self.proc.clock, Clock)
        self.proc.clock.now += IDLE_S + 1
        await self.proc.tick()


def _nothing_produced() -> Callable[[], Awaitable[None]]:
    async def produce() -> None:
        return None

    return produce


def _payload(d: Decision) -> dict[str, Any]:
    out = d.asdict()
    out.pop("decided_at")
    return out


@pytest.fixture(scope="module")
def world() -> list[Event]:
    config = WorldConfig(seed=5, n_users=200, n_merchants=20, days=12, target_transactions=1_500)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_world(simulate_world(config), Path(tmp))
        return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


@pytest.mark.parametrize(("n", "labels"), [(1, True), (2, False)])
def test_a_decision_at_payment_time_is_the_streams_and_the_stream_follows_it(
    world: list[Event], n: int, labels: bool
) -> None:
    """With the stream caught up, the decision made at payment time is, field for field,
    the one the stream makes of the same transaction (same features, same models, same
    policy); stored once; and the stream, reaching it, publishes it and books it in the
    ledger (even under a policy that would decide otherwise by then).

    With 2 partitions the entity families come from both entity shards; labels are left
    out there because a user shard's classifier learns its peers' examples when they
    arrive, which the stream may place after a transaction that the caught-up state at
    payment time has them before (the model differs, not the features)."""
    if not labels:
        world = [e for e in world if not isinstance(e, Label)]

    async def run() -> None:
        proc, store, sink = make(partitions=n)
        ref, ref_store, _ = make(partitions=n, score_at_payment=False)
        feed, ref_feed = Feed(proc), Feed(ref)
        tail = [e for e in world if isinstance(e, Transaction)][-40:]
        compared = 0
        for event in world:
            if event in tail:
                await feed.settle()
                produced, now = await proc.payment_time.decide(event, _nothing_produced())
                assert produced and now is not None, event.tx_id
                await ref_feed.put(event)
                await ref_feed.settle()
                streamed = Decision.loads(ref_store.decisions[event.tx_id])
                assert _payload(now) == _payload(streamed), event.tx_id
                compared += 1
            await feed.put(event)
            await ref_feed.put(event) if event not in tail else None
        await feed.settle()
        await ref_feed.settle()
        assert compared == 40 and proc.counters.decided_at_payment == 40
        assert proc.payment_time.entries == {} and proc.payment_time.in_flight == {}  # all settled
        # Stored once, the same everywhere; the decisions topic carries each once.
        assert store.decisions == ref_store.decisions
        published = [Decision.loads(v).tx_id for _, v in sink.sent["p.decisions"]]
        assert sorted(published) == sorted(store.decisions)

        # A policy blocking the user now: the stream would block, but the decision made at
        # payment time stands, and the ledger books what it granted.
        paid = [t for t in tail if Decision.loads(store.decisions[t.tx_id]).action == "allow"]
        again = {**paid[-1].asdict(), "tx_id": "late-1", "ts": world[-1].ts + 3_600_000}
        payment = parse_transaction(again)
        produced, granted = await proc.payment_time.decide(payment, _nothing_produced())
        assert granted is not None
        assert granted.action != "block" and granted.rebate_granted_cents > 0
        blocking = Policy.from_document(
            {"version": "block-u", "lists": {"block_users": [payment.user_id]}}
        )
        proc.set_policy(blocking)
        await feed.put(payment)
        await feed.settle()
        assert Decision.loads(store.decisions["late-1"]) == granted
        assert Decision.loads(sink.sent["p.decisions"][-1][1]) == granted
        shard = proc.users[key_partition(payment.user_id.encode(), n)]
        entry = shard.decider.ledger.entries["late-1"]
        assert entry.granted == granted.rebate_granted_cents

    asyncio.run(run())


@pytest.mark.parametrize("n", [1, 2])
def test_payments_in_flight_count_in_the_features_of_those_after_them(
    world: list[Event], n: int
) -> None:
    """A burst decided at payment time before the stream has any of it (the world's last
    transactions: the same users, devices and merchants again and again): each one's
    features are the stream's for it, as if those before it were in the state already."""

    async def run() -> None:
        proc, _, _ = make(partitions=n)
        ref, _, ref_sink = make(partitions=n, score_at_payment=False)
        feed, ref_feed = Feed(proc), Feed(ref)
        # The last 80 payments, without the signups and labels among them (for both).
        at = [i for i, e in enumerate(world) if isinstance(e, Transaction)][-80]
        tail = [e for e in world[at:] if isinstance(e, Transaction)]
        for event in world[:at]:
            await feed.put(event)
        for event in world[:at] + tail:
            await ref_feed.put(event)
        await feed.settle()
        await ref_feed.settle()
        streamed = {}
        for _, value in ref_sink.sent["p.features"]:
            vector = json.loads(value)
            streamed[vector["tx_id"]] = vector["features"]
        keys_before: set[str] = set()
        sharing = 0
        for payment in tail:
            _, value = await proc.payment_time.decide(payment, _nothing_produced())
            assert value is not None, payment.tx_id
            assert proc.payment_time.entries[payment.tx_id].x == streamed[payment.tx_id], (
                payment.tx_id
            )
            keys = set(in_flight_keys(payment))
            sharing += bool(keys & keys_before)
            keys_before |= keys
        assert len(tail) == 80 and sharing >= 40, sharing  # bursts on shared keys
        assert proc.counters.decided_at_payment == 80 and not proc.counters.left_to_stream

    asyncio.run(run())


def test_what_cannot_be_decided_exactly_now_is_left_to_the_stream() -> None:
    """A transaction already in the stream, one behind event time, and one whose user
    partition is not here wait for the stream's decision, counted by why; one after a
    payment half-way into the stream waits for it to be placeable."""

    async def run() -> None:
        proc, store, _ = make()
        feed = Feed(proc)
        await feed.put(tx("b1", T0 + 10_000, user_id="u3"))
        await feed.settle()
        assert await proc.payment_time.decide(
            parse_transaction(tx("b1", T0 + 10_000, user_id="u3")), _nothing_produced()
        ) == (False, None)  # already in the stream: it answers
        behind = tx("b2", T0 + 5_000, user_id="u3", device_id="d5", ip="1.1.1.5", card_id="c5")
        assert await proc.payment_time.decide(parse_transaction(behind), _nothing_produced()) == (
            False,
            None,
        )
        proc.release([user_unit(key_partition(b"u4", proc.n_partitions))])
        away = tx("b3", T0 + 20_000, user_id="u4", device_id="d6", ip="1.1.1.6", card_id="c6")
        assert await proc.payment_time.decide(parse_transaction(away), _nothing_produced()) == (
            False,
            None,
        )
        assert proc.counters.left_to_stream == {
            "in_stream": 1,
            "event_time_past": 1,
            "not_here": 1,
        }
        assert "b2" not in store.decisions and "b3" not in store.decisions

    asyncio.run(run())


def test_a_failed_produce_decides_nothing_and_frees_the_user() -> None:
    async def run() -> None:
        proc, store, _ = make()
        payment = parse_transaction(tx("f1", T0))

        async def broker_down() -> None:
            raise ConnectionError("broker down")

        with pytest.raises(ConnectionError):
            await proc.payment_time.decide(payment, broker_down)
        assert (
            store.decisions == {}
            and proc.payment_time.entries == {}
            and proc.payment_time.in_flight == {}
        )

    asyncio.run(run())


def test_after_a_restart_the_ledger_follows_what_was_answered_at_payment_time() -> None:
    """A decision made at payment time that the stream had not reached when the worker
    died: the worker restarted from an earlier checkpoint re-decides what came after it
    and, reaching that transaction, books what was answered, even after deciding another
    transaction anew first and under a policy that would now decide otherwise."""

    async def run() -> None:
        store = MemoryDecisionStore()
        proc, _, _ = make(store, partitions=1)
        feed = Feed(proc)
        await feed.put(tx("h1", T0))
        await feed.settle()
        snapshots, written = proc.shards.checkpoints()
        blobs = {unit: snapshot() for unit, snapshot in snapshots.items()}
        written()
        offsets = dict(feed.offsets)
        fresh = tx("c1", T0 + 1_000, user_id="u2", device_id="d2", ip="10.0.0.2", card_id="c2")
        paid = tx("d1", T0 + 2_000, user_id="u3", device_id="d3", ip="10.0.0.3", card_id="c3")
        await feed.put(fresh)  # in the stream, waiting for event time (allowed lateness)
        _, answered = await proc.payment_time.decide(
            parse_transaction(paid), lambda: feed.put(paid)
        )
        assert answered is not None and "c1" not in store.decisions
        assert answered.rebate_granted_cents > 0

        resumed, _, sink = make(store, partitions=1)  # after a crash
        for unit, blob in blobs.items():
            resumed.shards.install(unit, blob)
        blocking = {"version": "block-u3", "lists": {"block_users": ["u3"]}}
        resumed.set_policy(Policy.from_document(blocking))
        again = Feed(resumed)
        again.offsets = offsets  # input re-read from the checkpoint's offsets
        await again.put(fresh)
        await again.settle()  # c1 decided anew, in a batch of its own
        await again.put(paid)
        await again.settle()
        assert "c1" in store.decisions and Decision.loads(store.decisions["d1"]) == answered
        entry = resumed.users[0].decider.ledger.entries["d1"]
        assert entry.granted == answered.rebate_granted_cents
        assert Decision.loads(sink.sent["p.decisions"][-1][1]) == answered

    asyncio.run(run())


class _GatedRings(MemoryDecisionStore):
    """Ring scores wait at a gate for the first caller only: a decision caught mid-way."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.calls = 0

    async def get_ring_scores(self, keys):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        return await super().get_ring_scores(keys)


def test_a_payment_waits_for_one_before_it_still_being_decided() -> None:
    """A second payment of a user while the first is still being decided waits for it (up
    to `EARLIER_WAIT_S`) and counts it; past that wait it is left to the stream."""

    async def run() -> None:
        store = _GatedRings()
        proc, _, _ = make(store)
        first = parse_transaction(tx("w1", T0))
        second = parse_transaction(tx("w2", T0 + 1_000, merchant_id="m2"))
        deciding = asyncio.ensure_future(proc.payment_time.decide(first, _nothing_produced()))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(proc.payment_time.decide(second, _nothing_produced()))
        await asyncio.sleep(0.02)
        assert not waiting.done()  # w1 has no features yet: w2 cannot be placed
        store.gate.set()
        assert (await deciding)[1] is not None and (await waiting)[1] is not None
        assert proc.payment_time.entries["w2"].x is not None
        assert proc.payment_time.entries["w2"].x["user_tx_count_24h"] == 1  # w1 counted

        late = _GatedRings()
        proc, _, _ = make(late)
        deciding = asyncio.ensure_future(proc.payment_time.decide(first, _nothing_produced()))
        await asyncio.sleep(0)
        assert await proc.payment_time.decide(second, _nothing_produced()) == (True, None)
        assert proc.counters.left_to_stream == {"in_flight": 1}
        late.gate.set()
        await deciding

    asyncio.run(run())


def test_a_payment_half_way_into_the_stream_counts_once() -> None:
    """The stream under way with a payment decided at payment time: its user shard has
    released it, then its entity shard has applied it, and only then does the user shard
    complete it. Later payments on its keys decided meanwhile count it exactly once in
    every family: from the state where the state has it, applied to the copies elsewhere."""
    from rebate_guard.contract.records import FeatureVector
    from streams.registry import entity_unit
    from streams.sink import MemorySink

    async def run() -> None:
        sink = MemorySink(loopback=False)
        config = Settings(topic_prefix="p.", source_idle_s=IDLE_S, partitions=1, graph=False)
        proc = BatchProcessor(MemoryDecisionStore(), sink, config, clock=Clock())
        proc.shards.install(user_unit(0), None)
        proc.shards.install(entity_unit(0), None)
        feed = Feed(proc)
        payments = [parse_transaction(tx(f"h{i}", T0 + i * 1_000)) for i in range(3)]
        _, first = await proc.payment_time.decide(payments[0], lambda: feed.put(payments[0]))
        await feed.settle()  # released by the user shard: its requests are on their way
        assert "h0" in proc.users[0].seen and first is not None
        _, second = await proc.payment_time.decide(payments[1], _nothing_produced())
        requests = sink.to_partitions.pop("p.entity-requests")
        await proc.handle_requests(
            [RawEvent("r", q, i, None, v) for i, (q, v) in enumerate(requests)]
        )
        assert proc.payment_time.entries["h0"].applied_at == {
            0
        }  # applied; its results not back yet
        _, third = await proc.payment_time.decide(payments[2], _nothing_produced())
        assert second is not None and third is not None
        got = {t.tx_id: proc.payment_time.entries[t.tx_id].x for t in payments}

        ref, _, ref_sink = make(partitions=1, graph=False)
        ref_feed = Feed(ref)
        for payment in payments:
            await ref_feed.put(payment)
        await ref_feed.settle()
        want = {}
        for _, value in ref_sink.sent["p.features"]:
            vector = FeatureVector.loads(value)
            want[vector.tx_id] = vector.features
        assert got == want
        assert got["h2"]["user_tx_count_24h"] == 2 and got["h2"]["device_user_count_24h"] == 1

    asyncio.run(run())


class _HeartbeatDown(MemoryDecisionStore):
    async def graph_heartbeat(self):  # type: ignore[no-untyped-def]
        raise ConnectionError("Redis is down")


def test_redis_failing_at_payment_time_leaves_it_to_the_stream_at_once() -> None:
    """The stream retries Redis until it is back; a decision at payment time must not wait
    for that (the request has a fail-closed answer to give): it is left to the stream."""
    from streams.registry import entity_unit
    from streams.sink import MemorySink

    async def run() -> None:
        store = _HeartbeatDown()
        config = Settings(topic_prefix="p.", source_idle_s=IDLE_S, partitions=1)
        proc = BatchProcessor(store, MemorySink(loopback=False), config, clock=Clock())
        proc.shards.install(user_unit(0), None)
        proc.shards.install(entity_unit(0), None)  # the graph shard runs elsewhere: its heartbeat
        payment = parse_transaction(tx("r1"))
        got = await asyncio.wait_for(proc.payment_time.decide(payment, _nothing_produced()), 2.0)
        assert got == (True, None) and "r1" not in store.decisions
        assert proc.counters.left_to_stream == {"failed": 1}

    asyncio.run(run())


class _CountedStores(MemoryDecisionStore):
    """Counts the calls that store decisions (one per batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.put_calls: list[list[str]] = []

    async def put_new(self, items):  # type: ignore[no-untyped-def]
        self.put_calls.append([tx_id for tx_id, _ in items])
        return await super().put_new(items)


def test_payments_decided_at_once_are_stored_together_and_the_first_write_still_wins() -> None:
    """Payments of different users decided at the same moment are stored, and indexed for
    the console, in one call each; a decision already in Redis (another worker's) stands
    for its transaction, which is not indexed again."""
    from streams.console.store import MemoryConsoleStore

    class CountedConsole(MemoryConsoleStore):
        def __init__(self) -> None:
            super().__init__()
            self.recorded: list[list[str]] = []

        async def record(self, entries):  # type: ignore[no-untyped-def]
            self.recorded.append([e.decision.tx_id for e in entries])
            await super().record(entries)

    async def run() -> None:
        store, console = _CountedStores(), CountedConsole()
        proc, _, _ = make(store, console=console)
        payments = [
            parse_transaction(
                tx(
                    f"b{i}",
                    T0 + i,
                    user_id=f"u{i}",
                    merchant_id=f"m{i}",
                    device_id=f"d{i}",
                    ip=f"10.0.0.{i}",
                    card_id=f"c{i}",
                )
            )
            for i in range(4)
        ]
        theirs = await proc.payment_time.decide(payments[3], _nothing_produced())
        assert theirs[1] is not None
        # As if another worker had decided b3 first, under another policy version.
        stood = Decision.loads(store.decisions["b3"])
        stood.policy_version = "elsewhere"
        store.decisions["b3"] = stood.dumps()
        proc.payment_time.settle("b3")
        store.put_calls.clear()
        console.recorded.clear()

        got = await asyncio.gather(
            *(proc.payment_time.decide(p, _nothing_produced()) for p in payments)
        )
        assert [now.tx_id for _, now in got if now is not None] == ["b0", "b1", "b2", "b3"]
        assert store.put_calls == [["b0", "b1", "b2", "b3"]]
        assert console.recorded == [["b0", "b1", "b2"]]  # b3 was stored (and indexed) before
        assert got[3][1] == stood  # the standing decision is the answer
        assert proc.payment_time.indexed(["b0", "b1", "b2", "b3"]) == {"b0", "b1", "b2"}

    asyncio.run(run())
