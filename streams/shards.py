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

import json
import pickle
from collections import deque
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
from rebate_guard.scoring import Decider, Event, Features
from streams.alignment import START as _START
from streams.alignment import Aligner, Released
from streams.records import (
    LABELS,
    SIGNUPS,
    TRANSACTIONS,
    Decision,
    Label,
    Signup,
    Transaction,
    from_row,
    to_row,
)

#: Input topics by the code that identifies them inside a user partition.
TOPIC_CODES = {TRANSACTIONS: 0, SIGNUPS: 1, LABELS: 2}
Identity = tuple[int, int]  # (topic code, offset): one input message of a user partition
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


#: Items per envelope: keeps messages far below Kafka's 1 MB default request size.
ENVELOPE_ITEMS = 256


def _dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def _chunks(items: list[list[Any]]) -> list[list[list[Any]]]:
    """`items` in envelope-sized pieces; always at least one (maybe empty) piece."""
    return [items[i : i + ENVELOPE_ITEMS] for i in range(0, len(items), ENVELOPE_ITEMS)] or [[]]


class Entry:
    """A released event in a user shard's completion queue."""

    __slots__ = ("event", "head", "identity", "missing", "parts", "repeat")

    def __init__(self, event: Event, identity: Identity) -> None:
        self.event = event
        self.identity = identity
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


@dataclass
class UserShard:
    partition: int
    n_entity: int
    users: UserStage
    decider: Decider
    decision_ttl_ms: int
    sweep_every_ms: int
    lateness_ms: int
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
    late: int = 0
    swept: int = 0
    # Output for the driver, drained after every call (so empty in any checkpoint).
    outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
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
        return True

    def idle(self, code: int) -> None:
        """Input `code` has been silent for a while: stop holding event time for it."""
        self._release(self.aligner.idle(code))

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
                row = to_row(event)
                for q in range(self.n_entity):  # it names no merchant: every partition looks
                    self._send(q, ["l", *item.tag, row])
                self.queue.append(Entry(event, item.tag))  # the decider learns it in order

    def _signup(self, event: Signup, identity: Identity) -> None:
        if not self.users.signup(event):
            return  # repeated or redelivered: the first signup stands
        entry = tree_entry(event)
        if entry is not None:
            self.tree_writes.append((event.user_id, *entry))
        row = to_row(event)
        for q, families in signup_routes(event, self.n_entity):
            self._send(q, ["s", *identity, row, families])

    def _transaction(self, tx: Transaction, identity: Identity) -> None:
        entry = Entry(tx, identity)
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
        """A results envelope from an entity shard. False if already covered."""
        if offset < self.next_result_offset:
            return False
        self.next_result_offset = offset + 1
        for code, item_offset, families, values in json.loads(payload)["items"]:
            identity = (code, item_offset)
            entry = self.pending.get(identity)
            if entry is not None:
                entry.add(families, values)
            else:  # its item is not (re-)released yet, or this is a duplicate
                self.orphans.setdefault(identity, {})[families] = values
        return True

    # --- output ---------------------------------------------------------------------------
    def complete(self, decided_at: int) -> Completed:
        """Decide every transaction at the head of the queue whose parts are all in."""
        done = Completed()
        queue, decider = self.queue, self.decider
        while queue and not queue[0].missing:
            entry = queue.popleft()
            event = entry.event
            if isinstance(event, Label):
                decider.label(event)
                continue
            assert isinstance(event, Transaction)
            done.order.append(event.tx_id)
            if entry.repeat:
                done.repeats.append(event.tx_id)
                continue
            del self.pending[entry.identity]
            vector = entry.head
            splice(entry.parts, vector)
            done.decisions.append(decider.decide(event, vector, decided_at))
        if done.decisions:
            # Forget tx_ids once their decisions' idempotency horizon has passed.
            drop_oldest(self.seen, done.decisions[-1][0].ts - self.decision_ttl_ms)
        return done

    def envelopes(self) -> list[tuple[int, bytes]]:
        """(entity partition, envelope) pairs to send now: new items, and where this shard's
        event time stands whenever that moved."""
        aligner = self.aligner
        idle = not aligner.buffer and aligner.idle_sources == aligner.sources
        mark = (aligner.watermark, idle, tuple(self.durable_floor))
        out: list[tuple[int, bytes]] = []
        for q in range(self.n_entity):
            items = self.outbox.pop(q, None)
            told = self.told.get(q)
            if items is None and told == mark:
                continue
            chunks = _chunks(items or [])
            for chunk in chunks[:-1]:
                # Only the last chunk moves the watermark: its items are not sent yet.
                held = _START if told is None else told[0]
                out.append((q, self._envelope(held, False, mark[2], chunk)))
            out.append((q, self._envelope(*mark, chunks[-1])))
            self.told[q] = mark
        if self.orphans:
            self._drop_stale_orphans()
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
class EntityShard:
    partition: int
    n_user: int
    entities: EntityStage
    sweep_every_ms: int
    aligner: Aligner[int] = field(init=False)
    next_offset: int = 0
    #: Per user partition, identities of the items applied and not yet below its floor.
    applied: dict[int, set[Identity]] = field(default_factory=dict)
    floors: dict[int, tuple[int, ...]] = field(default_factory=dict)
    depths: DepthMemo = field(default_factory=DepthMemo)
    late: int = 0
    swept: int = 0
    outbox: dict[int, list[list[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # No lateness: user shards send in order, with explicit watermarks.
        self.aligner = Aligner(frozenset(range(self.n_user)))
        self.sweeps = SweepClock(self.sweep_every_ms)

    def offer(self, offset: int, payload: bytes) -> list[Released] | None:
        """A requests envelope; returns what is released (None: already covered)."""
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
        out = [
            (p, _dumps({"q": self.partition, "items": chunk}))
            for p, items in self.outbox.items()
            for chunk in _chunks(items)
        ]
        self.outbox.clear()
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    def _forget_below(self, p: int, floor: tuple[int, ...]) -> None:
        if self.floors.get(p) == floor:
            return
        self.floors[p] = floor
        applied = self.applied.get(p)
        if applied:
            self.applied[p] = {i for i in applied if i[1] >= floor[i[0]]}
