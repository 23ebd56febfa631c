"""Raw message batches -> shard state machines -> decisions, dead letters, envelopes.

The async driver of `streams.shards`: it owns this worker's user and entity shards (one per
assigned partition), parses input, moves envelopes between the stages, walks the referral
tree in Redis, and publishes decisions. At-least-once input, exactly-once effects:
1. every input message is parsed; what breaks the contract becomes a dead letter with the
   reason;
2. a message at an offset its shard already covers (re-read after a restart) is skipped;
3. user shards order their input by event time and send entity requests; new referral-tree
   entries are written to Redis *before* the envelopes that advance event time past them, so
   an entity shard that walks the tree at ts t finds every signup before t;
4. decisions are stored first-write-wins in Redis (one Lua call; after a restart a
   re-decided transaction finds its earlier decision there, which stands), then the standing
   decisions, their feature vectors and the dead letters are produced and awaited.
Each shard is checkpointed with its own offsets (`checkpoints()`); restoring one and
re-reading its input from those offsets gives exactly the state of an uninterrupted run.
Failures of Redis or the broker are retried (with backoff), never dropped.

Without a broker (Faust's test contexts, unit tests) envelopes are delivered to the local
shards directly, so the same protocol runs end to end in one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from features.referral import TreeEntry, depth_walk
from features.stages import (
    REFERRAL,
    EntityStage,
    UserStage,
    partition_of,
    splice,
    transaction_routes,
)
from features.user import TxContext
from graph.layer import ACTIVE, GraphLayer, RingScore
from rebate_guard.contract.order import Event, order_key
from rebate_guard.contract.records import (
    DEAD_LETTERS,
    DECISIONS,
    ENTITY_REQUESTS,
    ENTITY_RESULTS,
    FEATURES,
    GRAPH_EVENTS,
    LABELS,
    REBATE_ADJUSTMENTS,
    RINGS,
    SIGNUPS,
    TRANSACTIONS,
    DeadLetter,
    Decision,
    Label,
    RebateAdjustment,
    Transaction,
)
from rebate_guard.contract.validation import (
    InvalidEvent,
    decode_json_object,
    parse_label,
    parse_signup,
    parse_transaction,
)
from rebate_guard.core.decider import MAX_REMEMBERED_FEATURES, Decider, Features
from rebate_guard.core.policy import Policy
from rebate_guard.settings import Settings
from streams.alignment import START, Released
from streams.console.store import ConsoleStore, Indexed, resolved_holds
from streams.shards import (
    GRAPH_PARTITION,
    TOPIC_CODES,
    Completed,
    DepthKey,
    DepthRequest,
    EntityShard,
    GraphShard,
    Inbox,
    UserShard,
    load_checkpoint,
    ring_of,
)
from streams.sink import Sink, key_partition
from streams.store import DecisionStore, RingKey

log = logging.getLogger(__name__)

PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    TRANSACTIONS: parse_transaction,
    SIGNUPS: parse_signup,
    LABELS: parse_label,
}

T = TypeVar("T")
S = TypeVar("S", UserShard, EntityShard, GraphShard)


@dataclass(frozen=True)
class RawEvent:
    """A message as it came off the broker (value still bytes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchOutcome:
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    skipped: int = 0  # offsets the state already covered


@dataclass
class Counters:
    """Process-local totals (Redis holds the cluster-wide, exactly-once ones)."""

    batches: int = 0
    events: int = 0
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    retries: int = 0
    checkpoints: int = 0
    envelopes_sent: int = 0
    envelopes_received: int = 0
    stray: int = 0
    #: `POST /score` answers that were provisional (fail closed: nothing granted).
    fail_closed: int = 0
    #: ... of which answered at once because `RG_SCORE_MAX_IN_FLIGHT` requests were in
    #: flight (their transactions produced all the same).
    overload: int = 0
    #: `POST /score` transactions decided at payment time, and those left to the stream
    #: (by why: partitions not here, already in the stream, event time past them, a payment
    #: before them on a shared key not placeable in time, or a failure).
    decided_at_payment: int = 0
    left_to_stream: dict[str, int] = field(default_factory=dict)


def feature_vector_json(decision: Decision, x: dict[str, Any]) -> bytes:
    """A `FeatureVector` record as JSON, built directly: faust's generic record serialiser
    cost ~30% of the worker's throughput for 47-feature vectors (benchmarks/README.md)."""
    vector = {"tx_id": decision.tx_id, "ts": decision.ts, "features": x}
    return json.dumps(vector, separators=(",", ":"), allow_nan=False).encode()


async def run_walks(
    requests: dict[DepthKey, DepthRequest],
    fetch: Callable[[list[str]], Awaitable[dict[str, TreeEntry]]],
) -> dict[DepthKey, int]:
    """Walks the referral tree for each request against an async lookup: one round trip
    per tree level for all of them together. Fresh walks each call, so a retry after a
    failed lookup starts over cleanly."""
    walks = {key: depth_walk(*request) for key, request in requests.items()}
    done: dict[DepthKey, int] = {}
    asking = {key: next(walk) for key, walk in walks.items()}
    while asking:
        entries = await fetch(sorted(set(asking.values())))
        still: dict[tuple[str, int], str] = {}
        for key, user in asking.items():
            try:
                still[key] = walks[key].send(entries.get(user))
            except StopIteration as finished:
                done[key] = finished.value
        asking = still
    return done


def _balances(a: RebateAdjustment) -> tuple[str, int, int, int]:
    """What an adjustment did, apart from when it was made (`decided_at`)."""
    return a.kind, a.granted_cents, a.held_cents, a.voided_cents


def user_unit(partition: int) -> str:
    return f"user-{partition}"


def entity_unit(partition: int) -> str:
    return f"entity-{partition}"


def graph_unit(partition: int) -> str:
    return f"graph-{partition}"


@dataclass
class AtPayment:
    """A transaction being decided at payment time here, until its user shard completes it:
    the decision (None: left to the stream) resolves the stream's wait for it."""

    tx: Transaction
    partition: int
    #: The user and identifiers whose features it changes (see `in_flight_keys`).
    keys: tuple[str, ...]
    decided: asyncio.Future[Decision | None]
    #: Resolved once the stream has it (or it never entered the stream).
    settled: asyncio.Future[None]
    #: Once decided: its user context, decision and full feature vector (what later
    #: payments on its keys apply before their own, while the stream has not got it).
    context: TxContext | None = None
    decision: Decision | None = None
    x: Features | None = None
    #: The entity partitions that have applied it (the stream under way).
    applied_at: set[int] = field(default_factory=set)
    #: Its decision was stored here first and is in the console's views, all but its
    #: history row, which the stream's user shard makes (`BatchProcessor._index`).
    indexed: bool = False


def in_flight_keys(tx: Transaction) -> tuple[str, ...]:
    """The keys a transaction decided at payment time is found by, until the stream has
    it: its user and identifiers. A later payment on one of them is decided with it applied
    first (on the copies of the state it reads), so bursts count exactly. Merchant and
    category figures aggregate many users: another user's payment in flight there, on none
    of these keys, is not applied (docs/policy.md)."""
    keys = [f"u:{tx.user_id}"]
    for kind, key in (("m", tx.merchant_id), ("d", tx.device_id), ("i", tx.ip), ("c", tx.card_id)):
        if key is not None:
            keys.append(f"{kind}:{key}")
    return tuple(keys)


@dataclass(frozen=True)
class _Fetched:
    referral: tuple[str | None, int | None]
    depth: int
    rings: dict[RingKey, RingScore] | None
    graph_down: bool


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Marks a background task's exception as seen (its awaiter may have gone)."""
    if not task.cancelled():
        task.exception()


class LeftToStream(Exception):
    """Why a transaction cannot be decided at payment time (a counter name)."""


class _Waiting(Exception):
    """A transaction before this one cannot be placed yet: wait for `until`."""

    def __init__(self, until: asyncio.Future[Any]) -> None:
        self.until = until


#: How long a decision at payment time waits for a transaction before it, on one of its
#: keys, that is half-way into the stream (or still being decided) to be placeable.
EARLIER_WAIT_S = 0.1


@dataclass
class BatchProcessor:
    store: DecisionStore
    sink: Sink
    settings: Settings
    clock: Callable[[], float] = time.time
    #: Deliver envelopes to this process's own shards instead of producing them (no broker).
    loopback: bool = False
    counters: Counters = field(default_factory=Counters)
    retry_base_s: float = 0.2
    retry_max_s: float = 5.0
    users: dict[int, UserShard] = field(default_factory=dict)
    entities: dict[int, EntityShard] = field(default_factory=dict)
    graphs: dict[int, GraphShard] = field(default_factory=dict)
    #: Wall-clock time each (user partition, topic code) last delivered (not checkpointed).
    heard: dict[tuple[int, int], float] = field(default_factory=dict)
    #: Whether this worker has read all a partition holds: (topic, partition, next offset) ->
    #: bool. An input counts as idle only when silent *and* caught up: silence alone also
    #: happens while a (re)started consumer has not begun fetching, and idling a source that
    #: still has data would make its events late. Without a broker everything is caught up.
    caught_up: Callable[[str, int, int], bool] = lambda topic, partition, offset: True
    #: Told the standing decision (tx_id -> JSON) of every transaction a batch decided or
    #: re-answered, once stored: `POST /score` requests waiting on this worker wake from it.
    on_decided: Callable[[dict[str, bytes]], None] = lambda standing: None
    #: Where the console's views are kept (streams/console/store.py); None: not kept.
    console: ConsoleStore | None = None
    #: Drift counts already logged, per user partition (a log line when they change).
    _drift_logged: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Loopback only: envelopes produced and not yet taken in, per internal topic.
    _looped: dict[str, list[RawEvent]] = field(default_factory=dict)
    #: When this worker last wrote its graph shard's heartbeat (clock seconds).
    _graph_beat: float = float("-inf")
    #: The policy every user shard decides with (`set_policy` swaps it, between batches).
    policy: Policy = field(init=False)
    #: Transactions decided (or being decided) at payment time, by tx_id, until their user
    #: shard completes them; and their tx_ids by key (`in_flight_keys`).
    at_payment: dict[str, AtPayment] = field(default_factory=dict)
    _in_flight: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy = self.settings.policy()

    def set_policy(self, policy: Policy) -> None:
        """Decide with `policy` from the next batch on (hot reload): every user shard,
        and any installed later, including from a checkpoint made under another."""
        self.policy = policy
        for shard in self.users.values():
            shard.decider.policy = policy

    @property
    def n_partitions(self) -> int:
        return self.settings.partitions

    # --- shards and checkpoints -----------------------------------------------------------
    def new_user_shard(self, partition: int) -> UserShard:
        s = self.settings
        engine = s.engine_config()
        return UserShard(
            partition,
            self.n_partitions,
            UserStage(engine.utc_offset_minutes, engine.user_ttl_ms),
            Decider(
                model=s.risk_model(),
                policy=self.policy,
                remember_limit=MAX_REMEMBERED_FEATURES // self.n_partitions,
                fail_closed_action=s.fail_closed_action,
            ),
            s.decision_ttl_s * 1000,
            engine.sweep_every_ms,
            s.allowed_lateness_ms,
            n_user=self.n_partitions,
            feeds_graph=s.graph,
            keep_history=s.console_index and s.console_history_keep > 0,
        )

    def new_entity_shard(self, partition: int) -> EntityShard:
        engine = self.settings.engine_config()
        return EntityShard(
            partition, self.n_partitions, EntityStage(engine.user_ttl_ms), engine.sweep_every_ms
        )

    def new_graph_shard(self, partition: int) -> GraphShard:
        return GraphShard(partition, self.n_partitions, GraphLayer(self.settings.graph_config()))

    def install(self, unit: str, blob: bytes | None) -> None:
        """Take over a shard: from its checkpoint, or fresh."""
        kind, _, number = unit.partition("-")
        partition = int(number)
        state = None if blob is None else load_checkpoint(blob)
        if kind == "user":
            if state is not None and not isinstance(state, UserShard):
                raise TypeError(f"{unit}: not a user shard checkpoint: {type(state).__name__}")
            shard = state or self.new_user_shard(partition)
            shard.decider.policy = self.policy  # the live one, not the checkpoint's
            shard.redo = True  # it may re-decide what was decided after its checkpoint
            self.users[partition] = shard
            now = self.clock()
            for code in TOPIC_CODES.values():
                self.heard[(partition, code)] = now
        elif kind == "graph":
            if state is not None and not isinstance(state, GraphShard):
                raise TypeError(f"{unit}: not a graph shard checkpoint: {type(state).__name__}")
            self.graphs[partition] = state or self.new_graph_shard(partition)
        else:
            if state is not None and not isinstance(state, EntityShard):
                raise TypeError(f"{unit}: not an entity shard checkpoint: {type(state).__name__}")
            self.entities[partition] = state or self.new_entity_shard(partition)

    def own_all(self) -> None:
        """Take every partition, fresh: a process with no broker (and no assignment)."""
        for partition in range(self.n_partitions):
            self.install(user_unit(partition), None)
            self.install(entity_unit(partition), None)
        if self.settings.graph:
            self.install(graph_unit(GRAPH_PARTITION), None)

    def release(self, units: Iterable[str]) -> None:
        """Forget shards this worker no longer owns (after their checkpoint)."""
        shards: dict[str, dict[int, Any]] = {
            "user": self.users,
            "entity": self.entities,
            "graph": self.graphs,
        }
        for unit in units:
            kind, _, number = unit.partition("-")
            shards[kind].pop(int(number), None)
            if kind == "user":  # its new owner decides what is still in flight
                for entry in [e for e in self.at_payment.values() if e.partition == int(number)]:
                    self._settled(entry.tx.tx_id)

    def units(self) -> list[str]:
        return (
            [user_unit(p) for p in self.users]
            + [entity_unit(q) for q in self.entities]
            + [graph_unit(g) for g in self.graphs]
        )

    def checkpoints(self) -> tuple[dict[str, Callable[[], bytes]], Callable[[], None]]:
        """Per unit, a function that pickles it as of now (call it now, or in a forked
        child), and what to do once every one of them is durably written."""
        floors = {p: shard.floor() for p, shard in self.users.items()}
        users = dict(self.users)
        snapshots: dict[str, Callable[[], bytes]] = {}
        for p, shard in users.items():
            snapshots[user_unit(p)] = partial(shard.snapshot, floors[p])
        for q, entity in self.entities.items():
            snapshots[entity_unit(q)] = entity.snapshot
        for g, graph in self.graphs.items():
            snapshots[graph_unit(g)] = graph.snapshot

        def written() -> None:
            for p, shard in users.items():
                shard.durable_floor = floors[p]  # entity shards may now forget below it

        return snapshots, written

    def event_time(self) -> dict[str, Any]:
        """Where event time stands: the lowest user-shard watermark, and what waits."""
        marks = [s.aligner.watermark for s in self.users.values() if s.aligner.watermark > START]
        late_user = sum(s.late for s in self.users.values())
        late_entity = sum(s.late for s in self.entities.values())
        late_graph = sum(s.late for s in self.graphs.values())
        return {
            "watermark": min(marks) if marks else None,
            "pending": sum(len(s.aligner.buffer) + len(s.queue) for s in self.users.values()),
            "sources": sum(len(s.aligner.sources) for s in self.users.values()),
            "idle_sources": sum(len(s.aligner.idle_sources) for s in self.users.values()),
            # Events released after event time had passed them, counted in each stage they
            # reached late (an input event at its user shard; a request at an entity shard).
            "late": late_user + late_entity + late_graph,
            "late_by_stage": {"user": late_user, "entity": late_entity, "graph": late_graph},
        }

    def models(self) -> dict[str, Any]:
        """The models of this worker's user shards: the state that scores, and drift."""
        return {
            user_unit(p): {"version": s.decider.model_version, **s.decider.drift.summary()}
            for p, s in sorted(self.users.items())
        }

    def budgets(self) -> dict[str, Any]:
        """The friction budget of each of this worker's user shards (each has its own, over
        its own users' payments): mode, cuts, and the friction they achieved."""
        return {user_unit(p): s.decider.budget_report() for p, s in sorted(self.users.items())}

    def _log_drift(self, shard: UserShard) -> None:
        watch = shard.decider.drift
        counts = (watch.score_drifts, watch.error_drifts)
        before = self._drift_logged.get(shard.partition, (0, 0))
        if counts != before:
            self._drift_logged[shard.partition] = counts
            log.warning(
                "drift on %s (model %s): score distribution %d time(s), latest at ts %s; "
                "error rate %d time(s), latest at ts %s",
                user_unit(shard.partition),
                shard.decider.model_version,
                counts[0],
                watch.last_score_drift_ts,
                counts[1],
                watch.last_error_drift_ts,
            )

    def _user(self, partition: int) -> UserShard | None:
        return self._shard(self.users, user_unit, partition)

    def _entity(self, partition: int) -> EntityShard | None:
        return self._shard(self.entities, entity_unit, partition)

    def _graph(self, partition: int) -> GraphShard | None:
        return self._shard(self.graphs, graph_unit, partition)

    def _shard(self, shards: dict[int, S], unit: Callable[[int], str], partition: int) -> S | None:
        shard = shards.get(partition)
        if shard is None and self.loopback:  # no broker: every partition is ours
            self.install(unit(partition), None)
            shard = shards[partition]
        return shard

    def graph_state(self) -> dict[str, Any] | None:
        """The graph shard this worker owns, if any: its size and what it has found."""
        if not self.graphs:
            return None
        shard = next(iter(self.graphs.values()))
        layer = shard.layer
        return {
            "unit": graph_unit(shard.partition),
            "watermark": shard.aligner.watermark if shard.aligner.watermark > START else None,
            "edges": len(layer.graph.edges),
            "users": len(layer.graph.users),
            "rings": len(layer.book.rings),
            "groups_analysed": layer.analysed,
            "groups_skipped": layer.skipped,
            "groups_oversized": layer.oversized,
        }

    def _stray(self, message: RawEvent) -> None:
        """A message for a partition this worker does not own (still buffered when it was
        revoked): left alone, the owner reads it from the committed offset."""
        self.counters.stray += 1
        log.debug("stray message %s[%d]@%d", message.topic, message.partition, message.offset)

    # --- input ----------------------------------------------------------------------------
    async def handle(self, kind: str, raw: Sequence[RawEvent]) -> BatchOutcome:
        """Process one batch from the input topic `kind` (a contract name, no prefix)."""
        parser, code = PARSERS[kind], TOPIC_CODES[kind]
        outcome = BatchOutcome()
        dead: list[DeadLetter] = []
        touched: set[int] = set()
        now = self.clock()
        for message in raw:
            shard = self._user(message.partition)
            if shard is None:
                self._stray(message)
                continue
            if message.offset < shard.next_offset.get(code, 0):
                outcome.skipped += 1
                continue
            self.heard[(message.partition, code)] = now
            try:
                event: Event | None = parser(decode_json_object(message.value))
            except InvalidEvent as exc:
                dead.append(self._dead_letter(message, str(exc)))
                event = None
            shard.offer(code, message.offset, event)
            touched.add(message.partition)
        outcome.dead_letters = len(dead)
        if dead:
            await self._dead_letters(dead)
        await self._after_users(touched, outcome)
        self._count(len(raw), outcome)
        return outcome

    async def tick(self) -> BatchOutcome:
        """Called periodically: inputs silent for `source_idle_s` stop holding event time."""
        now = self.clock()
        idle_after = self.settings.source_idle_s
        topics = {code: self.settings.topic(kind) for kind, code in TOPIC_CODES.items()}
        for (p, code), heard in self.heard.items():
            shard = self.users.get(p)
            if shard is None or now - heard < idle_after or code in shard.aligner.idle_sources:
                continue
            if self.caught_up(topics[code], p, shard.next_offset.get(code, 0)):
                shard.idle(code)
        await self.beat_graph()
        outcome = BatchOutcome()
        await self._after_users(set(self.users), outcome)
        self.counters.decided += outcome.decided
        self.counters.redelivered += outcome.redelivered
        return outcome

    def _offer(
        self, raw: Sequence[RawEvent], shard_of: Callable[[int], Inbox | None]
    ) -> dict[int, list[Released]]:
        """Envelopes from user shards into the entity or graph shards that own them: what
        each shard's aligner releases, by partition."""
        by_shard: dict[int, list[Released]] = {}
        for message in raw:
            shard = shard_of(message.partition)
            if shard is None:
                self._stray(message)
                continue
            released = shard.offer(message.offset, message.value or b"")
            if released is not None:
                by_shard.setdefault(message.partition, []).extend(released)
        self.counters.envelopes_received += len(raw)
        return by_shard

    async def handle_requests(self, raw: Sequence[RawEvent]) -> None:
        """Envelopes from user shards, for this worker's entity shards."""
        results: list[tuple[int, bytes]] = []
        for q, released in self._offer(raw, self._entity).items():
            shard = self.entities[q]
            depths = {}
            requests = shard.depth_requests(released)
            if requests:
                walk = partial(run_walks, requests, self.store.get_referrals)
                depths = await self.retry("walk the referral tree", walk)
            shard.apply(released, depths)
            if self.at_payment:
                self._applied_at(q, released)
            results += shard.envelopes()
        await self._send(ENTITY_RESULTS, results)

    async def handle_graph(self, raw: Sequence[RawEvent]) -> None:
        """Envelopes from user shards for this worker's graph shard: the graph advances,
        and what it found is published (rings topic, ring scores in Redis)."""
        await self.beat_graph()
        for g, released in sorted(self._offer(raw, self._graph).items()):
            shard = self.graphs[g]
            shard.apply(released)
            events, scores = shard.take()
            if not events and not scores:
                continue
            # Redis first: once the event is on the topic, a reader may look the scores up.
            # A re-run after a restore publishes the same again (at-least-once, same values).
            records = [(e.ring_id.encode(), e.dumps()) for e in events]
            latest = {
                e.ring_id: (value if e.status == ACTIVE else None)
                for e, (_, value) in zip(events, records, strict=True)
            }
            put = partial(self.store.put_rings, list(latest.items()), scores)
            await self.retry("store ring scores", put)
            send = partial(self.sink.send_many, self.settings.topic(RINGS), records)
            await self.retry("produce rings", send)
            if self.console is not None:
                versions = [
                    (e.ring_id, value) for e, (_, value) in zip(events, records, strict=True)
                ]
                record = partial(self.console.record_rings, versions)
                await self.retry("keep ring versions", record)
            for event in events:
                log.info(
                    "ring %s v%d %s: %d users, %d merchants, score %.2f",
                    event.ring_id,
                    event.version,
                    event.status,
                    len(event.users),
                    len(event.merchants),
                    event.score,
                )

    async def handle_results(self, raw: Sequence[RawEvent]) -> BatchOutcome:
        """Entity results coming back to this worker's user shards."""
        outcome = BatchOutcome()
        await self._after_users(self._take_results(raw), outcome)
        self.counters.decided += outcome.decided
        self.counters.redelivered += outcome.redelivered
        return outcome

    def _take_results(self, raw: Iterable[RawEvent]) -> set[int]:
        touched: set[int] = set()
        for message in raw:
            self.counters.envelopes_received += 1
            shard = self._user(message.partition)
            if shard is None:
                self._stray(message)
            elif shard.results(message.offset, message.value or b""):
                touched.add(message.partition)
        return touched

    async def _after_users(self, partitions: Iterable[int], outcome: BatchOutcome) -> None:
        """What user shards produced: tree writes first, then envelopes, then decisions.
        The shards' reads, writes and produces go together, one of each per batch: a batch
        holds the lock through its round trips (benchmarks/README.md, session 9)."""
        touched = set(partitions)
        while touched:
            shards = [self.users[p] for p in sorted(touched) if p in self.users]
            writes = [w for shard in shards for w in shard.take_tree_writes()]
            if writes:
                write = partial(self.store.put_referrals, writes)
                await self.retry("write the referral tree", write)
            await asyncio.gather(
                self._send(ENTITY_REQUESTS, [e for shard in shards for e in shard.envelopes()]),
                self._send(GRAPH_EVENTS, [e for s in shards for e in s.graph_envelopes()]),
            )
            readies = [(shard, shard.ready()) for shard in shards]
            # Decisions made at payment time stand too, and may precede the stream's (here,
            # or before a restart or a rebalance): then every batch asks Redis.
            asks = {s.partition for s in shards if s.redo or self.settings.score_at_payment}
            stored = await self._standing(
                [tx for s, r in readies if s.partition in asks for tx in r]
            )
            paid = await self._decided_at_payment([tx for _, r in readies for tx in r])
            indexed = {t for t in paid if self.at_payment[t].indexed}
            rings = await self._ring_scores([tx for s, r in readies if s.feeds_graph for tx in r])
            graph_down = rings is not None and not await self._graph_running()
            finished: list[tuple[UserShard, Completed]] = []
            for shard, ready in readies:
                standing = None
                if ready and shard.partition in asks:
                    assert stored is not None
                    standing = {tx.tx_id: stored[tx.tx_id] for tx in ready if tx.tx_id in stored}
                mine = {tx.tx_id: paid[tx.tx_id] for tx in ready if tx.tx_id in paid}
                if mine:
                    standing = {**(standing or {}), **mine}
                shard_rings = rings if ready and shard.feeds_graph else None
                done = shard.complete(
                    self._now_ms(), standing, shard_rings, shard_rings is not None and graph_down
                )
                if self.at_payment:  # all of the stream's state has them now
                    for tx_id in done.order:
                        self._settled(tx_id)
                finished.append((shard, done))
            await self._publish([done for _, done in finished], outcome, indexed)
            await self._adjust([(shard, a) for shard, done in finished for a in done.adjustments])
            await self._index_labels([label for _, done in finished for label in done.labels])
            for shard in shards:
                self._log_drift(shard)
            # Labels and examples for the other user shards (models learn every label).
            await self._send(ENTITY_RESULTS, [e for s in shards for e in s.peer_envelopes()])
            # Without a broker the results are already back: take them in now.
            touched = self._take_results(self._looped.pop(ENTITY_RESULTS, []))

    async def _send(self, kind: str, envelopes: list[tuple[int, bytes]]) -> None:
        if not envelopes:
            return
        self.counters.envelopes_sent += len(envelopes)
        if not self.loopback:
            topic = self.settings.topic(kind)
            await self.retry(
                f"produce {kind}", lambda: self.sink.send_to_partitions(topic, envelopes)
            )
            return
        # No broker: the local shards take the envelopes in order, at their next offsets.
        messages = self._looped.setdefault(kind, [])
        queued: dict[int, int] = {}
        for m in messages:
            queued[m.partition] = queued.get(m.partition, 0) + 1
        for partition, value in envelopes:
            if kind == ENTITY_REQUESTS:
                entity = self._entity(partition)
                assert entity is not None
                offset = entity.next_offset
            elif kind == GRAPH_EVENTS:
                graph = self._graph(partition)
                assert graph is not None
                offset = graph.next_offset
            else:
                user = self._user(partition)
                assert user is not None
                offset = user.next_result_offset
            ahead = queued.get(partition, 0)
            queued[partition] = ahead + 1
            messages.append(RawEvent(kind, partition, offset + ahead, None, value))
        if kind == ENTITY_REQUESTS:
            await self.handle_requests(self._looped.pop(kind))
        elif kind == GRAPH_EVENTS:
            await self.handle_graph(self._looped.pop(kind))

    # --- decisions at payment time ---------------------------------------------------------
    async def decide_at_payment(
        self,
        tx: Transaction,
        produce: Callable[[], Awaitable[None]],
        rings: dict[RingKey, RingScore] | None = None,
    ) -> tuple[bool, Decision | None]:
        """`POST /score`'s fast path: (whether `tx` was produced, its standing decision or
        None). Decides `tx` from the state as it stands, without waiting for the stream,
        when this worker holds its user shard and every entity shard its features come
        from, and event time has not passed it (the state then holds only events before
        it, as the stream's decision would, less what is still in flight: see
        `in_flight_keys`). The decision is stored first-write-wins like the stream's,
        and when the stream reaches `tx` its user shard follows it (ledger, caps) as it
        follows any standing decision. `tx` is produced first (a decision is never made
        on a transaction the log may not have): a failure to produce propagates, with
        nothing decided. Not decided here (False, None): the caller produces and waits.
        `rings`: the ring scores of `ring_keys([tx])` if the caller has read them."""
        try:
            entry = self._claim(tx)
        except LeftToStream as why:
            self._left_to_stream(str(why))
            return False, None
        # What the decision reads from Redis is fetched while the broker acknowledges.
        fetching = asyncio.ensure_future(self._fetch(entry, rings))
        fetching.add_done_callback(_retrieved)
        try:
            await produce()
        except BaseException:
            fetching.cancel()
            self._settled(tx.tx_id)  # never entered the stream
            raise
        value = None
        try:
            value = await self._decide_now(entry, await fetching)
            self.counters.decided_at_payment += 1
        except LeftToStream as why:
            self._left_to_stream(str(why))
        except Exception:
            log.exception("deciding %s at payment time failed; the stream decides it", tx.tx_id)
            self._left_to_stream("failed")
        finally:  # the stream waits for this (`_decided_at_payment`): always resolve it
            if not entry.decided.done():
                entry.decided.set_result(value)
        return True, value

    def _claim(self, tx: Transaction) -> AtPayment:
        if tx.tx_id in self.at_payment:
            raise LeftToStream("in_stream")
        partition = key_partition(tx.user_id.encode(), self.n_partitions)
        self._user_shard_for(tx, partition)
        keys = in_flight_keys(tx)
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[Decision | None] = loop.create_future()
        entry = AtPayment(tx, partition, keys, decided, loop.create_future())
        self.at_payment[tx.tx_id] = entry
        for key in keys:
            self._in_flight.setdefault(key, []).append(tx.tx_id)
        return entry

    def _settled(self, tx_id: str) -> None:
        """The stream has `tx_id` decided (or it never entered it): its keys are free."""
        entry = self.at_payment.pop(tx_id, None)
        if entry is None:
            return
        if not entry.decided.done():
            entry.decided.set_result(None)
        entry.settled.set_result(None)
        for key in entry.keys:
            others = self._in_flight[key]
            others.remove(tx_id)
            if not others:
                del self._in_flight[key]

    def _applied_at(self, q: int, released: list[Released]) -> None:
        for item in released:
            event = item.event
            if isinstance(event, Transaction):
                entry = self.at_payment.get(event.tx_id)
                if entry is not None:
                    entry.applied_at.add(q)

    def _left_to_stream(self, why: str) -> None:
        counts = self.counters.left_to_stream
        counts[why] = counts.get(why, 0) + 1

    def _user_shard_for(self, tx: Transaction, partition: int) -> UserShard:
        """The user shard to decide `tx` if it is here and its state still holds only
        events before `tx`."""
        shard = self.users.get(partition)
        if shard is None:
            raise LeftToStream("not_here")
        if tx.tx_id in shard.seen:
            raise LeftToStream("in_stream")
        if shard.aligner.watermark > tx.ts:
            raise LeftToStream("event_time_past")
        return shard

    async def _fetch(
        self, entry: AtPayment, rings: dict[RingKey, RingScore] | None = None
    ) -> _Fetched:
        """What deciding `entry` needs from Redis: its referral depth (for the referrer and
        signup it has now), ring scores, whether the graph shard runs."""
        tx = entry.tx
        referral = self._user_shard_for(entry.tx, entry.partition).users.referral(tx.user_id, tx.ts)
        depth = await self._depth_now(tx, *referral)
        # No retries here: a Redis failure leaves the transaction to the stream, and the
        # request to its fail-closed answer, rather than waiting for Redis to come back.
        if not self._user_shard_for(entry.tx, entry.partition).feeds_graph:
            rings = None
        elif rings is None:
            rings = await self.store.get_ring_scores(self.ring_keys([tx]))
        graph_down = rings is not None and not await self._graph_running(retry=False)
        return _Fetched(referral, depth, rings, graph_down)

    async def _decide_now(self, entry: AtPayment, fetched: _Fetched) -> Decision:
        """The decision from the state as it is now (after what it waits for, if any)."""
        tx = entry.tx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EARLIER_WAIT_S
        while True:
            shard = self._user_shard_for(entry.tx, entry.partition)
            try:
                earlier = self._earlier(entry)
                break
            except _Waiting as waiting:
                left = deadline - loop.time()
                if left <= 0:
                    raise LeftToStream("in_flight") from None
                await asyncio.wait([waiting.until], timeout=left)
        mine = [
            e.tx for e in earlier if e.tx.user_id == tx.user_id and e.tx.tx_id not in shard.seen
        ]
        vector, context = shard.users.peek(tx, mine)
        if (context.referrer, context.signup_ts) != fetched.referral:
            raise LeftToStream("in_flight")  # the user's signup came in meanwhile
        context.depth = fetched.depth
        parts: dict[int, list[float | None]] = {}
        for q, families in transaction_routes(tx, context, self.n_partitions):
            entity = self.entities.get(q)
            if entity is None:
                raise LeftToStream("not_here")
            if entity.aligner.watermark > tx.ts:
                raise LeftToStream("event_time_past")
            before = [(e.tx, e.context) for e in earlier if e.context and q not in e.applied_at]
            parts[families] = entity.entities.peek(tx, context, families, before)
        splice(parts, vector)
        ring = ring_of(tx, vector, fetched.rings or {})
        pending = [e.decision for e in earlier if e.decision is not None]
        decider = shard.decider
        decision, x, _ = decider.assess(
            tx, vector, self._now_ms(), ring, fetched.graph_down, pending
        )
        entry.context, entry.decision, entry.x = context, decision, x
        [prior] = await self.store.put_new([(tx.tx_id, decision.dumps())])
        if prior is not None:
            entry.decision = Decision.loads(prior)
        elif self.console is not None:
            await self.console.record([Indexed(decision, tx)])
            entry.indexed = True
        return entry.decision

    def _earlier(self, entry: AtPayment) -> list[AtPayment]:
        """The transactions decided here at payment time, not yet in the stream, that share
        a key with `entry` and come before it in event time, in that order: its features
        count them, where the stream's state does not have them yet (the stream may have
        begun: its user shard released it, some entity shards applied it; its decider gets
        it last, when the user shard completes it, and it is settled then). One still being
        decided cannot be placed yet: `_Waiting` for it."""
        found: dict[str, AtPayment] = {}
        mine = order_key(entry.tx, 0)
        for key in entry.keys:
            for tx_id in self._in_flight.get(key, ()):
                if tx_id == entry.tx.tx_id or tx_id in found:
                    continue
                other = self.at_payment[tx_id]
                if order_key(other.tx, 0) > mine:
                    continue  # after it in event time: not in its features
                if other.partition not in self.users:
                    raise _Waiting(other.settled)  # its shard is moving to another worker
                if other.context is None:  # being decided, or left to the stream
                    raise _Waiting(other.settled if other.decided.done() else other.decided)
                found[tx_id] = other
        return sorted(found.values(), key=lambda e: order_key(e.tx, 0))

    async def _depth_now(self, tx: Transaction, referrer: str | None, signup: int | None) -> int:
        """The user's referral depth: memoised by the entity shard of its referrer, or
        walked in Redis's referral tree as the entity shard would."""
        if referrer is None or signup is None:
            return 0  # not read: the referral family reads depth only with a referrer
        entity = self.entities.get(partition_of(REFERRAL, referrer, self.n_partitions))
        if entity is None:
            raise LeftToStream("not_here")
        known = entity.depths.get(tx.user_id, signup)
        if known is not None:
            return known
        key = (tx.user_id, signup)
        walked = await run_walks({key: (referrer, tx.user_id, signup)}, self.store.get_referrals)
        return walked[key]

    async def _decided_at_payment(self, ready: list[Transaction]) -> dict[str, Decision]:
        """The decisions made at payment time among `ready` (waiting for any still being
        made: they stand, and the ledger must follow them)."""
        out: dict[str, Decision] = {}
        if not self.at_payment:
            return out
        for tx in ready:
            entry = self.at_payment.get(tx.tx_id)
            if entry is not None:
                decision = await asyncio.shield(entry.decided)
                if decision is not None:
                    out[tx.tx_id] = decision
        return out

    async def _standing(self, ready: list[Transaction]) -> dict[str, Decision] | None:
        """For a shard that may be re-deciding: the decisions already in Redis (they stand)
        of the transactions it is about to decide."""
        if not ready:
            return None
        tx_ids = [tx.tx_id for tx in ready]
        stored = await self.retry("read decisions", lambda: self.store.get_many(tx_ids))
        return {t: Decision.loads(v) for t, v in stored.items()}

    async def _graph_running(self, retry: bool = True) -> bool:
        """Whether the graph shard runs: here, or elsewhere with a recent heartbeat.
        `retry` False: a Redis failure raises (at payment time nothing waits for Redis)."""
        if self.graphs or not self.settings.graph:
            return True
        read = self.store.graph_heartbeat
        beat = await (self.retry("read the graph heartbeat", read) if retry else read())
        return beat is not None and self.clock() - beat / 1000 <= self.settings.graph_stale_after_s

    async def beat_graph(self) -> None:
        """The graph shard's heartbeat (at most once a second), for user shards elsewhere."""
        now = self.clock()
        if not self.graphs or now - self._graph_beat < 1.0:
            return
        self._graph_beat = now
        beat = partial(self.store.put_graph_heartbeat, int(now * 1000))
        await self.retry("write the graph heartbeat", beat)

    async def _ring_scores(self, ready: list[Transaction]) -> dict[RingKey, RingScore] | None:
        """The strongest rings of the users and merchants about to be decided, as the graph
        shard last published them (one round trip for the batch)."""
        if not ready:
            return None
        keys = self.ring_keys(ready)
        return await self.retry("read ring scores", lambda: self.store.get_ring_scores(keys))

    def ring_keys(self, ready: Sequence[Transaction]) -> list[RingKey]:
        """Whose ring scores deciding `ready` reads: their users' and merchants'."""
        if not self.settings.graph:
            return []
        return sorted({("u", tx.user_id) for tx in ready} | {("m", tx.merchant_id) for tx in ready})

    async def _publish(
        self, finished: list[Completed], outcome: BatchOutcome, indexed: set[str]
    ) -> None:
        """Stores and produces the decisions of `finished`, and keeps the console's views of
        the new ones; `indexed`: those decided at payment time whose history rows are yet to
        be kept."""
        order = [tx_id for done in finished for tx_id in done.order]
        if not order:
            return
        decisions = [decided for done in finished for decided in done.decisions]
        items = [(d.tx_id, d.dumps()) for d, _ in decisions]
        existing = await self.retry("store decisions", lambda: self.store.put_new(items))
        standing: dict[str, bytes] = {}
        for (tx_id, value), prior in zip(items, existing, strict=True):
            standing[tx_id] = value if prior is None else prior
        earlier = [t for done in finished for t in done.repeats if t not in standing]
        if earlier:  # decided in an earlier batch: answer with what Redis holds
            standing.update(
                await self.retry("read decisions", lambda: self.store.get_many(earlier))
            )
        self.on_decided(standing)
        decided = sum(1 for prior in existing if prior is None)
        if self.console is not None:
            await self._index(finished, existing, indexed)
        outcome.decided += decided
        outcome.redelivered += len(order) - decided
        records = [(t.encode(), standing[t]) for t in order if t in standing]
        produced = [self._produce(DECISIONS, records)]
        if self.settings.log_features and decisions:
            vectors = [(d.tx_id.encode(), feature_vector_json(d, x)) for d, x in decisions]
            produced.append(self._produce(FEATURES, vectors))
        await asyncio.gather(*produced)

    async def _index(
        self, finished: list[Completed], existing: list[bytes | None], indexed: set[str]
    ) -> None:
        """The console's views of the decisions that were new (a redelivery's stand), and
        the history rows of those decided here at payment time (`indexed`: in the views
        already, but without the row, which only the stream's user shard makes)."""
        console = self.console
        assert console is not None
        made = [
            Indexed(decision, tx, row)
            for done in finished
            for (decision, _), tx, row in zip(
                done.decisions, done.transactions, done.history_rows, strict=True
            )
        ]
        fresh = [entry for entry, prior in zip(made, existing, strict=True) if prior is None]
        await self.retry("index decisions for the console", lambda: console.record(fresh))
        rows = [e for e in made if e.decision.tx_id in indexed and e.history_row is not None]
        if rows:
            await self.retry("keep history rows", lambda: console.record_history(rows))

    async def _index_labels(self, labels: list[Label]) -> None:
        console = self.console
        if console is not None and labels:
            await self.retry("index labels", lambda: console.record_labels(labels))

    async def _produce(self, kind: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        topic = self.settings.topic(kind)
        await self.retry(f"produce {kind}", lambda: self.sink.send_many(topic, records))

    async def _adjust(self, adjustments: list[tuple[UserShard, RebateAdjustment]]) -> None:
        """Store the ledger's adjustments first-write-wins by id (a re-run after a restart
        finds the ones it made before, which stand, and the ledger of the shard that made
        each follows them), then produce the standing ones on the adjustments topic, keyed
        by tx_id."""
        if not adjustments:
            return
        items = [(a.adjustment_id, a.tx_id, a.dumps()) for _, a in adjustments]
        existing = await self.retry("store adjustments", lambda: self.store.put_adjustments(items))
        records: list[tuple[bytes | None, bytes]] = []
        for (shard, a), (_, tx_id, value), prior in zip(adjustments, items, existing, strict=True):
            if prior is not None and prior != value:
                standing = RebateAdjustment.loads(prior)
                if _balances(standing) != _balances(a):
                    shard.decider.ledger.follow(standing)
            records.append((tx_id.encode(), value if prior is None else prior))
        await self._produce(REBATE_ADJUSTMENTS, records)
        console, resolved = self.console, resolved_holds([a for _, a in adjustments])
        if console is not None and resolved:
            await self.retry("resolve holds", lambda: console.resolve_holds(resolved))

    async def _dead_letters(self, dead: list[DeadLetter]) -> None:
        await self._produce(DEAD_LETTERS, [(None, d.dumps()) for d in dead])
        positions = [(d.topic, d.partition, d.offset) for d in dead]
        await self.retry("count dead letters", lambda: self.store.count_dead_letters(positions))
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)

    def _dead_letter(self, message: RawEvent, reason: str) -> DeadLetter:
        payload = b"" if message.value is None else message.value
        return DeadLetter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
            payload=payload.decode("utf-8", errors="backslashreplace"),
            received_at=self._now_ms(),
        )

    async def retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_base_s
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any I/O failure: wait and try again, never drop
                self.counters.retries += 1
                log.warning(
                    "%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _count(self, n: int, outcome: BatchOutcome) -> None:
        c = self.counters
        c.batches += 1
        c.events += n
        c.decided += outcome.decided
        c.redelivered += outcome.redelivered
        c.dead_letters += outcome.dead_letters

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
