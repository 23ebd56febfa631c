"""The shard protocol gives the one-process features and decisions, whatever the schedule.

A simulated cluster runs P user shards and Q entity shards over in-memory topics. A seeded
scheduler interleaves deliveries at random (the topics drift apart as they would on real
brokers), checkpoints shards at random moments, crashes them (restoring the newest
checkpoint and rewinding their input to its offsets, as Kafka redelivers after a restart),
and duplicates envelopes (a producer retry). Every transaction must be decided, and its
first decision's feature vector must equal the one-process `Scorer`'s: any shortcut in the
watermarks, the dedupe by identity, the floors or the orphan results shows up as a
difference here.
"""

from __future__ import annotations

import itertools
import pickle
import random
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from features.engine import FEATURE_NAMES, EngineConfig, FeatureEngine
from features.platform import PLATFORM_FEATURES
from features.referral import depth_walk, run_walk
from features.stages import EntityStage, UserStage
from graph.layer import (
    GRAPH_EVENT_KINDS,
    MERCHANT_RINGS,
    GraphLayer,
    Ring,
    RingEvent,
    RingScore,
    merchant_ring_counts,
)
from graph.rings import (
    BINDING_RING,
    COMMISSION_CYCLE,
    COUPON_FARM,
    POINTS_COLLECTOR,
    SIGNUP_BATCH,
)
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import (
    LABELS,
    PLATFORM_EVENTS,
    SIGNUPS,
    TRANSACTIONS,
    Decision,
    Label,
    PlatformEvent,
    RebateAdjustment,
    Signup,
    Transaction,
)
from rebate_guard.contract.validation import parse_platform_event, parse_signup, parse_transaction
from rebate_guard.core.decider import REPEAT_AT_MERCHANT, Decider, Example, Features, Scorer
from rebate_guard.core.ledger import reconcile
from rebate_guard.core.policy import Budget, default_policy
from rebate_guard.core.solvency import SolvencyMonitor
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from rebate_guard.tools.simulator.profiles import FLOW_ABUSE
from streams.shards import (
    GRAPH_PARTITION,
    SOLVENCY_PARTITION,
    TOPIC_CODES,
    EntityShard,
    GraphShard,
    SolvencyShard,
    UserShard,
    load_checkpoint,
    requester_ring,
    ring_of,
)
from streams.shards.checkpoints import chain_blob
from streams.shards.deltas import ENTITY_STORES, USER_STORES, DeltaChain
from streams.shards.peers import PeerExchange
from streams.shards.solvency import Output
from streams.shards.wire import REQUESTER
from tests import factories

CONFIG = EngineConfig()
LATENESS_MS = 2_000


@dataclass
class RecordingDecider(Decider):
    """A decider that records what it learned, and checks at every decision that nothing
    learned so far became known after the transaction's ts (no leakage)."""

    learned: list[tuple[str, int, bool]] = field(default_factory=list)
    #: The newest ts learned (kept, not recomputed: a pass over `learned` per decision made
    #: the cluster runs quadratic).
    newest: int | None = None

    def learn(self, example: Example) -> None:
        self.learned.append((example.tx_id, example.ts, example.fraud))
        self.newest = example.ts if self.newest is None else max(self.newest, example.ts)
        super().learn(example)

    def decide(
        self,
        tx: Transaction,
        vector: list[float | None],
        *,
        decided_at: int,
        standing: Decision | None = None,
        ring: tuple[float, list[str]] | None = None,
        graph_down: bool = False,
    ) -> tuple[Decision, Features]:
        newest = self.newest
        assert newest is None or newest <= tx.ts, f"{tx.tx_id} scored after a later label"
        return super().decide(
            tx, vector, decided_at=decided_at, standing=standing, ring=ring, graph_down=graph_down
        )


def _partition(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) % n


@dataclass
class Cluster:
    n_user: int
    n_entity: int
    rng: random.Random
    inputs: dict[tuple[int, int], list[Event]] = field(default_factory=dict)
    requests: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    results: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    tree: dict[str, tuple[str, int]] = field(default_factory=dict)
    decided: dict[str, dict[str, Any]] = field(default_factory=dict)
    granted: dict[str, bool] = field(default_factory=dict)
    #: The standing decisions (first write wins) and ledger adjustments (by id), as in Redis.
    stood: dict[str, Decision] = field(default_factory=dict)
    adjustments: dict[str, RebateAdjustment] = field(default_factory=dict)
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    crashes: int = 0
    duplicates: int = 0
    #: With a graph shard: what it is sent, what it published, and the ring reasons given.
    with_graph: bool = False
    graph_events: list[bytes] = field(default_factory=list)
    ring_events: list[RingEvent] = field(default_factory=list)
    ring_scores: dict[tuple[str, str], RingScore] = field(default_factory=dict)
    ring_reasons: dict[str, list[str]] = field(default_factory=dict)
    #: With a solvency shard: the movements it is sent, and the readings and alerts it put
    #: out (a period read again after a crash: again); the points decisions that stand.
    with_books: bool = False
    movements: list[bytes] = field(default_factory=list)
    books_outputs: list[Output] = field(default_factory=list)
    points: dict[str, Decision] = field(default_factory=dict)
    #: Every how many checkpoints of a user or entity shard one is full: 1, all of them;
    #: more, deltas in between (`DeltaChain`), restored from the chain as the worker does.
    full_every: int = 1
    chains: dict[str, DeltaChain] = field(default_factory=dict)
    pieces: dict[str, list[bytes]] = field(default_factory=dict)
    #: Restores from a chain holding deltas.
    delta_restores: int = 0

    def __post_init__(self) -> None:
        self.users = {p: self._new_user(p) for p in range(self.n_user)}
        self.entities = {q: self._new_entity(q) for q in range(self.n_entity)}
        self.graph = self._new_graph()
        self.books = self._new_books()
        for p, shard in self.users.items():
            self._track(f"user-{p}", shard)
        for q, entity in self.entities.items():
            self._track(f"entity-{q}", entity)

    def _track(self, name: str, shard: UserShard | EntityShard) -> None:
        """A new chain for a shard created or restored: its next checkpoint is full."""
        if isinstance(shard, UserShard):
            stores, changes = USER_STORES, shard.users.track_changes()
        else:
            stores, changes = ENTITY_STORES, shard.entities.track_changes()
        self.chains[name] = DeltaChain(stores, changes, full_every=self.full_every)

    def _new_user(self, p: int) -> UserShard:
        stage = UserStage(CONFIG.utc_offset_minutes, CONFIG.user_ttl_ms)
        return UserShard(
            p,
            self.n_entity,
            stage,
            RecordingDecider(),
            30 * 86_400_000,
            CONFIG.sweep_every_ms,
            LATENESS_MS,
            n_user=self.n_user,
            feeds_graph=self.with_graph,
        )

    def _new_graph(self) -> GraphShard:
        return GraphShard(GRAPH_PARTITION, self.n_user, GraphLayer())

    def _new_books(self) -> SolvencyShard:
        return SolvencyShard(SOLVENCY_PARTITION, self.n_user, SolvencyMonitor(), 30 * 86_400_000)

    def _new_entity(self, q: int) -> EntityShard:
        return EntityShard(q, self.n_user, EntityStage(CONFIG.user_ttl_ms), CONFIG.sweep_every_ms)

    # --- moving bytes ---------------------------------------------------------------------
    def _flush_user(self, shard: UserShard) -> None:
        for user, referrer, ts in shard.take_tree_writes():
            self.tree[user] = (referrer, ts)  # written before the envelopes, as in the worker
        for q, payload in shard.envelopes():
            self.requests[q].append(payload)
            if self.rng.random() < 0.02:
                self.requests[q].append(payload)  # a producer retry
                self.duplicates += 1
        for g, payload in shard.graph_envelopes():
            assert g == GRAPH_PARTITION
            self.graph_events.append(payload)
            if self.rng.random() < 0.02:
                self.graph_events.append(payload)  # a producer retry
                self.duplicates += 1
        standing = None
        ready = shard.ready()
        if shard.redo:  # as the worker does: look up which are decided already
            standing = {t.tx_id: self.stood[t.tx_id] for t in ready if t.tx_id in self.stood}
        keys = {("u", t.user_id) for t in ready} | {("m", t.merchant_id) for t in ready}
        for user in shard.requesters():  # as the worker reads them (`GraphStatus.ring_keys`)
            keys.add((REQUESTER, user))
        rings = {k: self.ring_scores[k] for k in keys if k in self.ring_scores}
        done = shard.complete(0, standing, rings)
        for decision, x in done.decisions:
            if decision.tx_id not in self.decided:  # first write wins, as in Redis
                self.decided[decision.tx_id] = x
                self.stood[decision.tx_id] = decision
                self.granted[decision.tx_id] = decision.rebate_granted_cents > 0
                self.ring_reasons[decision.tx_id] = [
                    r for r in decision.reasons if r.startswith("ring:")
                ]
        for adjustment in done.adjustments:
            stored = self.adjustments.setdefault(adjustment.adjustment_id, adjustment)
            if stored is not adjustment:  # made before a crash: it stands, the ledger follows
                shard.decider.ledger.follow(stored)
        for points in done.points:
            self.points.setdefault(points.tx_id, points)  # first write wins, as in Redis
        for b, payload in shard.solvency_envelopes():
            assert b == SOLVENCY_PARTITION
            if self.with_books:
                self.movements.append(payload)
                if self.rng.random() < 0.02:
                    self.movements.append(payload)  # a producer retry
                    self.duplicates += 1
        for peer, payload in shard.peer_envelopes():
            self.results[peer].append(payload)
            if self.rng.random() < 0.02:
                self.results[peer].append(payload)  # a producer retry
                self.duplicates += 1

    def deliver_input(self, p: int, code: int, n: int) -> bool:
        shard = self.users[p]
        queue = self.inputs.get((p, code), [])
        start = shard.next_offset.get(code, 0)
        if start >= len(queue):
            return False
        for offset in range(start, min(start + n, len(queue))):
            shard.offer(code, offset, queue[offset])
        self._flush_user(shard)
        return True

    def deliver_requests(self, q: int, n: int) -> bool:
        shard = self.entities[q]
        queue = self.requests[q]
        start = shard.next_offset
        if start >= len(queue):
            return False
        for offset in range(start, min(start + n, len(queue))):
            released = shard.offer(offset, queue[offset])
            assert released is not None
            asked = shard.depth_requests(released)
            depths = {
                key: run_walk(depth_walk(r, u, signup_ts=ts), self.tree.get)
                for key, (r, u, ts) in asked.items()
            }
            shard.apply(released, depths)
        for p, payload in shard.envelopes():
            self.results[p].append(payload)
        return True

    def deliver_graph(self, n: int) -> bool:
        shard = self.graph
        start = shard.next_offset
        if start >= len(self.graph_events):
            return False
        for offset in range(start, min(start + n, len(self.graph_events))):
            released = shard.offer(offset, self.graph_events[offset])
            assert released is not None
            shard.apply(released)
        events, scores = shard.take()
        self.ring_events += events
        for key, score in scores.items():  # as `put_rings` does in Redis
            if score is None:
                self.ring_scores.pop(key, None)
            else:
                self.ring_scores[key] = score
        return True

    def deliver_books(self, n: int) -> bool:
        shard = self.books
        start = shard.next_offset
        if start >= len(self.movements):
            return False
        for offset in range(start, min(start + n, len(self.movements))):
            released = shard.offer(offset, self.movements[offset])
            assert released is not None
            shard.apply(released)
        self.books_outputs += shard.take()
        return True

    def deliver_results(self, p: int, n: int) -> bool:
        shard = self.users[p]
        queue = self.results[p]
        start = shard.next_result_offset
        if start >= len(queue):
            return False
        for offset in range(start, min(start + n, len(queue))):
            shard.results(offset, queue[offset])
        self._flush_user(shard)
        return True

    def idle_exhausted(self) -> None:
        """Inputs with nothing left go quiet, as the worker's idle timer would say."""
        for p, shard in self.users.items():
            for code in TOPIC_CODES.values():
                if shard.next_offset.get(code, 0) >= len(self.inputs.get((p, code), [])):
                    shard.idle(code)
            self._flush_user(shard)

    # --- failures -------------------------------------------------------------------------
    def checkpoint(self, name: str) -> None:
        kind, number = name.split("-")
        if kind == "graph":
            self.checkpoints[name] = self.graph.snapshot()
            return
        if kind == "solvency":
            self.checkpoints[name] = self.books.snapshot()
            return
        chain = self.chains[name]
        if kind == "user":
            shard = self.users[int(number)]
            floor, mark = shard.floor(), shard.books.mark
            plan = chain.plan(shard)
            piece = shard.snapshot(floor, plan)
            shard.durable(floor, mark)  # the write succeeded
        else:
            entity = self.entities[int(number)]
            plan = chain.plan(entity)
            piece = entity.snapshot(plan)
        pieces = self.pieces.get(name, []) if plan.extends is not None else []
        self.pieces[name] = pieces = [*pieces, piece]
        self.checkpoints[name] = chain_blob(pieces)
        chain.written(plan)

    def crash(self, name: str) -> None:
        """Lose everything since the shard's newest checkpoint; its input is re-read from
        the offsets in that checkpoint (or from the start)."""
        self.crashes += 1
        kind, number = name.split("-")
        blob = self.checkpoints.get(name)
        if kind == "user":
            p = int(number)
            self.users[p] = load_checkpoint(blob) if blob else self._new_user(p)
            self.users[p].redo = True
            self._track(name, self.users[p])
        elif kind == "graph":
            self.graph = pickle.loads(blob) if blob else self._new_graph()
        elif kind == "solvency":
            self.books = pickle.loads(blob) if blob else self._new_books()
        else:
            q = int(number)
            self.entities[q] = load_checkpoint(blob) if blob else self._new_entity(q)
            self._track(name, self.entities[q])
        self.delta_restores += len(self.pieces.get(name, ())) > 1

    def run(self, crash_rate: float) -> None:
        names = [f"user-{p}" for p in self.users] + [f"entity-{q}" for q in self.entities]
        if self.with_graph:
            names.append(f"graph-{GRAPH_PARTITION}")
        if self.with_books:
            names.append(f"solvency-{SOLVENCY_PARTITION}")
        idle_steps = 0
        while idle_steps < 50:
            roll = self.rng.random()
            if roll < crash_rate:
                self.crash(self.rng.choice(names))
                continue
            if roll < 0.05:
                self.checkpoint(self.rng.choice(names))
                continue
            n = self.rng.choice((1, 3, 20, 200))
            action = self.rng.randrange(4 if self.with_graph or self.with_books else 3)
            if action == 3:
                moved = self.deliver_graph(n) if self.with_graph else False
                moved |= self.with_books and self.deliver_books(n)
            elif action == 0:
                # The input topics this world has (a schedule does not depend on others).
                code = self.rng.choice(sorted({c for _, c in self.inputs}))
                moved = self.deliver_input(self.rng.randrange(self.n_user), code, n)
            elif action == 1:
                moved = self.deliver_requests(self.rng.randrange(self.n_entity), n)
            else:
                moved = self.deliver_results(self.rng.randrange(self.n_user), n)
            if moved:
                idle_steps = 0
                continue
            idle_steps += 1
            if idle_steps == 25:
                self.idle_exhausted()
        # Then everything left, until nothing moves.
        moved = True
        while moved:
            moved = False
            for p in self.users:
                for code in TOPIC_CODES.values():
                    moved |= self.deliver_input(p, code, 10**6)
            self.idle_exhausted()
            for q in self.entities:
                moved |= self.deliver_requests(q, 10**6)
            for p in self.users:
                moved |= self.deliver_results(p, 10**6)
            moved |= self.with_graph and self.deliver_graph(10**6)
            moved |= self.with_books and self.deliver_books(10**6)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    config = WorldConfig(seed=5, n_users=300, n_merchants=30, days=20, target_transactions=2_500)
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("world"))
    return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


@pytest.fixture(scope="module")
def platform_world(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    """A small world with the platform's events (bindings, commissions, coupons, points)
    and the abuse of those flows the random profile turns on (binding hijacks and farms,
    coupon farms, points collectors)."""
    config = WorldConfig(
        seed=16, n_users=300, n_merchants=30, days=20, target_transactions=2_500, **FLOW_ABUSE
    )
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("platform_world"))
    files = EventFiles(
        paths["transactions"], paths["signups"], paths["labels"], None, paths["platform_events"]
    )
    return list(files)


@dataclass
class Replayed:
    """What one process makes of a world: each transaction's features and decision, each
    points request's decision, and the decider (what it learned)."""

    vectors: dict[str, dict[str, Any]]
    decisions: dict[str, Decision]
    points: dict[str, Decision]
    decider: RecordingDecider
    #: The ledger's adjustments, by id (a held points request's resolution among them).
    adjustments: dict[str, RebateAdjustment] = field(default_factory=dict)


def _replay(world: list[Event]) -> Replayed:
    decider = RecordingDecider()
    scorer = Scorer(features=FeatureEngine(CONFIG), decider=decider)
    out = Replayed({}, {}, {}, decider)
    for event in world:
        if isinstance(event, Transaction):
            decision, out.vectors[event.tx_id] = scorer.decide(event, decided_at=0)
            out.decisions[event.tx_id] = decision
        else:
            points = scorer.apply(event, decided_at=0)
            if points is not None:
                out.points[points.tx_id] = points
    out.adjustments = {a.adjustment_id: a for a in scorer.adjustments}
    return out


@pytest.fixture(scope="module")
def replayed(world: list[Event]) -> tuple[dict[str, dict[str, Any]], RecordingDecider]:
    done = _replay(world)
    return done.vectors, done.decider


@pytest.fixture(scope="module")
def platform_replayed(platform_world: list[Event]) -> Replayed:
    return _replay(platform_world)


@pytest.fixture(scope="module")
def expected(
    replayed: tuple[dict[str, dict[str, Any]], RecordingDecider],
) -> dict[str, dict[str, Any]]:
    return replayed[0]


#: A cluster run: (world fixture, n_user, n_entity, seed, crash_rate, envelope_items,
#: full_every, redelivered).
RunKey = tuple[str, int, int, int, float, int, int, float]


#: The runs two tests assert different things of (`_run` keeps these alone: a run holds
#: every shard's state).
SHARED_RUNS: set[RunKey] = {
    ("platform_world", 1, 1, 16, 0.0, 256, 1, 0.02),
    ("platform_world", 1, 3, 17, 0.006, 256, 3, 0.02),
}


@pytest.fixture(scope="module")
def cluster_runs() -> dict[RunKey, Cluster]:
    """The shared cluster runs made so far in this module (`SHARED_RUNS`, `_run`)."""
    return {}


def _run(request: pytest.FixtureRequest, key: RunKey) -> Cluster:
    """The cluster run `key`; made once per module if shared (read it, never change it)."""
    runs: dict[RunKey, Cluster] = request.getfixturevalue("cluster_runs")
    if key not in runs:
        world, n_user, n_entity, seed, crash_rate, envelope_items, full_every, redelivered = key
        events: list[Event] = request.getfixturevalue(world)
        cluster = _cluster(
            events, n_user, n_entity, seed, full_every=full_every, redelivered=redelivered
        )
        # Small envelopes split batches: only the last piece may move the watermark.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("streams.shards.wire.ENVELOPE_ITEMS", envelope_items)
            cluster.run(crash_rate)
        if key not in SHARED_RUNS:
            return cluster
        runs[key] = cluster
    return runs[key]


def _cluster(
    world: list[Event],
    n_user: int,
    n_entity: int,
    seed: int,
    with_graph: bool = False,
    with_books: bool = False,
    *,
    full_every: int = 1,
    redelivered: float = 0.0,
) -> Cluster:
    """A cluster with `world` in its input topics; a platform event is sent a second time
    (a producer retry: the same event_id, the next offset) with odds `redelivered`."""
    cluster = Cluster(
        n_user,
        n_entity,
        random.Random(seed),
        with_graph=with_graph,
        with_books=with_books,
        full_every=full_every,
    )
    retries = random.Random(seed + 1)
    for event in world:  # keyed as the contract says; each partition in ts order
        if isinstance(event, Transaction):
            key, topic = event.user_id, TRANSACTIONS
        elif isinstance(event, Signup):
            key, topic = event.user_id, SIGNUPS
        elif isinstance(event, PlatformEvent):
            key, topic = event.user_id or event.merchant_id or event.event_id, PLATFORM_EVENTS
        else:
            assert isinstance(event, Label)
            key, topic = event.tx_id or event.user_id or "", LABELS
        partition = (_partition(key, n_user), TOPIC_CODES[topic])
        cluster.inputs.setdefault(partition, []).append(event)
        if isinstance(event, PlatformEvent) and retries.random() < redelivered:
            cluster.inputs[partition].append(event)
    return cluster


@pytest.mark.parametrize(
    ("with_platform", "n_user", "n_entity", "seed", "crash_rate", "envelope_items", "full_every"),
    [
        (False, 1, 1, 1, 0.0, 256, 1),
        (False, 3, 4, 2, 0.0, 256, 1),
        (False, 4, 3, 3, 0.004, 256, 1),
        (False, 2, 5, 4, 0.01, 5, 1),
        (True, 1, 1, 16, 0.0, 256, 1),  # the runs of `test_one_partition_decides_...` too
        (True, 1, 3, 17, 0.006, 256, 3),
        (True, 3, 4, 18, 0.006, 256, 4),
        (True, 2, 5, 19, 0.01, 5, 1),
    ],
)
def test_every_schedule_gives_the_one_process_vectors(
    request: pytest.FixtureRequest,
    with_platform: bool,
    n_user: int,
    n_entity: int,
    seed: int,
    crash_rate: float,
    envelope_items: int,
    full_every: int,
) -> None:
    """With platform events too: learned by the user shard and the entity shards of their
    device, IP and merchant in replay's order, once each (a redelivered event is a repeat),
    across restores from full checkpoints and from chains of deltas."""
    if with_platform:
        world: list[Event] = request.getfixturevalue("platform_world")
        expected: dict[str, dict[str, Any]] = request.getfixturevalue("platform_replayed").vectors
        # Every platform feature says something here (none stuck at its no-event value).
        live = {n for x in expected.values() for n, v in PLATFORM_FEATURES.items() if x[n] != v}
        assert live == set(PLATFORM_FEATURES)
    else:
        world, expected = request.getfixturevalue("world"), request.getfixturevalue("expected")
    redelivered = 0.02 if with_platform else 0.0
    name = "platform_world" if with_platform else "world"
    key = (name, n_user, n_entity, seed, crash_rate, envelope_items, full_every, redelivered)
    cluster = _run(request, key)
    assert set(cluster.decided) == set(expected)  # nothing lost, nothing invented
    # Every engine feature is exact. The decision context (was the refunded payment's rebate
    # granted?) reports the decisions this layout made: each user shard's models learn from
    # its own traffic, so they may decide otherwise than one process would.
    wrong = [
        t
        for t, x in expected.items()
        if [cluster.decided[t][n] for n in FEATURE_NAMES] != [x[n] for n in FEATURE_NAMES]
    ]
    assert not wrong, f"{len(wrong)} vectors differ, first {wrong[0]}"
    refunded = {e.tx_id: e.ref_tx_id for e in world if isinstance(e, Transaction) and e.ref_tx_id}
    seen = [t for t in refunded if cluster.decided[t]["refund_of_granted_rebate"] is not None]
    assert seen
    for tx_id in seen:
        granted = cluster.granted[refunded[tx_id]]
        assert cluster.decided[tx_id]["refund_of_granted_rebate"] == float(granted)
    if crash_rate:
        assert cluster.crashes >= 3
    if crash_rate and full_every > 1:
        assert cluster.delta_restores > 0
    assert sum(s.late for s in cluster.users.values()) == 0
    assert sum(s.late for s in cluster.entities.values()) == 0
    assert cluster.duplicates > 0
    # Bounded bookkeeping: nothing left pending, and orphans only transiently.
    assert all(not s.pending and not s.queue and not s.peers.held for s in cluster.users.values())


#: The rules on the platform features (detectors/rules.py).
PLATFORM_RULES = ("binding_before_big_payment", "binding_farm_device", "coupon_farm_device")


@pytest.mark.parametrize(
    ("n_entity", "seed", "crash_rate", "full_every"), [(1, 16, 0.0, 1), (3, 17, 0.006, 3)]
)
def test_one_partition_decides_a_world_with_platform_events_as_replay_does(
    request: pytest.FixtureRequest,
    platform_replayed: Replayed,
    n_entity: int,
    seed: int,
    crash_rate: float,
    full_every: int,
) -> None:
    """One user partition (its entity families on one entity shard, or split over three):
    every standing decision, on payments and on points requests, is replay's, with platform
    events redelivered and restores mid-way from full checkpoints and from chains of
    deltas; the rules on the platform features fire in it. The very runs whose vectors
    `test_every_schedule_gives_the_one_process_vectors` checks (made once: `_run`)."""
    cluster = _run(
        request, ("platform_world", 1, n_entity, seed, crash_rate, 256, full_every, 0.02)
    )
    want = platform_replayed
    assert {t: d.asdict() for t, d in cluster.stood.items()} == {
        t: d.asdict() for t, d in want.decisions.items()
    }
    assert {t: d.asdict() for t, d in cluster.points.items()} == {
        t: d.asdict() for t, d in want.points.items()
    }
    fired = {r for d in want.decisions.values() for r in d.reasons}
    assert {r for r in fired if any(rule in r for rule in PLATFORM_RULES)}, sorted(fired)
    assert want.points
    # Points requests go through the weight path: the request rules hold some (a collector's
    # redemptions, a day-old account's transfers), and the holds resolve as replay's do.
    held = {t: d for t, d in want.points.items() if d.action == "hold"}
    assert {r for d in held.values() for r in d.reasons} >= {"points_collector", "young_account"}
    resolved = {i: a for i, a in want.adjustments.items() if a.tx_id in held}
    assert resolved
    assert {i: cluster.adjustments[i].asdict() for i in resolved} == {
        i: a.asdict() for i, a in resolved.items()
    }
    if crash_rate:
        assert cluster.crashes >= 3 and cluster.delta_restores > 0


@pytest.mark.parametrize(("n_user", "seed", "crash_rate"), [(3, 6, 0.0), (4, 7, 0.006)])
def test_every_user_shard_learns_every_label_once_and_never_early(
    world: list[Event],
    replayed: tuple[dict[str, dict[str, Any]], RecordingDecider],
    n_user: int,
    seed: int,
    crash_rate: float,
) -> None:
    """Labels reach the shard that decided their transactions wherever they were keyed, and
    the examples reach every other shard: each shard's classifier learns exactly what one
    process learns, once each (duplicated and re-sent messages included), and none before a
    transaction it had not scored yet (`RecordingDecider.decide` checks)."""
    cluster = _cluster(world, n_user, 3, seed)
    cluster.run(crash_rate)
    want = Counter(replayed[1].learned)
    assert len(want) > 20 and any(fraud for _, _, fraud in want)
    for shard in cluster.users.values():
        decider = shard.decider
        assert isinstance(decider, RecordingDecider)
        assert Counter(decider.learned) == want, f"user shard {shard.partition}"
        assert decider.model.classifier.n_learned == sum(want.values())
    if crash_rate:
        assert cluster.crashes >= 3


@pytest.mark.parametrize("decided_before", [None, False, True])
def test_a_re_decided_payment_keeps_its_standing_grant_for_later_refunds(
    decided_before: bool | None,
) -> None:
    """After a restart a shard re-decides what it decided after its checkpoint; the first
    decision stands, and a refund decided later must see whether *that* one granted."""
    payment = parse_transaction(factories.tx("p1", factories.T0))
    refund = parse_transaction(
        factories.tx("r1", factories.T0 + factories.HOUR, kind="refund", ref_tx_id="p1")
    )
    cluster = _cluster([payment, refund], 1, 1, seed=8)
    if decided_before is not None:  # as if the crashed run had stored this decision
        cluster.decided["p1"] = {}
        cluster.granted["p1"] = decided_before
        cluster.stood["p1"] = factories.decision(
            "p1", "allow" if decided_before else "block", ts=payment.ts
        )
    cluster.run(crash_rate=0.0)
    # A fresh model grants a first small payment in full: what it sees without a standing
    # decision.
    expected = 1.0 if decided_before is None else float(decided_before)
    assert cluster.decided["r1"]["refund_of_granted_rebate"] == expected
    assert not cluster.users[0].redo  # the refund was new: re-deciding is over


@pytest.fixture(scope="module")
def ring_world(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    """A small world with many abuse groups (so with rings to find)."""
    config = WorldConfig(
        seed=11, n_users=400, n_merchants=30, days=20, target_transactions=4_000, fraud_scale=25
    )
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("ring_world"))
    return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


@pytest.fixture(scope="module")
def ring_replayed(ring_world: list[Event]) -> list[RingEvent]:
    """The ring events replay's one process announces on `ring_world`."""
    scorer = Scorer(graph=GraphLayer())
    for event in ring_world:
        scorer.apply(event, decided_at=0)
    return scorer.ring_events


@pytest.mark.parametrize(
    ("n_user", "seed", "crash_rate"), [(1, 9, 0.0), (3, 10, 0.0), (4, 12, 0.006)]
)
def test_the_graph_shard_finds_exactly_the_rings_of_replay(
    ring_world: list[Event],
    ring_replayed: list[RingEvent],
    n_user: int,
    seed: int,
    crash_rate: float,
) -> None:
    """Fed by every user shard in event-time order, the graph shard announces the same
    ring events as replay's one process (repeats after a restore aside: at-least-once),
    and decisions made after a ring was published carry its reason code."""
    want = ring_replayed
    assert len({e.ring_id for e in want}) >= 3, "the world should hold rings"
    cluster = _cluster(ring_world, n_user, 2, seed, with_graph=True)
    cluster.run(crash_rate)
    got = list({(e.ring_id, e.version): e for e in cluster.ring_events}.values())
    assert got == want
    assert cluster.graph.late == 0
    if crash_rate:
        assert cluster.crashes >= 3
    # Ring scores reached the decisions: members' later transactions name the ring.
    flagged = {u for e in want if e.status == "active" for u in e.users}
    named = {
        tx.user_id
        for tx in ring_world
        if isinstance(tx, Transaction) and cluster.ring_reasons.get(tx.tx_id)
    }
    assert named and named <= flagged | _merchant_ring_customers(ring_world, want)


@pytest.mark.parametrize("n_user", [1, 2])
def test_the_graph_shard_finds_the_rings_of_bindings_and_transfers_as_replay_does(
    platform_world: list[Event], n_user: int
) -> None:
    """With platform events (some redelivered) the user shards (one, or two) send the graph
    shard the bindings, commissions, coupon uses and points transfers it reads, in
    event-time order with the signups and transactions: its ring events, binding rings,
    points collectors, commission cycles and coupon farms among them, are replay's, across
    crashes. (Only the platform events
    the graph reads: the others go nowhere near it, and would only slow the test down.)"""
    world = [
        e for e in platform_world if not isinstance(e, PlatformEvent) or e.kind in GRAPH_EVENT_KINDS
    ]
    scorer = Scorer(graph=GraphLayer())
    for event in world:
        scorer.apply(event, decided_at=0)
    want = scorer.ring_events
    assert {BINDING_RING, COMMISSION_CYCLE, COUPON_FARM, POINTS_COLLECTOR} <= {e.kind for e in want}
    cluster = _cluster(world, n_user, 1, seed=17, with_graph=True, redelivered=0.02)
    cluster.run(crash_rate=0.006)
    got = list({(e.ring_id, e.version): e for e in cluster.ring_events}.values())
    assert got == want
    assert cluster.graph.late == 0 and cluster.crashes >= 3
    # What it published for the scoring path is replay's ring book: each member's strongest
    # ring, and the one its points requests read (none of them a signup batch).
    assert scorer.graph is not None
    book = scorer.graph.book
    for user, rings in book.by_user.items():
        assert cluster.ring_scores.get(("u", user)) == book.best(rings)
        assert cluster.ring_scores.get((REQUESTER, user)) == book.best_for_request(rings)


def _points_asked(users: tuple[str, ...]) -> list[Event]:
    """Old accounts, each given points, then each asking to redeem some, an hour apart."""
    events: list[Event] = [
        parse_signup(factories.signup(user, factories.T0 - 90 * factories.DAY)) for user in users
    ]
    asks = [(kind, user) for kind in ("points_grant", "points_redeem") for user in users]
    for i, (kind, user) in enumerate(asks):
        fields = {"event_id": f"{kind}-{user}", "ts": factories.T0 + i * factories.HOUR}
        amount = 5_000 if kind == "points_grant" else 1_000
        events.append(
            parse_platform_event({**fields, "kind": kind, "user_id": user, "amount_cents": amount})
        )
    return events


def _replayed(events: list[Event], layer: GraphLayer) -> dict[str, Any]:
    """Replay's decisions on `events` by id, with the ring book of `layer`."""
    scorer = Scorer(features=FeatureEngine(CONFIG), decider=RecordingDecider(), graph=layer)
    decided = (scorer.apply(event, decided_at=0) for event in events)
    return {d.tx_id: d for d in decided if d is not None}


def test_the_worker_weighs_a_points_request_with_its_requesters_ring_as_replay_does() -> None:
    """A points request is weighed with its requester's ring: the worker's user shard reads
    the ring score the graph shard published for the user (`requester_ring`), replay its
    ring book (`Scorer.requester_ring`): a ring member's voucher is held in both, the same
    decision, and a shopper's allowed."""
    events = _points_asked(("member", "shopper"))
    layer = GraphLayer()
    ring = Ring("r1", "brushing", frozenset({"member"}), frozenset({"m1"}), 0.9, 0, 0, {}, 0)
    layer.book.rings["r1"] = ring
    layer.book.by_user["member"] = {"r1"}
    want = _replayed(events, layer)
    cluster = _cluster(events, 1, 1, seed=5)
    for key in (("u", "member"), (REQUESTER, "member")):  # as the graph shard puts them
        cluster.ring_scores[key] = layer.book.best({"r1"})
    cluster.run(crash_rate=0.0)
    assert {t: d.asdict() for t, d in cluster.points.items()} == {
        t: d.asdict() for t, d in want.items()
    }
    held, allowed = want["points_redeem-member"], want["points_redeem-shopper"]
    assert (held.action, held.reasons) == ("hold", ["requester_in_ring"])
    assert (allowed.action, allowed.reasons) == ("allow", [])
    assert cluster.users[0].requesters() == []  # all decided
    asked = events[-2]
    assert isinstance(asked, PlatformEvent)
    assert requester_ring(asked, {}) is None


def test_a_points_request_reads_the_scheme_a_stronger_signup_batch_would_hide() -> None:
    """A member of a signup batch (0.95) and of a points collectors' ring (0.6): its points
    request reads its strongest ring that is not a batch, and `requester_in_ring` holds it,
    in the worker (the graph shard's `REQUESTER` score) and in replay (the ring book) alike.
    Read as its strongest ring, the batch's excuse let the scheme's voucher through. A user in
    the batch alone is excused. Without the requests' own key a request reads no ring (a graph
    shard restored from before the key publishes it for every member: the next test)."""
    users = ("member", "batchmate")
    events = _points_asked(users)
    layer = GraphLayer()
    book = layer.book
    for ring in (
        Ring("r0", SIGNUP_BATCH, frozenset(users), frozenset(), 0.95, 0, 0, {}, 0),
        Ring("r1", POINTS_COLLECTOR, frozenset({"member"}), frozenset(), 0.6, 0, 0, {}, 0),
    ):
        book.rings[ring.ring_id] = ring
        for user in ring.users:
            book.by_user.setdefault(user, set()).add(ring.ring_id)
    assert layer.ring_score("member", None) == (0.95, ["ring:signup_batch"])
    assert layer.requester_ring("member") == (0.6, ["ring:points_collector"])
    assert layer.requester_ring("batchmate") == (0.0, [])
    want = _replayed(events, layer)
    held, excused = want["points_redeem-member"], want["points_redeem-batchmate"]
    assert (held.action, held.reasons) == ("hold", ["requester_in_ring"])
    assert (excused.action, excused.reasons) == ("allow", [])
    for published_for_requests in (True, False):
        cluster = _cluster(events, 1, 1, seed=5)
        for user in users:  # as the graph shard puts them (`GraphInbox`; None: deleted)
            rings = book.by_user[user]
            cluster.ring_scores[("u", user)] = book.best(rings)
            asked = book.best_for_request(rings)
            if published_for_requests and asked is not None:
                cluster.ring_scores[(REQUESTER, user)] = asked
        cluster.run(crash_rate=0.0)
        got = cluster.points["points_redeem-member"]
        if published_for_requests:
            assert {t: d.asdict() for t, d in cluster.points.items()} == {
                t: d.asdict() for t, d in want.items()
            }
        else:
            assert (got.action, got.reasons) == ("allow", [])
    # A user in batches alone has no request key (deleted): its batch is not read.
    redeem = next(e for e in events if getattr(e, "event_id", "") == "points_redeem-batchmate")
    assert isinstance(redeem, PlatformEvent)
    assert requester_ring(redeem, {("u", "batchmate"): book.best({"r0"})}) is None


def test_a_graph_shard_from_before_the_requests_ring_key_publishes_it_for_every_member() -> None:
    """Restored from a checkpoint from before the requests' ring key, the graph shard queues
    that key for every user in a ring (None: in batches alone, deleted), so that members of
    rings that stand do not read their strongest ring until their next ring event."""
    shard = GraphShard(0, 1, GraphLayer())
    book = shard.layer.book
    for ring in (
        Ring("r0", SIGNUP_BATCH, frozenset({"member", "mate"}), frozenset(), 0.95, 0, 0, {}, 0),
        Ring("r1", POINTS_COLLECTOR, frozenset({"member"}), frozenset(), 0.6, 0, 0, {}, 0),
    ):
        book.rings[ring.ring_id] = ring
        for user in ring.users:
            book.by_user.setdefault(user, set()).add(ring.ring_id)
    state = dict(shard.__dict__)
    del state["requesters_published"]
    old = GraphShard.__new__(GraphShard)
    old.__setstate__(state)
    assert old.take()[1] == {(REQUESTER, "member"): book.best({"r1"}), (REQUESTER, "mate"): None}
    again = pickle.loads(pickle.dumps(old))  # and once only
    assert again.take()[1] == {}


def test_the_worker_and_replay_give_a_transaction_the_same_ring() -> None:
    """The worker reads the ring scores the graph shard published (`ring_of`), replay asks its
    ring book (`GraphLayer.ring_score`): both choose with `graph.layer.ring_score_of`, the
    strongest ring of the user and (for a returning customer) of the merchant."""
    layer = GraphLayer()
    book = layer.book
    for ring_id, kind, users, merchants, score in [
        ("r1", "collusion", {"u1"}, {"m1"}, 0.7),
        ("r2", "referral_farm", {"u1", "u2"}, {"m1"}, 0.7),  # ties r1: the first id wins
        ("r3", "brushing", {"u3"}, {"m2"}, 0.9),
    ]:
        book.rings[ring_id] = Ring(
            ring_id, kind, frozenset(users), frozenset(merchants), score, 0, 0, {}, 0
        )
        for user in users:
            book.by_user.setdefault(user, set()).add(ring_id)
        for merchant in merchants if kind in MERCHANT_RINGS else ():
            book.by_merchant.setdefault(merchant, set()).add(ring_id)
    published = {("u", u): book.best(ids) for u, ids in book.by_user.items()}
    published |= {("m", m): book.best(ids) for m, ids in book.by_merchant.items()}
    given = {}
    for user, merchant, returning in itertools.product(
        ["u1", "u2", "u3", "u4"], ["m1", "m2", "m9"], [None, 0.0, 2.0]
    ):
        tx = parse_transaction(factories.tx(user_id=user, merchant_id=merchant))
        vector: list[float | None] = [0.0] * len(FEATURE_NAMES)
        vector[REPEAT_AT_MERCHANT] = returning
        counted = merchant if merchant_ring_counts(returning) else None
        given[user, merchant, returning] = ring_of(tx, vector, published)
        assert (given[user, merchant, returning] or (0.0, [])) == layer.ring_score(user, counted)
    assert given["u1", "m9", None] == (0.7, ["ring:collusion"])
    assert given["u2", "m1", 0.0] == (0.7, ["ring:referral_farm"])
    assert given["u2", "m1", 2.0] == (0.7, ["ring:collusion"])
    assert given["u4", "m2", 2.0] == (0.9, ["ring:brushing"])
    assert given["u4", "m1", None] is None


def _merchant_ring_customers(world: list[Event], rings: list[RingEvent]) -> set[str]:
    """Users who paid a merchant flagged as a member of a ring (they get its score)."""
    merchants = {m for e in rings if e.kind in MERCHANT_RINGS for m in e.merchants}
    return {t.user_id for t in world if isinstance(t, Transaction) and t.merchant_id in merchants}


@pytest.mark.parametrize(
    ("n_user", "seed", "crash_rate"), [(1, 13, 0.0), (3, 14, 0.0), (4, 15, 0.006)]
)
def test_the_ledger_reconciles_with_n_partitions_and_crashes(
    ring_world: list[Event], n_user: int, seed: int, crash_rate: float
) -> None:
    """Labels, refunds and hold timeouts adjust each rebate where it was decided; with
    crashes the standing adjustments (first write wins by id) still add up, on the
    standing decisions, to requested = granted + held + voided, each moved once. With one
    partition and no crash they are replay's exactly."""
    cluster = _cluster(ring_world, n_user, 2, seed)
    cluster.run(crash_rate)
    made = list(cluster.adjustments.values())
    books = reconcile(cluster.stood.values(), made)
    assert {a.kind for a in made} == {"release", "void", "clawback"}
    assert sum(b[2] for b in books.values()) < sum(b[0] for b in books.values())
    if crash_rate:
        assert cluster.crashes >= 3
    if n_user == 1 and not crash_rate:
        scorer = Scorer()
        for event in ring_world:
            scorer.apply(event, decided_at=0)
        assert [a.asdict() for a in made] == [a.asdict() for a in scorer.adjustments]


def test_one_partition_decides_with_the_friction_budget_as_replay_does(
    ring_world: list[Event],
) -> None:
    """The budget's cut for an epoch comes only from the payments and labels before it:
    a one-partition worker (and its checkpoints' deciders) and replay decide alike."""
    policy = replace(
        default_policy(), budget=Budget(window_days=2, update_minutes=30, min_payments=100)
    )
    cluster = _cluster(ring_world, 1, 2, seed=5)
    cluster.users[0].decider.policy = policy
    cluster.run(0.0)
    scorer = Scorer(decider=Decider(policy=policy))
    replayed = [scorer.apply(event, decided_at=0) for event in ring_world]
    want = {d.tx_id: (d.action, d.threshold_version) for d in replayed if d is not None}
    got = {t: (d.action, d.threshold_version) for t, d in cluster.stood.items()}
    assert got == want
    assert sum(v.startswith("budget:") for _, v in want.values()) > len(want) / 2


def test_a_peers_example_says_whether_it_is_a_review_of_the_sample() -> None:
    """The classifier alone learns a review of the sample, on every shard: the flag travels
    with the example; a peer from before the sample sends ten fields (not sampled)."""
    exchange = PeerExchange(partition=1, n_user=2)
    sent = ["x", 0, "code", 5, "label-1", "t1", True, 0.9, factories.T0, {"f": 1.0}]
    old = ["x", 0, "code", 6, "label-2", "t2", True, 0.9, factories.T0, {"f": 1.0}]
    exchange.hear(0, [[*sent, True], old])
    heard = [entry.event for entry in exchange.due(factories.T0 + 1, drained=True)]
    assert all(isinstance(example, Example) for example in heard)
    assert {(e.tx_id, e.sampled) for e in heard if isinstance(e, Example)} == {
        ("t1", True),
        ("t2", False),
    }
