"""Every agent, broker-free, through Faust's test context."""

import asyncio
import json

from rebate_guard.contract.records import Decision
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.policy import Policy
from rebate_guard.settings import Settings
from streams.app import create_worker
from streams.sink import MemorySink
from streams.store import MemoryDecisionStore
from tests.factories import T0, decision, label, signup, tx


async def _until(worker, condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
        await worker.runtime.tick()  # what the worker's timer does: release idle sources


def _worker(partitions: int = 1, **overrides):
    store, sink = MemoryDecisionStore(), MemorySink()
    settings = Settings(batch_within_s=0.01, source_idle_s=0.05, partitions=partitions, **overrides)
    worker = create_worker(settings, store, sink)
    return worker, store, sink


def test_transactions_agent_decides_and_dead_letters() -> None:
    async def run() -> None:
        worker, store, sink = _worker()
        async with worker.agents["transactions"].test_context() as agent:
            await agent.put(json.dumps(tx("t1")).encode())
            await agent.put(b"{broken")
            await _until(
                worker, lambda: len(sink.sent["decisions"]) == 1 and sink.sent["dead-letters"]
            )
            await agent.put(json.dumps(tx("t1")).encode())  # redelivered in a later batch
            await _until(worker, lambda: len(sink.sent["decisions"]) == 2)
        decisions = [Decision.loads(v) for _, v in sink.sent["decisions"]]
        assert [d.tx_id for d in decisions] == ["t1", "t1"] and decisions[0] == decisions[1]
        assert list(store.decisions) == ["t1"]
        assert "not valid JSON" in json.loads(sink.sent["dead-letters"][0][1])["reason"]

    asyncio.run(run())


def test_signups_agent_updates_shared_state() -> None:
    async def run() -> None:
        worker, _, _ = _worker()
        users = worker.runtime.processor.users[0].users.user.profiles
        async with worker.agents["signups"].test_context() as agent:
            await agent.put(json.dumps(signup("u7", T0)).encode())
            await _until(worker, lambda: "u7" in users)
        assert users["u7"].signup_ts == T0

    asyncio.run(run())


def test_labels_agent_accepts_labels_and_rejects_bad_ones() -> None:
    async def run() -> None:
        worker, _, sink = _worker()
        counters = worker.runtime.processor.counters
        async with worker.agents["labels"].test_context() as agent:
            await agent.put(json.dumps(label("t1")).encode())
            await agent.put(json.dumps(label(None)).encode())
            await _until(worker, lambda: counters.events == 2)
        assert counters.dead_letters == 1
        assert "needs 'tx_id' or 'user_id'" in json.loads(sink.sent["dead-letters"][0][1])["reason"]

    asyncio.run(run())


def test_internal_agents_carry_envelopes_between_the_feature_stages() -> None:
    """With the memory sink standing in for the broker: what the user stage produces on the
    requests topic, the requests agent takes; what the entity stage answers on the results
    topic, the results agent takes; and then the transaction is decided."""

    async def run() -> None:
        worker, store, sink = _worker(partitions=2)
        sink.loopback = False  # envelopes stay in the sink, as in Kafka, for the agents
        moved = {"entity-requests": 0, "entity-results": 0}

        async def forward(kind: str, agent) -> None:
            for partition, value in sink.to_partitions[kind][moved[kind] :]:
                await agent.put(value, partition=partition)
                moved[kind] += 1

        async with (
            worker.agents["transactions"].test_context() as transactions,
            worker.agents["entity-requests"].test_context() as requests,
            worker.agents["entity-results"].test_context() as results,
        ):
            await transactions.put(json.dumps(tx("t1", T0, user_id="u1")).encode(), partition=1)
            for _ in range(100):
                if store.decisions:
                    break
                await worker.runtime.tick()  # the idle timer: quiet inputs release
                await forward("entity-requests", requests)
                await forward("entity-results", results)
                await asyncio.sleep(0.01)
        assert list(store.decisions) == ["t1"]
        assert moved["entity-requests"] >= 2 and moved["entity-results"] >= 1
        counters = worker.runtime.processor.counters
        assert counters.envelopes_received == sum(moved.values())
        (decision,) = [Decision.loads(v) for _, v in sink.sent["decisions"]]
        assert decision.tx_id == "t1" and decision.user_id == "u1"

    asyncio.run(run())


def test_graph_agent_publishes_rings_that_later_decisions_name() -> None:
    """The graph-events agent takes what the user stage sends it, publishes the referral
    farm it finds (rings topic, ring scores in the store), and a member's next payment is
    decided with the ring's reason code."""
    from rebate_guard.contract.records import Signup, Transaction
    from tests.unit.test_graph import World, referral_farm

    world = World()
    members = referral_farm(world)
    events = sorted(world.events, key=lambda e: e.ts)
    last = events[-1].ts

    async def run() -> None:
        worker, store, sink = _worker()
        sink.loopback = False  # envelopes stay in the sink, as in Kafka, for the agents
        kinds = ("entity-requests", "entity-results", "graph-events")
        moved = dict.fromkeys(kinds, 0)

        async def forward(agents) -> None:
            for kind, agent in zip(kinds, agents, strict=True):
                for partition, value in sink.to_partitions[kind][moved[kind] :]:
                    await agent.put(value, partition=partition)
                    moved[kind] += 1

        async with (
            worker.agents["transactions"].test_context() as transactions,
            worker.agents["signups"].test_context() as signups,
            worker.agents["entity-requests"].test_context() as requests,
            worker.agents["entity-results"].test_context() as results,
            worker.agents["graph-events"].test_context() as graph,
        ):
            for event in events:
                agent = transactions if isinstance(event, Transaction) else signups
                assert isinstance(event, Transaction | Signup)
                await agent.put(event.dumps())
            # A member pays again after the next scan is due (10 minutes of event time).
            again = tx("again", last + 11 * 60_000, user_id="farm3", merchant_id="grocer")
            await transactions.put(json.dumps(again).encode())
            for _ in range(300):
                if "again" in store.decisions:
                    break
                await worker.runtime.tick()
                await forward((requests, results, graph))
                await asyncio.sleep(0.01)
        rings = [json.loads(v) for _, v in sink.sent["rings"]]
        assert rings and rings[0]["kind"] == "referral_farm"
        assert set(rings[0]["users"]) <= members
        assert store.ring_scores[("u", "farm3")][1] == "referral_farm"
        assert [r["ring_id"] for r in await store.rings()] == [rings[-1]["ring_id"]]
        decision = Decision.loads(store.decisions["again"])
        assert "ring:referral_farm" in decision.reasons
        assert moved["graph-events"] >= 1

    asyncio.run(run())


def test_a_failing_batch_stops_the_worker_instead_of_going_on_with_half_applied_state() -> None:
    """A bug mid-batch (not bad input, not I/O) must not leave the agent running over
    half-updated shards: the worker stops hard, to restart from its last checkpoint."""

    async def run() -> None:
        worker, store, _ = _worker()
        stops: list[bool] = []
        worker.runtime.fail_stop = lambda: stops.append(True)

        async def broken(kind, raw):  # a bug inside the processor
            raise KeyError("half way through")

        worker.runtime.processor.handle = broken
        async with worker.agents["transactions"].test_context() as agent:
            await agent.put(json.dumps(tx("t1")).encode())
            await _until(worker, lambda: bool(stops))
        assert stops == [True] and not store.decisions

    asyncio.run(run())


def test_a_policy_pushed_to_the_store_takes_effect_without_a_restart() -> None:
    """What the worker's policy timer does (`refresh_policy`): the first worker seeds the
    store with its starting policy; a pushed policy decides the next transactions and is
    recorded in them; a broken one is rejected with its reason and the last good one stays."""

    async def run() -> None:
        worker, store, sink = _worker()
        runtime = worker.runtime
        await runtime.refresh_policy()
        start = runtime.processor.policy
        assert store.policy == start.to_json().encode()  # seeded: now the live one
        async with worker.agents["transactions"].test_context() as agent:

            async def decide(tx_id: str) -> Decision:
                before = len(sink.sent["decisions"])
                await agent.put(json.dumps(tx(tx_id, user_id="u1")).encode())
                await _until(worker, lambda: len(sink.sent["decisions"]) == before + 1)
                return Decision.loads(sink.sent["decisions"][-1][1])

            first = await decide("t1")
            assert first.policy_version == start.version and first.action != "block"
            blocking = Policy.from_document({"version": "v2", "lists": {"block_users": ["u1"]}})
            await store.push_policy(blocking.version, blocking.to_json())
            await runtime.refresh_policy()
            second = await decide("t2")
            assert (second.policy_version, second.action) == ("v2", "block")
            assert second.rebate_granted_cents == 0 and second.reasons[0] == "blocklist:user"

            store.policy = b'{"version": "v3", "thresholds": {"allow_at": 2}}'  # not checked
            await runtime.refresh_policy()
            assert "allow_at: must be within [0, 1]" in runtime.policy_status["rejected"]
            assert runtime.policy_status["version"] == "v2"
            assert (await decide("t3")).policy_version == "v2"

    asyncio.run(run())


def test_score_wakes_when_this_worker_decides_without_polling_redis(monkeypatch) -> None:
    """A waiting `POST /score` is answered from the worker's own stored decision as soon as
    the batch that decided it is stored; Redis polling (made slower than the wait here) is
    only the fallback for decisions made by other workers."""
    monkeypatch.setattr("streams.score_requests.SCORE_POLL_S", 60.0)

    async def run() -> None:
        worker, store, sink = _worker(score_at_payment=False)  # the stream decides
        body = json.dumps(tx("t5", amount_cents=4_000)).encode()
        async with worker.agents["transactions"].test_context() as agent:
            answer = asyncio.ensure_future(
                worker.runtime.score(parse_transaction(tx("t5")), body, 5.0)
            )
            await _until(worker, lambda: "transactions" in sink.sent)
            for _, value in sink.sent["transactions"]:  # the broker delivering it
                await agent.put(value)
            await _until(worker, answer.done)
        status = answer.result()
        assert not status.provisional
        assert status.decision == Decision.loads(store.decisions["t5"])
        assert worker.runtime.requests.waiters.waiting == {}

    asyncio.run(run())


class _RedisDown(MemoryDecisionStore):
    async def get_many(self, tx_ids):  # type: ignore[no-untyped-def]
        raise ConnectionError("Redis is down")

    async def decision_and_rings(self, tx_id, keys):  # type: ignore[no-untyped-def]
        raise ConnectionError("Redis is down")

    async def put_new(self, items):  # type: ignore[no-untyped-def]
        raise ConnectionError("Redis is down")


def test_score_answers_the_stored_decision_or_fails_closed_never_allowing() -> None:
    """`POST /score`'s logic (`Runtime.score`), broker-free: a decided tx_id gets its stored
    decision back; an undecided one goes into the pipeline and, with no decision in time or
    with Redis down, gets a provisional hold that grants nothing."""

    async def run() -> None:
        worker, store, sink = _worker(score_at_payment=False)  # the stream decides
        runtime = worker.runtime
        stored = decision("t1", "allow", 700)
        await store.put_new([("t1", stored.dumps())])
        payment = parse_transaction(tx("t1"))
        answer = await runtime.score(payment, json.dumps(tx("t1")).encode(), 1.0)
        assert not answer.provisional and answer.decision == stored
        assert "transactions" not in sink.sent  # decided already: nothing produced

        fresh = parse_transaction(tx("t2", amount_cents=5_000))
        answer = await runtime.score(fresh, json.dumps(tx("t2")).encode(), 0.05)
        assert answer.provisional and answer.decision.action == "hold"
        assert answer.decision.reasons == ["fail_closed:timeout"]
        assert (answer.granted_cents, answer.held_cents) == (0, 500)
        assert [k for k, _ in sink.sent["transactions"]] == [b"u1"]  # into the pipeline
        assert "t2" not in store.decisions  # a provisional answer is never stored

        down = create_worker(Settings(fail_closed_action="block"), _RedisDown(), MemorySink())
        answer = await down.runtime.score(fresh, b"{}", 1.0)
        assert answer.provisional and answer.decision.action == "block"
        assert answer.decision.reasons == ["fail_closed:redis"] and answer.granted_cents == 0
        assert down.runtime.processor.counters.fail_closed == 1

    asyncio.run(run())


def test_score_decides_at_payment_time_without_waiting_for_the_stream() -> None:
    """With the transaction's partitions here, `POST /score` answers at once (no agent
    running: the stream has not seen it), the decision stored and the transaction produced
    once; the same tx_id again gets the same answer and is not produced again."""

    async def run() -> None:
        worker, store, sink = _worker(partitions=2)
        runtime = worker.runtime
        body = tx("p1", amount_cents=4_000)
        answer = await runtime.score(parse_transaction(body), json.dumps(body).encode(), 0.0)
        assert not answer.provisional
        assert answer.decision == Decision.loads(store.decisions["p1"])
        assert answer.requested_cents == 400 and answer.decision.reasons != ["fail_closed:timeout"]
        assert [k for k, _ in sink.sent["transactions"]] == [b"u1"]
        assert runtime.processor.counters.decided_at_payment == 1
        again = await runtime.score(parse_transaction(body), json.dumps(body).encode(), 0.0)
        assert again.decision == answer.decision and len(sink.sent["transactions"]) == 1

    asyncio.run(run())


class _SlowBroker(MemorySink):
    """A sink whose acknowledgements, while `holding`, wait until released."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = True
        self.released = asyncio.Event()

    async def send_one(self, topic, key, value):  # type: ignore[no-untyped-def]
        await super().send_one(topic, key, value)
        if self.holding:
            await self.released.wait()


def test_score_past_its_in_flight_limit_answers_provisional_at_once_and_still_produces() -> None:
    """Admission control: with `RG_SCORE_MAX_IN_FLIGHT` requests in flight, the next one is
    answered at once (`fail_closed:overload`, nothing granted) instead of queueing, and its
    transaction still goes into the pipeline; once one finishes, requests are decided again."""

    async def run() -> None:
        sink = _SlowBroker()
        store = MemoryDecisionStore()
        worker = create_worker(Settings(partitions=1, score_max_in_flight=2), store, sink)
        runtime = worker.runtime

        def score(tx_id: str):  # type: ignore[no-untyped-def]
            body = tx(tx_id, amount_cents=4_000)
            return runtime.score(parse_transaction(body), json.dumps(body).encode(), 5.0)

        first, second = asyncio.ensure_future(score("a1")), asyncio.ensure_future(score("a2"))
        await _until(worker, lambda: len(sink.sent.get("transactions", [])) == 2)
        assert runtime.requests.admission.in_flight == 2 and not first.done()
        sink.holding = False  # the next produce is acknowledged at once
        shed = await asyncio.wait_for(score("a3"), 1.0)
        assert shed.provisional and shed.decision.reasons == ["fail_closed:overload"]
        assert shed.decision.action == "hold" and shed.granted_cents == 0
        assert [json.loads(v)["tx_id"] for _, v in sink.sent["transactions"]][2] == "a3"
        assert "a3" not in store.decisions and not first.done()
        sink.released.set()
        for answered in await asyncio.gather(first, second):
            assert not answered.provisional
        assert (
            runtime.requests.admission.in_flight == 0 and runtime.processor.counters.overload == 1
        )
        after = await score("a4")
        assert not after.provisional and after.decision == Decision.loads(store.decisions["a4"])

    asyncio.run(run())


def test_platform_events_agent_decides_points_and_the_solvency_agent_reads_the_books() -> None:
    """A points withdrawal on the platform-events agent is blocked (a bad event is a dead
    letter); the movements the user stage sends on solvency-movements reach the solvency
    agent, which publishes the closed period's readings and its alert."""

    def event(event_id: str, ts: int, kind: str, cents: int, **fields: object) -> bytes:
        fields |= {"event_id": event_id, "ts": ts, "kind": kind, "amount_cents": cents}
        return json.dumps(fields).encode()

    async def run() -> None:
        worker, store, sink = _worker()
        sink.loopback = False  # envelopes stay in the sink, as in Kafka, for the agents
        moved = 0
        async with (
            worker.agents["platform-events"].test_context() as platform,
            worker.agents["solvency-movements"].test_context() as books,
        ):
            await platform.put(event("g1", T0, "points_grant", 5_000, user_id="u1"))
            await platform.put(event("w1", T0 + 1, "points_withdraw", 100, user_id="u1"))
            await platform.put(event("x", T0 + 2, "pool_topup", -5))
            await platform.put(event("g2", T0 + 2 * 3_600_000, "points_grant", 1, user_id="u2"))
            for _ in range(300):
                if store.alerts and "w1" in store.decisions:
                    break
                await worker.runtime.tick()
                for partition, value in sink.to_partitions["solvency-movements"][moved:]:
                    await books.put(value, partition=partition)
                    moved += 1
                await asyncio.sleep(0.01)
        withdrawal = Decision.loads(store.decisions["w1"])
        assert withdrawal.action == "block"
        assert withdrawal.reasons == ["policy:points_not_withdrawable"]
        assert "amount_cents" in json.loads(sink.sent["dead-letters"][0][1])["reason"]
        readings = [json.loads(v) for _, v in sink.sent["solvency"]]
        assert readings[0]["scope"] == "platform" and readings[0]["liability_cents"] == 5_000
        (alert,) = [json.loads(v) for _, v in sink.sent["platform-alerts"]]
        assert alert["alert_id"] == f"platform:critical:{T0}" and store.alerts
        assert moved >= 1

    asyncio.run(run())
