"""The shards this worker owns, one per assigned partition, and their checkpoints.

A shard is a unit named after its kind and partition (`user-3`, `entity-3`, `graph-0`,
`solvency-0`):
installed from its checkpoint (or fresh) when its partitions are assigned, forgotten once
checkpointed when they are revoked. A process with no broker owns every partition: it
installs a shard the first time one is looked up (`own_missing`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from features.stages import EntityStage, UserStage
from graph.layer import GraphLayer
from rebate_guard.contract.records import ENTITY_REQUESTS, GRAPH_EVENTS, SOLVENCY_MOVEMENTS
from rebate_guard.core.decider import MAX_REMEMBERED_FEATURES, Decider
from rebate_guard.core.policy import Policy
from rebate_guard.core.solvency import SolvencyMonitor
from rebate_guard.settings import Settings
from streams.batch import RawEvent
from streams.shards import (
    GRAPH_PARTITION,
    TOPIC_CODES,
    EntityShard,
    GraphShard,
    UserShard,
    load_checkpoint,
)
from streams.shards.deltas import ENTITY_STORES, USER_STORES, DeltaChain, Plan
from streams.shards.solvency import SOLVENCY_PARTITION, SolvencyShard

S = TypeVar("S", UserShard, EntityShard, GraphShard, SolvencyShard)


def user_unit(partition: int) -> str:
    return f"user-{partition}"


def entity_unit(partition: int) -> str:
    return f"entity-{partition}"


def graph_unit(partition: int) -> str:
    return f"graph-{partition}"


def solvency_unit(partition: int) -> str:
    return f"solvency-{partition}"


@dataclass
class Piece:
    """One shard's checkpoint in a round: `snapshot` pickles it as of the round (call it
    then, or in a forked child); `generation` names it, and it is a delta of the one named
    `extends` (None: a full checkpoint, which replaces the shard's chain)."""

    snapshot: Callable[[], bytes]
    generation: str | None = None
    extends: str | None = None


@dataclass
class CheckpointRound:
    """Every shard's checkpoint as of one moment, and what to do once all of them are
    durably written (`written`), or when they could not be (`failed`)."""

    pieces: dict[str, Piece] = field(default_factory=dict)
    written: Callable[[], None] = lambda: None
    failed: Callable[[], None] = lambda: None


class ShardRegistry:
    """This worker's user, entity, graph and solvency shards by partition, and the policy
    every user shard decides with (and the solvency shard reads its lines from)."""

    def __init__(
        self, settings: Settings, *, clock: Callable[[], float], own_missing: bool = False
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.own_missing = own_missing
        self.users: dict[int, UserShard] = {}
        self.entities: dict[int, EntityShard] = {}
        self.graphs: dict[int, GraphShard] = {}
        self.solvencies: dict[int, SolvencyShard] = {}
        #: Wall-clock time each (user partition, topic code) last delivered (not
        #: checkpointed).
        self.heard: dict[tuple[int, int], float] = {}
        #: The policy every user shard decides with (`set_policy` swaps it, between batches).
        self.policy: Policy = settings.policy()
        #: Per unit, what its next checkpoint needs to be a delta (`checkpoint_round`).
        self.chains: dict[str, DeltaChain] = {}

    @property
    def n_partitions(self) -> int:
        return self.settings.partitions

    def set_policy(self, policy: Policy) -> None:
        """Decide with `policy` from the next batch on (hot reload): every user shard,
        and any installed later, including from a checkpoint made under another."""
        self.policy = policy
        for shard in self.users.values():
            shard.decider.policy = policy
        for books in self.solvencies.values():
            books.monitor.terms = policy.solvency

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

    def new_solvency_shard(self, partition: int) -> SolvencyShard:
        return SolvencyShard(
            partition,
            self.n_partitions,
            SolvencyMonitor(self.policy.solvency),
            late_memory_ms=self.settings.decision_ttl_s * 1000,
        )

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
            self._chain(unit, USER_STORES, shard.users.track_changes)
            now = self.clock()
            for code in TOPIC_CODES.values():
                self.heard[(partition, code)] = now
        elif kind == "graph":
            if state is not None and not isinstance(state, GraphShard):
                raise TypeError(f"{unit}: not a graph shard checkpoint: {type(state).__name__}")
            self.graphs[partition] = state or self.new_graph_shard(partition)
        elif kind == "solvency":
            if state is not None and not isinstance(state, SolvencyShard):
                raise TypeError(f"{unit}: not a solvency checkpoint: {type(state).__name__}")
            books = state or self.new_solvency_shard(partition)
            books.monitor.terms = self.policy.solvency  # the live lines, as the deciders'
            self.solvencies[partition] = books
        else:
            if state is not None and not isinstance(state, EntityShard):
                raise TypeError(f"{unit}: not an entity shard checkpoint: {type(state).__name__}")
            entity = state or self.new_entity_shard(partition)
            self.entities[partition] = entity
            self._chain(unit, ENTITY_STORES, entity.entities.track_changes)

    def _chain(self, unit: str, stores: dict[str, Any], track: Callable[[], Any]) -> None:
        """A shard installed: its next checkpoint is full, the ones after it deltas."""
        every = self.settings.checkpoint_full_every
        if every > 1:
            self.chains[unit] = DeltaChain(stores, track(), full_every=every)

    def own_all(self) -> None:
        """Take every partition, fresh: a process with no broker (and no assignment)."""
        for partition in range(self.n_partitions):
            self.install(user_unit(partition), None)
            self.install(entity_unit(partition), None)
        if self.settings.graph:
            self.install(graph_unit(GRAPH_PARTITION), None)
        self.install(solvency_unit(SOLVENCY_PARTITION), None)

    def release(self, units: Iterable[str]) -> list[int]:
        """Forget shards this worker no longer owns (after their checkpoint); returns the
        partitions of the user shards among them."""
        shards: dict[str, dict[int, Any]] = {
            "user": self.users,
            "entity": self.entities,
            "graph": self.graphs,
            "solvency": self.solvencies,
        }
        users = []
        for unit in units:
            kind, _, number = unit.partition("-")
            shards[kind].pop(int(number), None)
            self.chains.pop(unit, None)
            if kind == "user":
                users.append(int(number))
        return users

    def units(self) -> list[str]:
        return (
            [user_unit(p) for p in self.users]
            + [entity_unit(q) for q in self.entities]
            + [graph_unit(g) for g in self.graphs]
            + [solvency_unit(s) for s in self.solvencies]
        )

    def checkpoints(self) -> tuple[dict[str, Callable[[], bytes]], Callable[[], None]]:
        """Per unit, a function that pickles it whole as of now (call it now, or in a forked
        child), and what to do once every one of them is durably written."""
        done = self._round(incremental=False)
        return {unit: piece.snapshot for unit, piece in done.pieces.items()}, done.written

    def checkpoint_round(self) -> CheckpointRound:
        """Every unit's next checkpoint as of now: a delta of its previous one where its
        chain allows (`DeltaChain`), else full."""
        return self._round(incremental=True)

    def _round(self, *, incremental: bool) -> CheckpointRound:
        floors = {p: (shard.floor(), shard.books.mark) for p, shard in self.users.items()}
        users = dict(self.users)
        plans: dict[str, tuple[DeltaChain, Plan]] = {}
        pieces: dict[str, Piece] = {}
        for p, shard in users.items():
            unit = user_unit(p)
            plan = self._plan(unit, shard, plans) if incremental else None
            pieces[unit] = self._piece(partial(shard.snapshot, floors[p][0], plan), plan)
        for q, entity in self.entities.items():
            unit = entity_unit(q)
            plan = self._plan(unit, entity, plans) if incremental else None
            pieces[unit] = self._piece(partial(entity.snapshot, plan), plan)
        for g, graph in self.graphs.items():
            pieces[graph_unit(g)] = Piece(graph.snapshot)
        for b, books in self.solvencies.items():
            pieces[solvency_unit(b)] = Piece(books.snapshot)

        def written() -> None:
            for p, shard in users.items():
                shard.durable(*floors[p])  # entity shards may now forget below it
            for chain, plan in plans.values():
                chain.written(plan)

        def failed() -> None:
            for chain, _ in plans.values():
                chain.failed()

        return CheckpointRound(pieces, written, failed)

    def _plan(
        self, unit: str, shard: Any, plans: dict[str, tuple[DeltaChain, Plan]]
    ) -> Plan | None:
        chain = self.chains.get(unit)
        if chain is None:
            return None
        plan = chain.plan(shard)
        plans[unit] = (chain, plan)
        return plan

    @staticmethod
    def _piece(snapshot: Callable[[], bytes], plan: Plan | None) -> Piece:
        if plan is None:
            return Piece(snapshot)
        return Piece(snapshot, plan.generation, plan.extends)

    # --- the shard of a partition --------------------------------------------------------
    def user(self, partition: int) -> UserShard | None:
        return self._shard(self.users, user_unit, partition)

    def entity(self, partition: int) -> EntityShard | None:
        return self._shard(self.entities, entity_unit, partition)

    def graph(self, partition: int) -> GraphShard | None:
        return self._shard(self.graphs, graph_unit, partition)

    def solvency(self, partition: int) -> SolvencyShard | None:
        return self._shard(self.solvencies, solvency_unit, partition)

    def _shard(self, shards: dict[int, S], unit: Callable[[int], str], partition: int) -> S | None:
        shard = shards.get(partition)
        if shard is None and self.own_missing:  # no broker: every partition is ours
            self.install(unit(partition), None)
            shard = shards[partition]
        return shard

    def at_next_offsets(self, kind: str, envelopes: list[tuple[int, bytes]]) -> list[RawEvent]:
        """Envelopes carried within this process (no broker) as the messages their shards
        read next: in order, from each shard's next offset on the internal topic `kind`."""
        ahead: dict[int, int] = {}
        messages = []
        for partition, value in envelopes:
            if kind == ENTITY_REQUESTS:
                entity = self.entity(partition)
                assert entity is not None
                offset = entity.next_offset
            elif kind in (GRAPH_EVENTS, SOLVENCY_MOVEMENTS):
                inbox = self.graph(partition) if kind == GRAPH_EVENTS else self.solvency(partition)
                assert inbox is not None
                offset = inbox.next_offset
            else:
                user = self.user(partition)
                assert user is not None
                offset = user.next_result_offset
            n = ahead.get(partition, 0)
            ahead[partition] = n + 1
            messages.append(RawEvent(kind, partition, offset + n, None, value))
        return messages
