"""Every agent, broker-free, through Faust's test context."""

import asyncio
import json

from rebate_guard.settings import Settings
from streams.app import create_worker
from streams.records import Decision
from streams.sink import MemorySink
from streams.store import MemoryDecisionStore
from tests.factories import T0, label, signup, tx


async def _until(worker, condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
        await worker.runtime.tick()  # what the worker's timer does: release idle sources


def _worker():
    store, sink = MemoryDecisionStore(), MemorySink()
    worker = create_worker(Settings(batch_within_s=0.01, source_idle_s=0.05), store, sink)
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
        users = worker.runtime.processor.scorer.features.user.profiles
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
