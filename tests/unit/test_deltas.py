"""Incremental checkpoints (`streams.shards.deltas`): a full checkpoint and the deltas written
after it restore the very shard a full checkpoint would hold at the last of them, and a
worker resumed from such a chain decides as one that never stopped. With the in-memory
store; tests/integration/test_store.py holds the Redis store to the same."""

from __future__ import annotations

import asyncio
import copy
import io
import itertools
import json
import pickle
from typing import Any

import pytest

from features.engine import FEATURE_NAMES, FeatureEngine
from features.stages import EntityStage, UserStage
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import PlatformEvent, Signup, Transaction
from rebate_guard.core.decider import Scorer
from rebate_guard.settings import Settings
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from rebate_guard.tools.simulator.profiles import FLOW_ABUSE
from streams.batch import Counters, RawEvent
from streams.checkpoint_writer import CheckpointWriter
from streams.processor import BatchProcessor
from streams.retry import Retrying
from streams.shards import load_checkpoint
from streams.shards.checkpoints import chain_blob, chain_pieces
from streams.shards.deltas import DELTA
from streams.sink import MemorySink, key_partition
from streams.store import CheckpointConflict, MemoryDecisionStore
from streams.store.checkpoints import checkpoint_plan, chunk_keys, piece_keys
from tests.unit.test_processor import Clock

KINDS = ("signups", "platform-events", "transactions", "labels")
IDLE_S = 2.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    """A small world with the platform's events and the abuse of their flows: their state
    (the user's, the binder's, the claims per device and IP) is checkpointed too. Twelve
    days (9,687 messages, 14 rounds of the chain test: three cycles of full-then-deltas): a delta
    holds the keys changed, whatever the world's length, and every kind of state changes
    between two checkpoints in any of its days."""
    config = WorldConfig(
        seed=7, n_users=300, n_merchants=30, days=12, target_transactions=1_500, **FLOW_ABUSE
    )
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("world"))
    return list(
        EventFiles(
            paths["transactions"], paths["signups"], paths["labels"], None, paths["platform_events"]
        )
    )


def _messages(world: list[Event], *, prefix: str = "d.") -> list[tuple[str, RawEvent]]:
    """The world as the input topics' messages (two partitions, keyed as the producer)."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for event in world:
        if isinstance(event, Transaction):
            kind, key = "transactions", event.user_id
        elif isinstance(event, Signup):
            kind, key = "signups", event.user_id
        elif isinstance(event, PlatformEvent):
            kind, key = "platform-events", event.user_id or event.merchant_id or event.event_id
        else:
            kind, key = "labels", event.tx_id or event.user_id
        p = key_partition(key.encode(), 2)
        offset = offsets.get((kind, p), 0)
        offsets[(kind, p)] = offset + 1
        out.append((kind, RawEvent(f"{prefix}{kind}", p, offset, None, event.dumps())))
    return out


def _worker(store: MemoryDecisionStore, full_every: int) -> tuple[BatchProcessor, MemorySink]:
    settings = Settings(
        topic_prefix="d.",
        partitions=2,
        source_idle_s=IDLE_S,
        log_features=True,
        checkpoint_full_every=full_every,
    )
    sink = MemorySink()
    proc = BatchProcessor(store, sink, settings, clock=Clock(), retry_base_s=0.001)
    proc.shards.own_all()
    return proc, sink


def _writer(proc: BatchProcessor, store: Any) -> CheckpointWriter:
    counters = Counters()
    return CheckpointWriter(
        proc.shards,
        store,
        proc.settings,
        lock=asyncio.Lock(),
        retry=Retrying(counters, base_s=0.001),
        counters=counters,
    )


def _feed(
    proc: BatchProcessor,
    messages: list[tuple[str, RawEvent]],
    batch: int = 100,
    *,
    idle: bool = True,
) -> None:
    """`messages` batch by batch; quiet inputs fall idle between batches (`idle`: what
    they send next may then come late, behind event time), else only when `_drain`ed."""
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        for kind in KINDS:
            items = [m for k, m in chunk if k == kind]
            if items:
                asyncio.run(proc.handle(kind, items))
        if idle:
            _drain(proc)


def _drain(proc: BatchProcessor) -> None:
    """Every input falls idle: what the aligners hold is released."""
    assert isinstance(proc.clock, Clock)
    proc.clock.now += IDLE_S + 1
    asyncio.run(proc.tick())


def _flat(state: Any) -> bytes:
    """`state` pickled without the memo: objects shared within one pickle are written each
    time, so a shard restored from several pickles compares equal to the one it mirrors."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(state)
    return out.getvalue()


def _features(sink: MemorySink) -> dict[str, bytes]:
    return {k.decode(): v for k, v in sink.sent.get("d.features", []) if k is not None}


def test_a_chain_restores_the_shard_a_full_checkpoint_holds(world: list[Event]) -> None:
    store = MemoryDecisionStore()
    proc, _ = _worker(store, full_every=4)
    writer = _writer(proc, store)
    messages = _messages(world)
    lengths = []
    for start in range(0, len(messages), 700):
        _feed(proc, messages[start : start + 700])
        whole, _ = proc.shards.checkpoints()
        asyncio.run(writer.checkpoint())
        lengths.append(len(store.chains["user-0"]))
        for unit, snapshot in whole.items():
            assert _flat(load_checkpoint(store.checkpoints[unit])) == _flat(
                load_checkpoint(snapshot())
            ), (unit, start)
    # Full, then three deltas, then full again (every 4th).
    assert lengths[:6] == [1, 2, 3, 4, 1, 2]
    assert len(store.chains["graph-0"]) == 1  # the graph shard is written whole
    # A delta holds the shard's skeleton and the changed keys only: smaller than the full.
    pieces = store.chains["user-0"]
    assert pickle.loads(pieces[1][1])[0] == DELTA
    assert len(pieces[1][1]) < len(pieces[0][1]) / 2
    entity = store.chains["entity-0"]
    assert pickle.loads(entity[1][1])[0] == DELTA and len(entity[1][1]) < len(entity[0][1])


def test_a_worker_resumed_from_a_chain_decides_as_one_resumed_from_a_full_checkpoint(
    world: list[Event],
) -> None:
    messages = _messages(world)
    store = MemoryDecisionStore()
    first, _ = _worker(store, full_every=5)
    writer = _writer(first, store)
    cut = len(messages) * 2 // 3
    for start in range(0, cut, 500):
        _feed(first, messages[start : min(start + 500, cut)], idle=False)
        whole, _ = first.shards.checkpoints()
        asyncio.run(writer.checkpoint())
    assert max(len(chain) for chain in store.chains.values()) > 1
    fulls = {unit: snapshot() for unit, snapshot in whole.items()}
    _feed(first, messages[cut : cut + 300], idle=False)  # processed, then lost in a crash

    runs = []
    for blobs in (store.checkpoints, fulls):
        resumed, sink = _worker(copy.deepcopy(store), full_every=5)
        for unit, blob in blobs.items():
            resumed.shards.install(unit, blob)
        _feed(resumed, messages, idle=False)  # all re-read; what the checkpoint has is skipped
        _drain(resumed)
        decided = resumed.store.decisions  # type: ignore[attr-defined]
        runs.append((_features(sink), decided))
    (chain_features, chain_decided), (full_features, full_decided) = runs
    assert len(chain_features) > 300 and chain_features == full_features
    assert chain_decided == full_decided
    # And they are replay's (nothing came late): the platform events' state came back too.
    replayed = _replayed_vectors(world)
    for tx_id, value in chain_features.items():
        got = json.loads(value)["features"]
        assert [got[n] for n in FEATURE_NAMES] == [replayed[tx_id][n] for n in FEATURE_NAMES]


def _replayed_vectors(world: list[Event]) -> dict[str, dict[str, Any]]:
    scorer = Scorer()
    out = {}
    for event in world:
        if isinstance(event, Transaction):
            out[event.tx_id] = scorer.decide(event, decided_at=0)[1]
        else:
            scorer.apply(event, decided_at=0)
    return out


class RefusingStore(MemoryDecisionStore):
    """Takes full checkpoints; a delta finds the chain moved on (another writer's)."""

    async def save_checkpoint(
        self, name: str, blob: bytes, *, generation: str | None = None, extends: str | None = None
    ) -> None:
        if extends is not None:
            raise CheckpointConflict(name)
        await super().save_checkpoint(name, blob, generation=generation, extends=extends)


def test_a_round_not_written_is_followed_by_a_full_one_and_acknowledges_nothing(
    world: list[Event],
) -> None:
    store = RefusingStore()
    proc, _ = _worker(store, full_every=10)
    writer = _writer(proc, store)
    acked: list[Any] = []
    writer.ack = acked.append
    messages = _messages(world)
    _feed(proc, messages[:500])
    writer.hold(["a"])
    asyncio.run(writer.checkpoint())
    assert acked == ["a"]
    _feed(proc, messages[500:900])
    writer.hold(["b"])
    asyncio.run(writer.checkpoint())  # deltas: refused
    assert acked == ["a"] and writer.held == ["b"]
    assert all(chain.tip is None for chain in proc.shards.chains.values())
    _feed(proc, messages[900:1200])
    asyncio.run(writer.checkpoint())  # full again: written
    assert acked == ["a", "b"] and writer.held == []
    whole, _ = proc.shards.checkpoints()
    for unit, snapshot in whole.items():
        assert _flat(load_checkpoint(store.checkpoints[unit])) == _flat(load_checkpoint(snapshot()))


def test_a_delta_extends_only_the_tip_it_was_planned_on() -> None:
    store = MemoryDecisionStore()
    asyncio.run(store.save_checkpoint("u", b"full", generation="a"))
    asyncio.run(store.save_checkpoint("u", b"d1", generation="b", extends="a"))
    with pytest.raises(CheckpointConflict):  # "a" is no longer the tip
        asyncio.run(store.save_checkpoint("u", b"d2", generation="c", extends="a"))
    assert chain_pieces(asyncio.run(store.load_checkpoint("u")) or b"") == [b"full", b"d1"]
    asyncio.run(store.save_checkpoint("u", b"new", generation="d"))
    assert asyncio.run(store.load_checkpoint("u")) == b"new"  # a lone full one: as before


def test_a_chain_of_one_is_the_plain_pickle_earlier_releases_read() -> None:
    blob = pickle.dumps({"x": 1})
    assert chain_blob([blob]) == blob and chain_pieces(blob) == [blob]
    joined = chain_blob([blob, b"", b"\x00" * 9])
    assert chain_pieces(joined) == [blob, b"", b"\x00" * 9]


def test_stages_mark_touched_keys_only_when_asked_and_never_checkpoint_them(
    world: list[Event],
) -> None:
    engine = FeatureEngine()  # replay: nothing marked, nothing grows
    users, entities = engine.users, engine.entities
    assert users.changes is None and entities.changes is None
    marks = users.track_changes(), entities.track_changes()
    for event in itertools.islice(world, 400):
        if isinstance(event, Transaction):
            engine.vector(event)
        elif isinstance(event, Signup):
            engine.signup(event)
        elif isinstance(event, PlatformEvent):
            engine.platform_event(event)
        else:
            engine.label(event)
    user_marks, entity_marks = marks[0].take(), marks[1].take()
    held = set(users.user.profiles) | set(users.user.activity) | set(users.platform.state)
    assert user_marks["users"] == held
    assert entity_marks["merchants"] == set(entities.merchant.state)
    assert entity_marks["devices"] >= set(entities.device.state)
    assert marks[0].take()["users"] == set()  # taken: a fresh start
    for stage in (users, entities):
        restored = pickle.loads(pickle.dumps(stage))
        assert isinstance(restored, (UserStage, EntityStage)) and restored.changes is None


def test_a_pointer_written_before_deltas_names_its_one_piece() -> None:
    old = json.dumps({"generation": "g", "chunks": 2})  # what earlier releases wrote
    assert piece_keys("cp", old) == [["cp:g:0", "cp:g:1"]]
    _, pointer = checkpoint_plan("cp", b"x", generation="h")
    assert piece_keys("cp", pointer) == [["cp:h:0"]]
    chained = json.dumps({**json.loads(pointer), "deltas": [["i", 1], ["j", 2]], "tip": "j"})
    assert chunk_keys("cp", chained) == ["cp:h:0", "cp:i:0", "cp:j:0", "cp:j:1"]


def test_a_shard_installed_or_released_starts_its_chain_again(world: list[Event]) -> None:
    store = MemoryDecisionStore()
    proc, _ = _worker(store, full_every=5)
    writer = _writer(proc, store)
    _feed(proc, _messages(world)[:400])
    asyncio.run(writer.checkpoint())
    asyncio.run(writer.checkpoint())
    assert len(store.chains["user-0"]) == 2
    proc.shards.release(["user-0"])
    assert "user-0" not in proc.shards.chains
    proc.shards.install("user-0", store.checkpoints["user-0"])
    assert proc.shards.chains["user-0"].tip is None  # its next checkpoint is full
    asyncio.run(writer.checkpoint())
    assert len(store.chains["user-0"]) == 1 and len(store.chains["entity-0"]) == 3
