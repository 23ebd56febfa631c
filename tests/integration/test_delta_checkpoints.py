"""Delta checkpoints in the real Redis: a worker's forked writer appends deltas to each shard's
chain, the chain read back restores the shard a full checkpoint holds, a delta is appended only
onto the tip it extends, and pieces written without their pointer (a writer dying halfway) are
never read."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from rebate_guard.contract.order import Event
from rebate_guard.settings import Settings
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from streams.processor import BatchProcessor
from streams.shards import load_checkpoint
from streams.shards.checkpoints import chain_pieces
from streams.sink import MemorySink
from streams.store import CheckpointConflict, RedisDecisionStore, save_checkpoint_sync
from streams.store.checkpoints import checkpoint_plan
from tests.unit.test_deltas import _feed, _flat, _messages, _writer
from tests.unit.test_processor import Clock

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    config = WorldConfig(seed=7, n_users=200, n_merchants=20, days=10, target_transactions=1_200)
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("world"))
    return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


def test_a_forked_writer_builds_chains_that_restore_each_shard(
    world: list[Event], stack_settings: Settings
) -> None:
    settings = replace(stack_settings, checkpoint_full_every=3, source_idle_s=2.0)

    async def read_back(units: list[str]) -> dict[str, bytes]:
        store = RedisDecisionStore(settings)
        try:
            found = {unit: await store.load_checkpoint(unit) for unit in units}
        finally:
            await store.close()
        return {unit: blob for unit, blob in found.items() if blob is not None}

    proc = BatchProcessor(RedisDecisionStore(settings), MemorySink(), settings, clock=Clock())
    proc.shards.own_all()
    writer = _writer(proc, proc.store)
    writer.fork = True  # as the worker with a real Redis: the child writes, the worker waits
    messages = _messages(world, prefix=settings.topic_prefix)
    lengths = []
    try:
        for start in range(0, len(messages), 400):
            _feed(proc, messages[start : start + 400])
            whole, _ = proc.shards.checkpoints()
            asyncio.run(writer.checkpoint())
            chains = asyncio.run(read_back(list(whole)))
            lengths.append(len(chain_pieces(chains["user-0"])))
            for unit, snapshot in whole.items():
                restored = load_checkpoint(chains[unit])
                assert _flat(restored) == _flat(load_checkpoint(snapshot())), (unit, start)
    finally:
        asyncio.run(proc.store.close())  # type: ignore[attr-defined]
    assert lengths[:4] == [1, 2, 3, 1]


def test_a_delta_lands_only_on_its_tip_and_unpointed_pieces_are_never_read(
    stack_settings: Settings,
) -> None:
    url, app = stack_settings.redis_url, stack_settings.app_id

    async def body(store: RedisDecisionStore) -> Any:
        base = store.keys.checkpoint("u")
        await store.save_checkpoint("u", b"full", generation="a")
        save_checkpoint_sync(url, app, "u", b"d1", generation="b", extends="a")  # the child's way
        await store.save_checkpoint("u", b"d2", generation="c", extends="b")
        assert chain_pieces(await store.load_checkpoint("u") or b"") == [b"full", b"d1", b"d2"]
        with pytest.raises(CheckpointConflict):
            await store.save_checkpoint("u", b"late", generation="x", extends="b")
        with pytest.raises(CheckpointConflict):
            save_checkpoint_sync(url, app, "u", b"late", generation="y", extends="a")
        # A writer that died after its chunks, before its pointer: nothing of it is read.
        chunks, _ = checkpoint_plan(base, b"orphan", generation="z")
        for key, chunk in chunks.items():
            await store.client.set(key, chunk)
        assert chain_pieces(await store.load_checkpoint("u") or b"") == [b"full", b"d1", b"d2"]
        await store.client.delete(*chunks)
        # A full checkpoint replaces the chain and deletes every piece of the old one.
        await store.save_checkpoint("u", b"again", generation="f")
        assert await store.load_checkpoint("u") == b"again"
        assert await store.client.keys(base + ":*") == [f"{base}:f:0".encode()]

    async def go() -> None:
        store = RedisDecisionStore(stack_settings)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())
