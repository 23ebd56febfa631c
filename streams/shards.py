"""The two feature stages as partition-sized state machines, and the protocol between them.

`features.stages` says what each stage computes; this module says how partitions of them
cooperate over topics so that N workers give exactly the one-process features:

    inputs[p] --> UserShard p --requests[q]--> EntityShard q --results[p]--> UserShard p
    (user_id)      user family,    (entity)      merchant, device, ...         decides

- A `UserShard` owns input partition p of the three input topics (co-partitioned by user).
  It merges them into event-time order (an `Aligner` over its three sources), computes the
  user features, and sends each released event to the entity partitions that own its keys,
  batched into one *envelope* per partition with its watermark. Results come back on the
  results topic's partition p; transactions are decided in release order once all their
  parts are in (a completion queue), so the decision context (granted rebates, detectors)
  sees them in event-time order too.
- An `EntityShard` owns requests partition q. Its aligner's sources are the user shards: an
  envelope's watermark says that shard will send nothing earlier, so entity state also
  advances in exact event-time order across all user partitions.
- A `GraphShard` owns the whole entity graph (`graph.layer`): every user shard sends it
  its released signups and transactions on the graph-events topic's partition
  `GRAPH_PARTITION`, in envelopes with watermarks like the requests, so the graph too
  advances in exact event-time order, the order replay gives it: the same ring events.
  Ring scores reach the user shards through Redis (see `streams.processor`).
- User shards also talk to each other on the results topic: a label keyed by tx_id goes to
  every user shard (any of them may have decided that transaction), and the one that did
  sends the labelled vectors (`Example`s) to the others, so every shard's classifier learns
  every label. A peer's message waits until the receiver's own event time has passed it.

Exactly once across restarts (each shard is checkpointed on its own, with its input offsets):
- every item carries its identity (input topic code, offset) in partition p;
- a user shard restored from a checkpoint re-sends only items released after it; an entity
  shard remembers the identities it has applied and skips repeats, forgetting those below
  the sender's *floor* (the sender's newest durable checkpoint covers them, so they can
  never be re-sent);
- results are matched by identity; a result for an item not yet (re-)released after a
  restore waits as an orphan; duplicates (an entity shard re-running after its restore)
  find nothing pending and are dropped with the orphans below the floor.

Pure: no I/O, no clock; the async driver (`streams.processor`) moves the bytes.
"""

from __future__ import annotations

import heapq
import io
import json
import pickle
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from features.referral import DepthMemo, tree_entry
from features.stages import (
    REFERRAL,
    EntityStage,
    SweepClock,
    UserStage,
    signup_routes,
    splice,
    transaction_routes,
)
from features.user import TxContext
from features.windows import drop_oldest
from graph.layer import MERCHANT_RINGS, GraphLayer, RingEvent, RingScore, merchant_ring_counts
from rebate_guard.contract.order import KIND_RANK, Event, order_key
from rebate_guard.contract.records import (
    LABELS,
    PAYMENT,
    SIGNUPS,
    TRANSACTIONS,
    Decision,
    Label,
    RebateAdjustment,
    Signup,
    Transaction,
    from_row,
    to_row,
)
from rebate_guard.core.backtest import history_row_json
from rebate_guard.core.decider import REPEAT_AT_MERCHANT, Decider, Example, Features
from streams.alignment import START as _START
from streams.alignment import Aligner, Released

#: Input topics by the code that identifies them inside a user partition.
TOPIC_CODES = {TRANSACTIONS: 0, SIGNUPS: 1, LABELS: 2}
Identity = tuple[int, int]  # (topic code, offset): one input message of a user partition
#: Where an event sits in event-time order: `order_key` without the input order.
OrderKey = tuple[int, int, str]
#: What a referral-tree write is: (user, referrer, signup ts).
TreeWrite = tuple[str, str, int]
#: A referral depth to find: keyed by (user, signup ts), asked as (referrer, user, signup ts).
DepthKey = tuple[str, int]
DepthRequest = tuple[str, str, int]

_KINDS: dict[str, type[Transaction] | type[Signup] | type[Label]] = {
    "t": Transaction,
    "s": Signup,
    "l": Label,
}


#: Where the classes that checkpoints pickle lived before issue #19 moved them: the records
#: were Faust records in `streams.records`, the decision core sat at the top of `rebate_guard`.
MOVED_MODULES = {
    "streams.records": "rebate_guard.contract.records",
    "rebate_guard.scoring": "rebate_guard.core.decider",
    "rebate_guard.policy": "rebate_guard.core.policy",
    "rebate_guard.budget": "rebate_guard.core.budget",
    "rebate_guard.ledger": "rebate_guard.core.ledger",
}


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def load_checkpoint(blob: bytes) -> Any:
    """A shard's checkpoint (`snapshot`), also one written by an earlier release."""
    return _CheckpointUnpickler(io.BytesIO(blob)).load()


#: Items per envelope: keeps messages far below Kafka's 1 MB default request size.
ENVELOPE_ITEMS = 256
#: The graph-events partition the graph shard reads; the topic has `RG_PARTITIONS` like
#: every internal topic (co-partitioning), the others stay empty. README.md "Scaling the
#: graph" says how the graph would split past one partition.
GRAPH_PARTITION = 0


def strongest(scores: list[RingScore]) -> tuple[float, list[str]] | None:
    """The ring score and reason a transaction gets from its user's and merchant's
    entries: the strongest ring, ties to the first ring id (as `RingBook.strongest`)."""
    found = [s for s in scores if s is not None]
    if not found:
        return None
    score, kind, _ = min(found, key=lambda s: (-s[0], s[2]))
    return score, [f"ring:{kind}"]


def ring_of(
    tx: Transaction,
    vector: list[float | None],
    ring_scores: Mapping[tuple[str, str], RingScore],
) -> tuple[float, list[str]] | None:
    """The ring score and reason `tx` is decided with: its user's strongest ring, or its
    merchant's for a returning customer (`graph.layer.merchant_ring_counts`)."""
    at_merchant = None
    if merchant_ring_counts(vector[REPEAT_AT_MERCHANT]):
        at_merchant = ring_scores.get(("m", tx.merchant_id))
    return strongest([ring_scores.get(("u", tx.user_id)), at_merchant])


def _dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def _chunks(items: list[list[Any]]) -> list[list[list[Any]]]:
    """`items` in envelope-sized pieces; always at least one (maybe empty) piece."""
    return [items[i : i + ENVELOPE_ITEMS] for i in range(0, len(items), ENVELOPE_ITEMS)] or [[]]


def _drain(outbox: dict[int, list[list[Any]]], header: dict[str, Any]) -> list[tuple[int, bytes]]:
    """(partition, envelope) pairs with every item in `outbox`, which is left empty."""
    out = [
        (partition, _dumps({**header, "items": chunk}))
        for partition, items in outbox.items()
        for chunk in _chunks(items)
    ]
    outbox.clear()
    return out


class Entry:
    """A released event in a user shard's completion queue, or an example to learn that
    another user shard sent (placed where its label sits in event-time order)."""

    __slots__ = ("event", "head", "identity", "key", "missing", "origin", "parts", "repeat")

    def __init__(
        self,
        event: Event | Example,
        identity: Identity,
        origin: int,
        key: OrderKey | None = None,
    ) -> None:
        self.event = event
        self.identity = identity
        self.origin = origin  # the user partition whose input `identity` names
        if key is None:
            assert not isinstance(event, Example), "an example sits where its label does"
            key = order_key(event, 0)[:3]
        self.key = key
        self.head: list[float | None] = []  # the user-stage features
        self.parts: dict[int, list[float | None]] = {}  # families mask -> values
        self.missing = 0  # entity results still to come
        self.repeat = False  # a second message for a tx_id: its first decision stands

    def add(self, families: int, values: list[float | None]) -> None:
        if families not in self.parts:
            self.parts[families] = values
            self.missing -= 1


@dataclass
class Completed:
    """What a user shard finished: decisions (with their vectors) and repeated tx_ids, and
    every transaction's tx_id in order (the decisions topic answers each message)."""

    decisions: list[tuple[Decision, Features]] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    #: The ledger's adjustments (labels, refunds, hold timeouts), in order.
    adjustments: list[RebateAdjustment] = field(default_factory=list)
    #: The payment or refund of each of `decisions`, in the same order (the console's index),
    #: and each payment's history row (`rebate_guard.core.backtest.HistoryRow` JSON; None for a
    #: refund or when the shard keeps none): what policy backtests re-decide.
    transactions: list[Transaction] = field(default_factory=list)
    history_rows: list[bytes | None] = field(default_factory=list)
    #: The labels taken in, in order (the console shows each case's newest).
    labels: list[Label] = field(default_factory=list)


@dataclass
class UserShard:
    partition: int
    n_entity: int
    users: UserStage
    decider: Decider
    decision_ttl_ms: int
    sweep_every_ms: int
    lateness_ms: int
    #: User partitions in all (this one's peers share labels and examples with it).
    n_user: int = 1
    #: Whether a graph shard takes this shard's signups and transactions.
    feeds_graph: bool = True
    #: Whether to make each payment's history row (`Completed.history_rows`) for the console.
    keep_history: bool = False
    aligner: Aligner[int] = field(init=False)
    #: Next offset to read per topic code: everything before it is in the state.
    next_offset: dict[int, int] = field(default_factory=dict)
    #: Next offset of the results partition.
    next_result_offset: int = 0
    #: tx_id -> ts of transactions released, oldest first, kept for the decision TTL.
    seen: dict[str, int] = field(default_factory=dict)
    queue: deque[Entry] = field(default_factory=deque)
    pending: dict[Identity, Entry] = field(default_factory=dict)
    orphans: dict[Identity, dict[int, list[float | None]]] = field(default_factory=dict)
    #: Per topic code, no item below this offset will ever be sent again (see `floor`).
    durable_floor: list[int] = field(default_factory=lambda: [0, 0, 0])
    #: Per entity partition, the (watermark, idle, floor) it was last told.
    told: dict[int, tuple[int, bool, tuple[int, ...]]] = field(default_factory=dict)
    #: What peers sent and this shard's event time has not reached yet: (key, arrival,
    #: entry) in a heap. Placing it in the queue earlier could let a transaction that
    #: this shard has not released yet be scored after learning from its future.
    held: list[tuple[OrderKey, int, Entry]] = field(default_factory=list)
    #: Identities of peer items taken in -> their ts, kept for the decision TTL (a peer
    #: restored from its checkpoint sends some again).
    peer_seen: dict[tuple[Any, ...], int] = field(default_factory=dict)
    peer_arrivals: int = 0
    #: Possibly re-deciding transactions already decided (set on every (re)start): the
    #: driver then looks up their standing decisions (see `complete`).
    redo: bool = True
    late: int = 0
    swept: int = 0
    # Output for the driver, drained after every call (so empty in any checkpoint).
    outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
    peer_outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
    graph_outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
    #: What the graph shard was last told: (watermark, idle, floor).
    graph_told: tuple[int, bool, tuple[int, ...]] | None = None
    tree_writes: list[TreeWrite] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.aligner = Aligner(frozenset(TOPIC_CODES.values()), self.lateness_ms)
        self.sweeps = SweepClock(self.sweep_every_ms)

    # --- input ----------------------------------------------------------------------------
    def offer(self, code: int, offset: int, event: Event | None) -> bool:
        """One input message (`event` None: a dead letter, consumed all the same). False if
        the state already covers its offset (re-read after a restore)."""
        if offset < self.next_offset.get(code, 0):
            return False
        self.next_offset[code] = offset + 1
        if event is not None:
            self._release(self.aligner.offer(code, event, (code, offset)))
            self._admit()
        return True

    def idle(self, code: int) -> None:
        """Input `code` has been silent for a while: stop holding event time for it."""
        self._release(self.aligner.idle(code))
        self._admit()

    def _release(self, released: list[Released]) -> None:
        for item in released:
            event = item.event
            self.late += item.late
            if self.sweeps.due(event.ts):
                self.swept += self.users.sweep(event.ts)
            if isinstance(event, Transaction):
                self._transaction(event, item.tag)
            elif isinstance(event, Signup):
                self._signup(event, item.tag)
            else:
                assert isinstance(event, Label)
                self._label(event, item.tag)

    def _label(self, event: Label, identity: Identity) -> None:
        row = to_row(event)
        for q in range(self.n_entity):  # it names no merchant: every partition looks
            self._send(q, ["l", *identity, row])
        # The decider learns it in order. A user-level label is keyed by its user, so this
        # shard decided the user's transactions; a tx-level one is keyed by tx_id, and any
        # user shard may have decided that transaction: each looks.
        self.queue.append(Entry(event, identity, self.partition))
        if event.tx_id is not None:
            self._tell_peers(["l", *identity, row])

    def _tell_peers(self, item: list[Any]) -> None:
        for peer in range(self.n_user):
            if peer != self.partition:
                items = self.peer_outbox.get(peer)
                if items is None:
                    items = self.peer_outbox[peer] = []
                items.append(item)

    def _signup(self, event: Signup, identity: Identity) -> None:
        row = to_row(event)
        if self.feeds_graph:  # every signup, as replay gives them (the graph's clock moves)
            self.graph_outbox.setdefault(GRAPH_PARTITION, []).append(["s", *identity, row])
        if not self.users.signup(event):
            return  # repeated or redelivered: the first signup stands
        entry = tree_entry(event)
        if entry is not None:
            self.tree_writes.append((event.user_id, *entry))
        for q, families in signup_routes(event, self.n_entity):
            self._send(q, ["s", *identity, row, families])

    def _transaction(self, tx: Transaction, identity: Identity) -> None:
        entry = Entry(tx, identity, self.partition)
        self.queue.append(entry)
        if tx.tx_id in self.seen:
            entry.repeat = True
            return
        self.seen[tx.tx_id] = tx.ts
        entry.head, context = self.users.transaction(tx)
        routes = list(transaction_routes(tx, context, self.n_entity))
        entry.missing = len(routes)
        row = to_row(tx)
        user_context = [context.account_age_ms, context.signup_ts, context.referrer]
        for q, families in routes:
            self._send(q, ["t", *identity, row, families, user_context])
        if self.feeds_graph:
            self.graph_outbox.setdefault(GRAPH_PARTITION, []).append(["t", *identity, row])
        self.pending[identity] = entry
        early = self.orphans.pop(identity, None)
        if early:
            for families, values in early.items():
                entry.add(families, values)

    def _send(self, q: int, item: list[Any]) -> None:
        items = self.outbox.get(q)
        if items is None:
            items = self.outbox[q] = []
        items.append(item)

    def results(self, offset: int, payload: bytes) -> bool:
        """A results envelope from an entity shard, or labels and examples from a peer.
        False if already covered."""
        if offset < self.next_result_offset:
            return False
        self.next_result_offset = offset + 1
        envelope = json.loads(payload)
        if "from" in envelope:
            self._from_peer(envelope["from"], envelope["items"])
            return True
        for code, item_offset, families, values in envelope["items"]:
            identity = (code, item_offset)
            entry = self.pending.get(identity)
            if entry is not None:
                entry.add(families, values)
            else:  # its item is not (re-)released yet, or this is a duplicate
                self.orphans.setdefault(identity, {})[families] = values
        return True

    def _from_peer(self, peer: int, items: list[list[Any]]) -> None:
        """Labels and examples from user shard `peer`, each taken in once."""
        identity: tuple[Any, ...]
        for item in items:
            if item[0] == "l":  # ["l", code, offset, label row]
                identity = ("l", peer, item[1], item[2])
                if identity in self.peer_seen:
                    continue
                label = from_row(Label, item[3])
                self.peer_seen[identity] = label.ts
                self._hold(Entry(label, (item[1], item[2]), peer))
            else:  # ["x", origin, code, offset, label id, tx_id, fraud, risk, ts, x]
                _, origin, code, offset, label_id, tx_id, fraud, risk, ts, x = item
                identity = ("x", origin, code, offset, tx_id)
                if identity in self.peer_seen:
                    continue
                self.peer_seen[identity] = ts
                example = Example(tx_id, x, fraud, risk, ts)
                key = (ts, KIND_RANK[Label], label_id)  # where its label sits
                self._hold(Entry(example, (code, offset), origin, key))
        self._admit()

    def _hold(self, entry: Entry) -> None:
        self.peer_arrivals += 1
        heapq.heappush(self.held, (entry.key, self.peer_arrivals, entry))

    def _admit(self) -> None:
        """Queue the held peer items that event time has reached, each where it sits in
        event-time order: every own event before it has been released by then."""
        held = self.held
        if not held:
            return
        aligner = self.aligner
        drained = not aligner.buffer and aligner.idle_sources == aligner.sources
        queue = self.queue
        while held and (drained or held[0][0][0] < aligner.watermark):
            entry = heapq.heappop(held)[2]
            at = len(queue)
            while at and queue[at - 1].key > entry.key:
                at -= 1
            queue.insert(at, entry)

    # --- output ---------------------------------------------------------------------------
    def ready(self) -> list[Transaction]:
        """The transactions `complete` would decide now."""
        out = []
        for entry in self.queue:
            if entry.missing:
                break
            event = entry.event
            if isinstance(event, Transaction) and not entry.repeat:
                out.append(event)
        return out

    def complete(
        self,
        decided_at: int,
        standing: Mapping[str, Decision] | None = None,
        ring_scores: Mapping[tuple[str, str], RingScore] | None = None,
        graph_down: bool = False,
    ) -> Completed:
        """Decide every transaction at the head of the queue whose parts are all in, and
        learn the labels and examples among them in their turn.

        After a restart the shard re-decides what it decided after its checkpoint; those
        decisions stand (first write wins), and the re-run may decide otherwise (its models
        learned other shards' examples at other moments). `standing`, for a shard that
        may be re-deciding (`redo`): tx_id -> its standing decision, for those of
        `ready()` decided before, so the ledger and later refunds follow what was really
        paid. Decisions are stored in order, so once one was not decided before,
        none after it was: `redo` ends.

        `ring_scores`: the strongest ring of each user ("u", id) and merchant ("m", id) of
        `ready()` that is in one, as the graph shard last published (`GraphShard.take`);
        `graph_down`: that graph shard is not running, so those scores may be stale and
        the decisions fail closed."""
        done = Completed()
        rings = ring_scores or {}
        stood = standing or {}
        queue, decider = self.queue, self.decider
        while queue and not queue[0].missing:
            entry = queue.popleft()
            event = entry.event
            if isinstance(event, Example):
                decider.learn(event)
                continue
            if isinstance(event, Label):
                self._learn_label(entry, event, decided_at)
                done.labels.append(event)
                continue
            assert isinstance(event, Transaction)
            done.order.append(event.tx_id)
            if entry.repeat:
                done.repeats.append(event.tx_id)
                continue
            del self.pending[entry.identity]
            vector = entry.head
            splice(entry.parts, vector)
            earlier = stood.get(event.tx_id)
            if standing is not None and earlier is None:
                self.redo = False
            ring = ring_of(event, vector, rings)
            decision = decider.decide(event, vector, decided_at, earlier, ring, graph_down)
            done.decisions.append(decision)
            done.transactions.append(event)
            done.history_rows.append(self._history_row(event, decision[0]))
        done.adjustments = decider.take_adjustments()
        if done.decisions:
            # Forget tx_ids once their decisions' idempotency horizon has passed.
            horizon = done.decisions[-1][0].ts - self.decision_ttl_ms
            drop_oldest(self.seen, horizon)
            drop_oldest(self.peer_seen, horizon)
        return done

    def _history_row(self, tx: Transaction, decision: Decision) -> bytes | None:
        """What the policy saw for this payment (read right after `decide`)."""
        if not self.keep_history or tx.kind != PAYMENT:
            return None
        inputs = self.decider.policy_inputs()
        return history_row_json(tx, decision, **inputs, partition=self.partition)

    def _learn_label(self, entry: Entry, label: Label, decided_at: int) -> None:
        """Learns what `label` teaches from the transactions decided here, and sends the
        examples to every peer: each user shard's classifier learns from every label."""
        examples = self.decider.label(label, decided_at)
        if not examples or self.n_user == 1:
            return
        code, offset = entry.identity
        label_id = entry.key[2]
        for e in examples:
            # Examples carry the identity of the label's input message, as sent by its
            # origin: a peer that hears of it twice (after a restore) takes it once.
            self._tell_peers(
                ["x", entry.origin, code, offset, label_id, e.tx_id, e.fraud, e.risk, e.ts, e.x]
            )

    def peer_envelopes(self) -> list[tuple[int, bytes]]:
        """(user partition, envelope) pairs for the results topic: labels and examples."""
        return _drain(self.peer_outbox, {"from": self.partition})

    def _mark(self) -> tuple[int, bool, tuple[int, ...]]:
        """Where this shard's event time stands: (watermark, idle, durable floor)."""
        aligner = self.aligner
        idle = not aligner.buffer and aligner.idle_sources == aligner.sources
        return (aligner.watermark, idle, tuple(self.durable_floor))

    def envelopes(self) -> list[tuple[int, bytes]]:
        """(entity partition, envelope) pairs to send now: new items, and where this shard's
        event time stands whenever that moved."""
        mark = self._mark()
        out: list[tuple[int, bytes]] = []
        for q in range(self.n_entity):
            items = self.outbox.pop(q, None)
            told = self.told.get(q)
            if items is not None or told != mark:
                out += [(q, e) for e in self._marked(items, told, mark)]
                self.told[q] = mark
        if self.orphans:
            self._drop_stale_orphans()
        return out

    def graph_envelopes(self) -> list[tuple[int, bytes]]:
        """(graph partition, envelope) pairs: signups and transactions for the graph shard,
        with this shard's event time (the same protocol as `envelopes`)."""
        if not self.feeds_graph:
            return []
        mark = self._mark()
        items = self.graph_outbox.pop(GRAPH_PARTITION, None)
        if items is None and self.graph_told == mark:
            return []
        told, self.graph_told = self.graph_told, mark
        return [(GRAPH_PARTITION, e) for e in self._marked(items, told, mark)]

    def _marked(
        self,
        items: list[list[Any]] | None,
        told: tuple[int, bool, tuple[int, ...]] | None,
        mark: tuple[int, bool, tuple[int, ...]],
    ) -> list[bytes]:
        chunks = _chunks(items or [])
        # Only the last chunk moves the watermark: the later chunks' items are not sent yet.
        held = _START if told is None else told[0]
        out = [self._envelope(held, False, mark[2], chunk) for chunk in chunks[:-1]]
        out.append(self._envelope(*mark, chunks[-1]))
        return out

    def _envelope(
        self, watermark: int, idle: bool, floor: tuple[int, ...], items: list[list[Any]]
    ) -> bytes:
        return _dumps(
            {"p": self.partition, "wm": watermark, "idle": idle, "floor": floor, "items": items}
        )

    def take_tree_writes(self) -> list[TreeWrite]:
        writes, self.tree_writes = self.tree_writes, []
        return writes

    # --- checkpoints ----------------------------------------------------------------------
    def floor(self) -> list[int]:
        """Per topic code, the lowest offset this shard could still send an item for: the
        next unread offset, or an earlier one still waiting in the aligner."""
        floor = [self.next_offset.get(code, 0) for code in range(len(TOPIC_CODES))]
        for _, _, (code, offset) in self.aligner.buffer:
            if offset < floor[code]:
                floor[code] = offset
        return floor

    def snapshot(self, floor: list[int]) -> bytes:
        """The checkpoint; `floor` (from `floor()` now) becomes durable once it is written,
        and is durable by definition in the state it restores."""
        durable, self.durable_floor = self.durable_floor, floor
        try:
            return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            self.durable_floor = durable

    def _drop_stale_orphans(self) -> None:
        floor = self.floor()
        stale = [i for i in self.orphans if i[1] < floor[i[0]]]
        for identity in stale:  # released already, and complete: a duplicate result
            del self.orphans[identity]


@dataclass
class Inbox:
    """What a stage fed by every user shard shares (entity shards, the graph shard): an
    aligner over the user partitions, exactly-once intake by item identity, and the input
    offset. Subclasses are dataclasses whose first fields are `partition` and `n_user`."""

    partition: int
    n_user: int

    def __post_init__(self) -> None:
        # No lateness: user shards send in order, with explicit watermarks.
        self.aligner: Aligner[int] = Aligner(frozenset(range(self.n_user)))
        self.next_offset = 0
        #: Per user partition, identities of the items applied and not yet below its floor.
        self.applied: dict[int, set[Identity]] = {}
        self.floors: dict[int, tuple[int, ...]] = {}
        self.late = 0

    def offer(self, offset: int, payload: bytes) -> list[Released] | None:
        """An envelope from a user shard; returns what is released (None: already
        covered). Each released item is tagged (user partition, item)."""
        if offset < self.next_offset:
            return None
        self.next_offset = offset + 1
        envelope = json.loads(payload)
        p = envelope["p"]
        self._forget_below(p, tuple(envelope["floor"]))
        applied = self.applied.setdefault(p, set())
        aligner = self.aligner
        released: list[Released] = []
        for item in envelope["items"]:
            identity = (item[1], item[2])
            if identity in applied:
                continue  # re-sent by a restored user shard
            applied.add(identity)
            event = from_row(_KINDS[item[0]], item[3])
            released += aligner.offer(p, event, (p, item))
        if envelope["idle"]:
            released += aligner.idle(p)
        else:
            released += aligner.advance(p, envelope["wm"])
        return released

    def snapshot(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    def _forget_below(self, p: int, floor: tuple[int, ...]) -> None:
        if self.floors.get(p) == floor:
            return
        self.floors[p] = floor
        applied = self.applied.get(p)
        if applied:
            self.applied[p] = {i for i in applied if i[1] >= floor[i[0]]}


@dataclass
class EntityShard(Inbox):
    entities: EntityStage
    sweep_every_ms: int
    depths: DepthMemo = field(default_factory=DepthMemo)
    swept: int = 0
    outbox: dict[int, list[list[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sweeps = SweepClock(self.sweep_every_ms)

    def depth_requests(self, released: list[Released]) -> dict[DepthKey, DepthRequest]:
        """The referral depths `apply` needs for `released` that are not memoised: per
        (user, signup ts), the arguments of its `depth_walk`."""
        requests: dict[DepthKey, DepthRequest] = {}
        for item in released:
            _, request = item.tag
            if request[0] != "t" or not request[4] & REFERRAL:
                continue
            _, signup_ts, referrer = request[5]
            assert isinstance(item.event, Transaction)
            user = item.event.user_id
            key = (user, signup_ts)
            if (
                referrer is not None
                and key not in requests
                and self.depths.get(user, signup_ts) is None
            ):
                requests[key] = (referrer, user, signup_ts)
        return requests

    def apply(self, released: list[Released], depths: dict[DepthKey, int]) -> None:
        """Applies released items in order; a transaction's values go to the outbox of
        the user partition that sent it. `depths`: the answers to `depth_requests`."""
        entities, memo = self.entities, self.depths
        for item in released:
            event = item.event
            self.late += item.late
            if self.sweeps.due(event.ts):
                self.swept += entities.sweep(event.ts)
            p, request = item.tag
            kind = request[0]
            if kind == "l":
                assert isinstance(event, Label)
                entities.label(event)
                continue
            if kind == "s":
                assert isinstance(event, Signup)
                entities.signup(event, request[4])
                continue
            assert isinstance(event, Transaction)
            families = request[4]
            context = TxContext(*request[5])
            if families & REFERRAL and context.referrer is not None:
                signup_ts = context.signup_ts
                assert signup_ts is not None
                depth = memo.get(event.user_id, signup_ts)
                if depth is None:
                    depth = depths[(event.user_id, signup_ts)]
                    memo.put(event.user_id, signup_ts, depth)
                context.depth = depth
            values: list[float | None] = []
            entities.transaction(event, context, values, families)
            out = self.outbox.get(p)
            if out is None:
                out = self.outbox[p] = []
            out.append([request[1], request[2], families, values])

    def envelopes(self) -> list[tuple[int, bytes]]:
        """(user partition, envelope) pairs: the results to send back."""
        return _drain(self.outbox, {"q": self.partition})


@dataclass
class GraphShard(Inbox):
    """The entity graph and the rings found in it, fed in event-time order by every user
    shard. Outputs, drained by the driver: ring events, and the ring score of every user
    and merchant whose strongest ring changed."""

    layer: GraphLayer
    ring_events: list[RingEvent] = field(default_factory=list)
    #: ("u" or "m", id) -> its strongest ring now, for those that changed.
    scores: dict[tuple[str, str], RingScore] = field(default_factory=dict)

    def apply(self, released: list[Released]) -> None:
        layer = self.layer
        for item in released:
            event = item.event
            self.late += item.late
            if isinstance(event, Transaction):
                events = layer.transaction(event)
            else:
                assert isinstance(event, Signup)
                events = layer.signup(event)
            if events:
                self._changed(events)
                self.ring_events += events

    def _changed(self, events: list[RingEvent]) -> None:
        book = self.layer.book
        for event in events:
            for user in event.users:
                self.scores[("u", user)] = self._score(book.by_user.get(user))
            if event.kind in MERCHANT_RINGS:
                for merchant in event.merchants:
                    self.scores[("m", merchant)] = self._score(book.by_merchant.get(merchant))

    def _score(self, ring_ids: set[str] | None) -> RingScore:
        ring = self.layer.book.best(ring_ids)
        return None if ring is None else (ring.score, ring.kind, ring.ring_id)

    def take(self) -> tuple[list[RingEvent], dict[tuple[str, str], RingScore]]:
        """The ring events and score changes since the last call."""
        out = self.ring_events, self.scores
        self.ring_events, self.scores = [], {}
        return out
