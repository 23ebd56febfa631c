"""The two-stage split of the feature engine gives the one-process numbers on any layout.

Each family may only read and write the state under its own key; if one did not (a merchant
family peeking at another merchant, a label needing a payment held elsewhere), splitting the
keys over partitions would change some feature. Here the same events run through one
`FeatureEngine` and through P user-stage and Q entity-stage partitions driven the way the live
worker drives them (routes, label broadcast, spliced partial results, each partition sweeping
on its own clock), and every vector must be identical.
"""

from __future__ import annotations

import zlib

import pytest

from features.engine import EngineConfig, FeatureEngine
from features.referral import ReferralTree
from features.stages import (
    EntityStage,
    SweepClock,
    UserStage,
    signup_routes,
    splice,
    transaction_routes,
)
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Label, Signup, Transaction
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from tests.factories import DAY, HOUR


class Partitioned:
    """The stages laid out over partitions, in one process, in event order."""

    def __init__(self, config: EngineConfig, n_user: int, n_entity: int) -> None:
        ttl = config.user_ttl_ms
        self.users = [UserStage(config.utc_offset_minutes, ttl) for _ in range(n_user)]
        self.entities = [EntityStage(ttl) for _ in range(n_entity)]
        self.tree = ReferralTree()
        # Each partition sweeps on its own clock, as in the worker.
        self.clocks = {id(s): SweepClock(config.sweep_every_ms) for s in self.all_stages()}
        self.swept = 0

    def all_stages(self) -> list[UserStage | EntityStage]:
        return [*self.users, *self.entities]

    def _tick(self, stage: UserStage | EntityStage, ts: int) -> None:
        if self.clocks[id(stage)].due(ts):
            self.swept += stage.sweep(ts)

    def _user_stage(self, user_id: str) -> UserStage:
        return self.users[zlib.crc32(user_id.encode()) % len(self.users)]

    def apply(self, event: Event) -> list[float | None] | None:
        n = len(self.entities)
        if isinstance(event, Label):
            for stage in self.entities:  # broadcast: a label names no merchant
                self._tick(stage, event.ts)
                stage.label(event)
            return None
        users = self._user_stage(event.user_id)
        self._tick(users, event.ts)
        if isinstance(event, Signup):
            if users.signup(event):
                self.tree.signup(event)
                for partition, families in signup_routes(event, n):
                    self._tick(self.entities[partition], event.ts)
                    self.entities[partition].signup(event, families)
            return None
        out, context = users.transaction(event)
        context.depth = self.tree.depth(event.user_id, context)
        parts: dict[int, list[float | None]] = {}
        for partition, families in transaction_routes(event, context, n_partitions=n):
            stage = self.entities[partition]
            self._tick(stage, event.ts)
            parts[families] = values = []
            stage.transaction(event, context, out=values, families=families)
        splice(parts, out)
        return out


@pytest.fixture(scope="module")
def world_events(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    world = simulate_world(
        WorldConfig(seed=11, n_users=400, n_merchants=40, days=30, target_transactions=4_000)
    )
    paths = write_world(world, tmp_path_factory.mktemp("world"))
    return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


@pytest.mark.parametrize(("n_user", "n_entity"), [(1, 1), (1, 4), (3, 4), (4, 7)])
def test_any_layout_gives_the_one_process_vectors(
    world_events: list[Event], n_user: int, n_entity: int
) -> None:
    # A short user TTL so that profile and referrer expiry happen inside the world, where the
    # sweeps of differently-loaded partitions run at different moments.
    config = EngineConfig(user_ttl_ms=4 * DAY, sweep_every_ms=HOUR)
    engine, layout = FeatureEngine(config), Partitioned(config, n_user, n_entity)
    compared = 0
    for event in world_events:
        expected = (
            engine.vector(event)
            if isinstance(event, Transaction)
            else (engine.signup if isinstance(event, Signup) else engine.label)(event)
        )
        got = layout.apply(event)
        assert got == expected, getattr(event, "tx_id", event)
        compared += got is not None
    assert compared > 3_000 and layout.swept > 0
    # The world exercises every family, including referrals and labels.
    assert engine.entities.referral.state and engine.tree.entries
    assert any(m.labelled.labels for m in engine.entities.merchant.state.values())


def test_routes_cover_every_family_exactly_once(world_events: list[Event]) -> None:
    from features.stages import ALL_FAMILIES

    engine = FeatureEngine()
    for event in world_events[:2_000]:
        if not isinstance(event, Transaction):
            continue
        _, context = engine.users.transaction(event)
        masks = [families for _, families in transaction_routes(event, context, n_partitions=5)]
        combined = 0
        for families in masks:
            assert families and not combined & families
            combined |= families
        assert combined == ALL_FAMILIES


def test_splice_refuses_a_missing_family() -> None:
    from features.stages import MERCHANT

    with pytest.raises(ValueError, match="category"):
        splice({MERCHANT: [0.0] * 12}, [])


def test_a_peek_gives_the_next_vector_and_changes_nothing(world_events: list[Event]) -> None:
    # The decision at payment time computes a transaction's features from the state as it
    # stands, without applying it: the same numbers the transaction then gets, and the state
    # byte for byte what it was (windows must not expire early: an event still in flight
    # with an earlier ts would find them gone).
    import pickle

    config = EngineConfig(user_ttl_ms=4 * DAY, sweep_every_ms=HOUR)
    engine = FeatureEngine(config)
    peeked = 0
    for i, event in enumerate(world_events):
        if isinstance(event, Transaction):
            before = pickle.dumps((engine.users, engine.entities)) if i % 50 == 0 else None
            head, context = engine.users.peek(event)
            context.depth = engine.tree.depth(event.user_id, context)
            head += engine.entities.peek(event, context)
            if before is not None:
                assert pickle.dumps((engine.users, engine.entities)) == before
            assert head == engine.vector(event), event.tx_id
            peeked += 1
        elif isinstance(event, Signup):
            engine.signup(event)
        else:
            engine.label(event)
    assert peeked > 3_000
