"""The stages every user shard feeds: entity shards and the graph shard (see `streams.shards`).

Both read envelopes from all user partitions through an `Inbox`: an aligner over the user
partitions (each envelope's watermark says that shard will send nothing earlier), so they too
advance in exact event-time order, and exactly-once intake by item identity.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from typing import Any

from features.platform import PlatformContext
from features.referral import DepthMemo
from features.stages import REFERRAL, EntityStage, SweepClock
from features.user import TxContext
from graph.layer import MERCHANT_RINGS, GraphLayer, RingEvent, RingScore
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Label, PlatformEvent, Signup, Transaction, from_row
from streams.alignment import Aligner, Released
from streams.shards.deltas import ENTITY_STORES, Plan, delta_blob
from streams.shards.wire import ITEM_KINDS, REQUESTER, DepthKey, DepthRequest, Identity, drain


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
        aligner = self.aligner
        released: list[Released] = []
        for item in envelope["items"]:
            event = self._take(p, item)
            if event is not None:
                released += aligner.offer(p, event, (p, item))
        return released + self._moved(p, envelope["wm"], idle=envelope["idle"])

    def _moved(self, p: int, watermark: int, *, idle: bool) -> list[Released]:
        """User partition `p`'s event time stands at `watermark`, or it is idle."""
        if idle:
            return self.aligner.idle(p)
        return self.aligner.advance(p, watermark)

    def _take(self, p: int, item: list[Any]) -> Event | None:
        """The event of an item from user partition `p`, or None if it was taken in before
        (re-sent by a restored user shard)."""
        identity = (item[1], item[2])
        applied = self.applied.setdefault(p, set())
        if identity in applied:
            return None
        applied.add(identity)
        return from_row(ITEM_KINDS[item[0]], item[3])

    def snapshot(self, plan: Plan | None = None) -> bytes:
        """The checkpoint (a delta if `plan` extends an earlier one)."""
        if plan is not None and plan.extends is not None:
            return delta_blob(self, ENTITY_STORES, plan)
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    def _forget_below(self, p: int, floor: tuple[int, ...]) -> None:
        if self.floors.get(p) != floor:
            self.floors[p] = floor
            self._forget(p, floor)

    def _forget(self, p: int, floor: tuple[int, ...]) -> None:
        """Forgets the identities from `p` that are below its (new) durable floor."""
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
            context = TxContext.of_wire(request[5])
            referrer, signup_ts = context.referrer, context.signup_ts
            assert isinstance(item.event, Transaction)
            user = item.event.user_id
            if referrer is None or signup_ts is None:
                continue
            key = (user, signup_ts)
            if key not in requests and self.depths.get(user, signup_ts) is None:
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
            if kind == "p":
                assert isinstance(event, PlatformEvent)
                platform = PlatformContext.of_wire(request[5])
                entities.platform_event(event, platform, families=request[4])
                continue
            assert isinstance(event, Transaction)
            families = request[4]
            context = TxContext.of_wire(request[5])
            if families & REFERRAL and context.referrer is not None:
                signup_ts = context.signup_ts
                assert signup_ts is not None
                depth = memo.get(event.user_id, signup_ts)
                if depth is None:
                    depth = depths[(event.user_id, signup_ts)]
                    memo.put(event.user_id, signup_ts=signup_ts, depth=depth)
                context.depth = depth
            values: list[float | None] = []
            entities.transaction(event, context, out=values, families=families)
            out = self.outbox.get(p)
            if out is None:
                out = self.outbox[p] = []
            out.append([request[1], request[2], families, values])

    def envelopes(self) -> list[tuple[int, bytes]]:
        """(user partition, envelope) pairs: the results to send back."""
        return drain(self.outbox, {"q": self.partition})


@dataclass
class GraphShard(Inbox):
    """The entity graph and the rings found in it, fed in event-time order by every user
    shard (signups, transactions and the platform events the graph reads). Outputs, drained
    by the driver: ring events, and the ring score of every user and merchant whose
    strongest ring changed."""

    layer: GraphLayer
    ring_events: list[RingEvent] = field(default_factory=list)
    #: ("u" or "m", id) -> its strongest ring now, and (`REQUESTER`, user id) -> the one its
    #: points requests read, for those that changed.
    scores: dict[tuple[str, str], RingScore] = field(default_factory=dict)
    #: Whether the rings points requests read were published for every user in one (False:
    #: restored from before that key, until `__setstate__` queues them).
    requesters_published: bool = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint; one from before the requests' ring key queues it for every
        user in a ring, so that no member of a ring that stands reads its strongest ring
        until its next ring event."""
        self.__dict__.update(state)
        if not state.get("requesters_published", False):
            book = self.layer.book
            for user, rings in book.by_user.items():
                self.scores[(REQUESTER, user)] = book.best_for_request(rings)
            self.requesters_published = True

    def apply(self, released: list[Released]) -> None:
        layer = self.layer
        for item in released:
            event = item.event
            self.late += item.late
            if isinstance(event, Transaction):
                events = layer.transaction(event)
            elif isinstance(event, PlatformEvent):
                events = layer.platform_event(event)
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
                rings = book.by_user.get(user)
                self.scores[("u", user)] = book.best(rings)
                self.scores[(REQUESTER, user)] = book.best_for_request(rings)
            if event.kind in MERCHANT_RINGS:
                for merchant in event.merchants:
                    self.scores[("m", merchant)] = book.best(book.by_merchant.get(merchant))

    def take(self) -> tuple[list[RingEvent], dict[tuple[str, str], RingScore]]:
        """The ring events and score changes since the last call."""
        out = self.ring_events, self.scores
        self.ring_events, self.scores = [], {}
        return out
