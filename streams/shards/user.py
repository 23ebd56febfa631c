"""A user shard: one input partition's events in event-time order, their user features, the
requests for the rest, and the decisions once every part is in (see `streams.shards`)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from features.engine import REQUEST_FEATURE_NAMES, request_vector
from features.referral import tree_entry
from features.stages import (
    SweepClock,
    UserStage,
    platform_routes,
    signup_routes,
    splice,
    transaction_routes,
)
from features.windows import drop_oldest
from graph.layer import GRAPH_EVENT_KINDS, RingScore
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import (
    PAYMENT,
    POINTS_REQUESTS,
    Decision,
    Label,
    PlatformEvent,
    Signup,
    Transaction,
    to_row,
)
from rebate_guard.core.backtest import history_row_json
from rebate_guard.core.decider import Decider, Example
from streams.alignment import Aligner, Released
from streams.shards.checkpoints import upgraded_user_state
from streams.shards.completion import Completed, Entry, requester_ring, ring_of
from streams.shards.peers import PeerExchange
from streams.shards.solvency import MovementFeed
from streams.shards.user_checkpoints import UserCheckpoints
from streams.shards.wire import (
    GRAPH_PARTITION,
    TOPIC_CODES,
    Identity,
    Mark,
    TreeWrite,
    marked_envelopes,
)


@dataclass
class UserShard(UserCheckpoints):
    partition: int
    n_entity: int
    users: UserStage
    decider: Decider
    decision_ttl_ms: int
    sweep_every_ms: int
    lateness_ms: int
    #: User partitions in all (this one's peers share labels and examples with it).
    n_user: int = 1
    #: Whether a graph shard takes this shard's signups, transactions and the platform
    #: events it reads (`graph.layer.GRAPH_EVENT_KINDS`).
    feeds_graph: bool = True
    #: Whether to make each payment's history row (`Completed.history_rows`) for the console.
    keep_history: bool = False
    aligner: Aligner[int] = field(init=False)
    #: Next offset to read per topic code: everything before it is in the state.
    next_offset: dict[int, int] = field(default_factory=dict)
    #: Next offset of the results partition.
    next_result_offset: int = 0
    #: tx_id -> ts of transactions released, oldest first, kept for the decision TTL; and
    #: event_id -> ts of platform events (a second message for one is a repeat).
    seen: dict[str, int] = field(default_factory=dict)
    seen_events: dict[str, int] = field(default_factory=dict)
    queue: deque[Entry] = field(default_factory=deque)
    pending: dict[Identity, Entry] = field(default_factory=dict)
    orphans: dict[Identity, dict[int, list[float | None]]] = field(default_factory=dict)
    #: Per topic code, no item below this offset will ever be sent again (see `floor`).
    durable_floor: list[int] = field(default_factory=lambda: [0] * len(TOPIC_CODES))
    #: Per entity partition, the (watermark, idle, floor) it was last told.
    told: dict[int, Mark] = field(default_factory=dict)
    #: Labels and examples to and from the other user shards.
    peers: PeerExchange = field(init=False)
    #: Possibly re-deciding transactions already decided (set on every (re)start): the
    #: driver then looks up their standing decisions (see `complete`).
    redo: bool = True
    late: int = 0
    swept: int = 0
    # Output for the driver, drained after every call (so empty in any checkpoint).
    outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
    graph_outbox: dict[int, list[list[Any]]] = field(default_factory=dict)
    #: What the graph shard was last told: (watermark, idle, floor).
    graph_told: Mark | None = None
    tree_writes: list[TreeWrite] = field(default_factory=list)
    #: The movements of the platform's books for the solvency shard, and where they stand.
    books: MovementFeed = field(default_factory=MovementFeed)

    def __post_init__(self) -> None:
        self.aligner = Aligner(frozenset(TOPIC_CODES.values()), self.lateness_ms)
        self.sweeps = SweepClock(self.sweep_every_ms)
        self.peers = PeerExchange(self.partition, self.n_user)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint, also one an earlier release wrote (`upgraded_user_state`)."""
        self.__dict__.update(upgraded_user_state(state))

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
            elif isinstance(event, PlatformEvent):
                self._platform_event(event, item.tag)
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
            self.peers.tell(["l", *identity, row])

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
        routes = list(transaction_routes(tx, context, n_partitions=self.n_entity))
        entry.missing = len(routes)
        row = to_row(tx)
        user_context = context.wire()
        for q, families in routes:
            self._send(q, ["t", *identity, row, families, user_context])
        if self.feeds_graph:
            self.graph_outbox.setdefault(GRAPH_PARTITION, []).append(["t", *identity, row])
        self.pending[identity] = entry
        early = self.orphans.pop(identity, None)
        if early:
            for families, values in early.items():
                entry.add(families, values)

    def _platform_event(self, event: PlatformEvent, identity: Identity) -> None:
        """Learned by the features at release, as replay does (the user's family, then those
        of its device, IP and merchant on their partitions); decided in its turn (`complete`),
        after the payments before it, whose rebates the user's points book counts. A points
        request's features are read just before it is learned (its `head`), as replay reads
        them. A second message for an event_id is a repeat."""
        entry = Entry(event, identity, self.partition)
        entry.repeat = event.event_id in self.seen_events
        if not entry.repeat:
            self.seen_events[event.event_id] = event.ts
            drop_oldest(self.seen_events, event.ts - self.decision_ttl_ms)
            if event.kind in POINTS_REQUESTS:  # weighed on what was known before it
                entry.head = request_vector(self.users, event)
            if self.feeds_graph and event.kind in GRAPH_EVENT_KINDS:  # as replay gives them
                self.graph_outbox.setdefault(GRAPH_PARTITION, []).append(
                    ["p", *identity, to_row(event)]
                )
            context = self.users.platform_event(event)
            if context is not None:  # a kind some feature reads
                for q, families in platform_routes(event, self.n_entity):
                    self._send(q, ["p", *identity, to_row(event), families, context.wire()])
        self.queue.append(entry)

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
            self.peers.hear(envelope["from"], envelope["items"])
            self._admit()
            return True
        for code, item_offset, families, values in envelope["items"]:
            identity = (code, item_offset)
            entry = self.pending.get(identity)
            if entry is not None:
                entry.add(families, values)
            else:  # its item is not (re-)released yet, or this is a duplicate
                self.orphans.setdefault(identity, {})[families] = values
        return True

    def _admit(self) -> None:
        """Queue the held peer items that event time has reached, each where it sits in
        event-time order: every own event before it has been released by then."""
        if not self.peers.held:
            return
        aligner = self.aligner
        drained = not aligner.buffer and aligner.idle_sources == aligner.sources
        queue = self.queue
        for entry in self.peers.due(aligner.watermark, drained=drained):
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

    def requesters(self) -> list[str]:
        """The users of the points requests `complete` would decide now (whose ring scores
        deciding them reads)."""
        out = []
        for entry in self.queue:
            if entry.missing:
                break
            event = entry.event
            if (
                isinstance(event, PlatformEvent)
                and event.kind in POINTS_REQUESTS
                and event.user_id is not None
                and not entry.repeat
            ):
                out.append(event.user_id)
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
        `ready()`, and of each of `requesters()` the strongest and the one its requests
        read (`streams.shards.wire.REQUESTER`), that is in one, as the graph shard last
        published (`GraphShard.take`); `graph_down`: that graph shard is not running, so
        those scores may be stale and the payments' decisions fail closed (a points request
        is weighed with the scores as they stand: its ring can only hold it)."""
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
            if isinstance(event, PlatformEvent):
                if entry.repeat and event.kind in POINTS_REQUESTS:
                    done.points_repeats.append(event.event_id)  # answered as it stands
                elif not entry.repeat:
                    points = decider.platform_event(
                        event,
                        decided_at=decided_at,
                        features=_request_features(entry),
                        ring=requester_ring(event, rings),
                    )
                    if points is not None:
                        done.points.append(points)
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
            decision = decider.decide(
                event,
                vector,
                decided_at=decided_at,
                standing=earlier,
                ring=ring,
                graph_down=graph_down,
            )
            done.decisions.append(decision)
            done.transactions.append(event)
            done.history_rows.append(self._history_row(event, decision[0]))
        self._advance_books(decided_at)
        done.adjustments = decider.take_adjustments()
        if done.decisions:
            # Forget tx_ids once their decisions' idempotency horizon has passed.
            horizon = done.decisions[-1][0].ts - self.decision_ttl_ms
            drop_oldest(self.seen, horizon)
            self.peers.forget(horizon)
        return done

    def _advance_books(self, decided_at: int) -> None:
        """The books' movements, and their mark: the oldest event still to decide, else
        the watermark (`MovementFeed.follow`)."""
        watermark = self.aligner.watermark
        mark = min(watermark, self.queue[0].key[0]) if self.queue else watermark
        self.books.follow(self.decider, mark, decided_at=decided_at)

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
            self.peers.tell(
                [
                    "x",
                    entry.origin,
                    code,
                    offset,
                    label_id,
                    e.tx_id,
                    e.fraud,
                    e.risk,
                    e.ts,
                    e.x,
                    e.sampled,
                ]
            )

    def peer_envelopes(self) -> list[tuple[int, bytes]]:
        """(user partition, envelope) pairs for the results topic: labels and examples."""
        return self.peers.envelopes()

    def _mark(self) -> Mark:
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
                out += [
                    (q, e) for e in marked_envelopes(self.partition, items, told=told, mark=mark)
                ]
                self.told[q] = mark
        if self.orphans:
            self._drop_stale_orphans()
        return out

    def graph_envelopes(self) -> list[tuple[int, bytes]]:
        """(graph partition, envelope) pairs: signups, transactions and the platform events
        it reads for the graph shard, with this shard's event time (the same protocol as
        `envelopes`)."""
        if not self.feeds_graph:
            return []
        mark = self._mark()
        items = self.graph_outbox.pop(GRAPH_PARTITION, None)
        if items is None and self.graph_told == mark:
            return []
        told, self.graph_told = self.graph_told, mark
        envelopes = marked_envelopes(self.partition, items, told=told, mark=mark)
        return [(GRAPH_PARTITION, e) for e in envelopes]

    def solvency_envelopes(self) -> list[tuple[int, bytes]]:
        """(solvency partition, envelope) pairs: the books' movements, with their mark."""
        idle = not self.queue and self._mark()[1]
        return self.books.envelopes(self.partition, idle=idle)

    def take_tree_writes(self) -> list[TreeWrite]:
        writes, self.tree_writes = self.tree_writes, []
        return writes


def _request_features(entry: Entry) -> dict[str, float | None] | None:
    """A points request's features, read at its release (None: an entry of a checkpoint
    from before they were, or not a request: nothing known)."""
    if not entry.head:
        return None
    return dict(zip(REQUEST_FEATURE_NAMES, entry.head, strict=True))
