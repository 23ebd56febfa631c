"""The graph layer: entity graph, candidate groups, ring detectors and the rings found so far.

`(state, event) -> (state, ring events)`: events go in in event-time order (the scorer's
order), and every `scan_every_ms` of event time the groups that changed are analysed; a ring
found for the first time, or found again with other members or a score that moved by at least
`RESCORE_STEP`, is a `RingEvent` (the `rings` topic, `rings.parquet`). `ring_score(user,
merchant)` is what the trust weight reads: the strongest ring each is a member of, with a
reason code naming its kind. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from graph.candidates import Candidates, Limits
from graph.entity_graph import IP, MERCHANT, USER, EntityGraph
from graph.evidence import RING_REASON
from graph.rings import (
    BRUSHING,
    COLLUSION,
    NEW_ACCOUNT_MS,
    SIGNUP_BATCH,
    Finding,
    analyse_binder,
    analyse_coupon_merchant,
    analyse_earner,
    analyse_identity_group,
    analyse_merchant_group,
    analyse_receiver,
    analyse_signup_ip,
)
from rebate_guard.contract.records import (
    BINDING,
    COUPON_REDEEM,
    POINTS_TRANSFER,
    RETENTION_COMMISSION,
    PlatformEvent,
    Signup,
    Transaction,
)
from rebate_guard.contract.time import DAY_MS, MINUTE_MS

#: A ring is re-announced when its score moves by this much (or its members change).
RESCORE_STEP = 0.05
#: Only findings at least this strong are rings.
FLAG_AT = 0.5
ACTIVE, RETIRED = "active", "retired"
#: Evidence key of a ring retired because all its accounts left the window: its last
#: active version is still the verdict (a ring that stopped, not one found wrong).
LEFT_WINDOW = "left_window"
#: Kinds whose merchants are members (they take part), not just where the ring shopped: a
#: farm's or a cash-out's purchases happen at ordinary merchants, whose other customers
#: must not inherit the ring's score.
MERCHANT_RINGS = frozenset({COLLUSION, BRUSHING})
#: The platform events the graph reads (`GraphLayer.platform_event`); the worker sends the
#: graph shard these alone.
GRAPH_EVENT_KINDS = frozenset({BINDING, COUPON_REDEEM, POINTS_TRANSFER, RETENTION_COMMISSION})


#: What the scoring path reads about a user or merchant's strongest ring: (score, kind,
#: ring id), or None when it is in no ring (any more).
RingScore = tuple[float, str, str] | None


@dataclass(frozen=True)
class GraphConfig:
    window_ms: int = 30 * DAY_MS
    scan_every_ms: int = 10 * MINUTE_MS
    rebuild_every_ms: int = DAY_MS
    limits: Limits = field(default_factory=Limits)
    #: Groups larger than this are not analysed (counted in `oversized`): a group that big
    #: is a sign a limit is too loose, not a ring.
    max_group_nodes: int = 20_000


@dataclass
class Ring:
    ring_id: str
    kind: str
    users: frozenset[str]
    merchants: frozenset[str]
    score: float
    detected_at: int
    updated_at: int
    evidence: dict[str, Any]
    rebate_at_risk_cents: int
    version: int = 1


@dataclass(frozen=True)
class RingEvent:
    """One announcement of a ring (first detection or an update), as published."""

    ring_id: str
    kind: str
    version: int
    users: list[str]
    merchants: list[str]
    score: float
    detected_at: int
    ts: int  # event time of this version
    evidence: dict[str, Any]
    rebate_at_risk_cents: int
    #: ACTIVE, or RETIRED (another ring took its accounts: no longer flagged).
    status: str = "active"

    def dumps(self) -> bytes:
        """The event as JSON, as published on the rings topic."""
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def of(cls, ring: Ring, status: str = "active") -> RingEvent:
        return cls(
            ring.ring_id,
            ring.kind,
            ring.version,
            sorted(ring.users),
            sorted(ring.merchants),
            round(ring.score, 4),
            ring.detected_at,
            ring.updated_at,
            ring.evidence,
            ring.rebate_at_risk_cents,
            status,
        )


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass
class RingBook:
    """The rings found so far, and each member's strongest ring."""

    rings: dict[str, Ring] = field(default_factory=dict)
    by_user: dict[str, set[str]] = field(default_factory=dict)
    by_merchant: dict[str, set[str]] = field(default_factory=dict)
    counter: int = 0

    def record(
        self, finding: Finding, now: int, *, graph: EntityGraph | None = None
    ) -> list[RingEvent]:
        """Takes a finding in: a new ring, a new version of one, or nothing new. Rings of
        another kind it now mostly contains, and does not score below, are retired: one
        set of accounts is one ring (a farm seen early as a deep referral chain). With the
        `graph` the finding was made on, a ring's members that left its window stay in the
        ring (`_record`)."""
        if finding.kind == SIGNUP_BATCH and self._held_elsewhere(finding):
            return []
        if self._part_of_another(finding):
            return []
        event = self._record(finding, now, graph)
        if event is None:
            return []
        out = [event]
        ring = self.rings[event.ring_id]
        others = {r for u in ring.users for r in self.by_user.get(u, ())} - {ring.ring_id}
        for other_id in sorted(others):
            other = self.rings[other_id]
            inside = len(other.users & ring.users) >= 0.5 * len(other.users)
            if other.kind != ring.kind and inside and other.score <= ring.score:
                out.append(self._retire(other, now, superseded_by=ring.ring_id))
        return out

    def _retire(self, ring: Ring, now: int, **why: Any) -> RingEvent:
        """No longer flagged: out of the book, announced once more as retired, `why` in
        its evidence."""
        self._unindex(ring)
        del self.rings[ring.ring_id]
        ring.updated_at, ring.version = now, ring.version + 1
        ring.evidence = {**ring.evidence, **why}
        return RingEvent.of(ring, status=RETIRED)

    def _record(
        self, finding: Finding, now: int, graph: EntityGraph | None = None
    ) -> RingEvent | None:
        ring = self._match(finding)
        if ring is not None and graph is not None:
            # A member the graph no longer holds went quiet for a window; it was not cleared
            # by the new finding, which cannot see it. It stays in the ring as last seen (and
            # is flagged again if it comes back); dropping it would shrink a ring that
            # stopped to its last active accounts.
            gone_users = {u for u in ring.users - finding.users if u not in graph.users}
            gone_merchants = {
                m for m in ring.merchants - finding.merchants if MERCHANT + m not in graph.adjacent
            }
            if gone_users or gone_merchants:
                finding.users = finding.users | gone_users
                finding.merchants = finding.merchants | gone_merchants
        if ring is None:
            self.counter += 1
            ring = Ring(
                f"{finding.kind}-{self.counter}",
                finding.kind,
                finding.users,
                finding.merchants,
                finding.score,
                now,
                now,
                finding.evidence,
                finding.rebate_at_risk_cents,
            )
            self.rings[ring.ring_id] = ring
            self._index(ring)
            return RingEvent.of(ring)
        same_members = ring.users == finding.users and ring.merchants == finding.merchants
        if same_members and abs(ring.score - finding.score) < RESCORE_STEP:
            return None
        self._unindex(ring)
        ring.users, ring.merchants = finding.users, finding.merchants
        ring.score, ring.evidence = finding.score, finding.evidence
        ring.rebate_at_risk_cents = finding.rebate_at_risk_cents
        ring.updated_at, ring.version = now, ring.version + 1
        self._index(ring)
        return RingEvent.of(ring)

    def _held_elsewhere(self, finding: Finding) -> bool:
        """Whether a ring of a specific kind, at least as strong, already holds most of
        these accounts: the early warning has nothing to add to it."""
        others = {r for u in finding.users for r in self.by_user.get(u, ())}
        for ring_id in others:
            ring = self.rings[ring_id]
            inside = len(ring.users & finding.users) >= 0.5 * len(finding.users)
            if ring.kind != SIGNUP_BATCH and inside and ring.score >= finding.score:
                return True
        return False

    def _part_of_another(self, finding: Finding) -> bool:
        """Whether a new finding is a part of a larger ring of another specific kind: most
        of its accounts are that ring's, and they are a minority of it (a pyramid's branch
        on a shared phone looks like a farm). One set of accounts is one ring; the other
        way round (the ring mostly inside the finding: a farm seen early as a deep chain)
        the finding is the ring and retires it (`record`)."""
        if finding.kind == SIGNUP_BATCH or self._match(finding) is not None:
            return False
        others = {r for u in finding.users for r in self.by_user.get(u, ())}
        for ring_id in others:
            ring = self.rings[ring_id]
            if ring.kind in (SIGNUP_BATCH, finding.kind):
                continue
            shared = len(ring.users & finding.users)
            if shared >= 0.5 * len(finding.users) and shared < 0.5 * len(ring.users):
                return True
        return False

    def retire_expired(self, now: int, graph: EntityGraph) -> list[RingEvent]:
        """Rings that no longer stand on the window: signup batches whose accounts are no
        longer new (had they abused, a specific kind would have taken them over by now;
        what is left is a group that signed up together and behaved, such as a family
        joining on one phone), and rings none of whose accounts is left in the window
        (whose verdict stands: `LEFT_WINDOW`)."""
        out = []
        for ring_id in sorted(self.rings):
            ring = self.rings[ring_id]
            if ring.kind == SIGNUP_BATCH and now - ring.detected_at > NEW_ACCOUNT_MS:
                out.append(self._retire(ring, now, expired=True))
            elif not any(u in graph.users for u in ring.users):
                # Not withdrawn: the ring stands as last announced, but nothing of it is
                # left to score (`LEFT_WINDOW` tells readers of the rings topic which).
                out.append(self._retire(ring, now, expired=True, **{LEFT_WINDOW: True}))
        return out

    def _match(self, finding: Finding) -> Ring | None:
        """The ring of the same kind this finding is a new view of: the one sharing most
        of its users (at least half of either side)."""
        candidates = {r for u in finding.users for r in self.by_user.get(u, ())}
        best, best_overlap = None, 0.0
        for ring_id in sorted(candidates):
            ring = self.rings[ring_id]
            if ring.kind != finding.kind:
                continue
            shared = len(ring.users & finding.users)
            overlap = shared / min(len(ring.users), len(finding.users))
            if overlap >= 0.5 and overlap > best_overlap:
                best, best_overlap = ring, overlap
        return best

    def _index(self, ring: Ring) -> None:
        for user in ring.users:
            self.by_user.setdefault(user, set()).add(ring.ring_id)
        if ring.kind in MERCHANT_RINGS:
            for merchant in ring.merchants:
                self.by_merchant.setdefault(merchant, set()).add(ring.ring_id)

    def _unindex(self, ring: Ring) -> None:
        for index, keys in ((self.by_user, ring.users), (self.by_merchant, ring.merchants)):
            for key in keys:
                ids = index.get(key)
                if ids is not None:
                    ids.discard(ring.ring_id)
                    if not ids:
                        del index[key]

    def best(self, ring_ids: set[str] | None, *, skip: str | None = None) -> RingScore:
        """The `strongest` of `ring_ids` (of a kind other than `skip`), as the scoring path
        reads it."""
        if not ring_ids:
            return None
        found = (self.rings[ring_id] for ring_id in ring_ids)
        return strongest((r.score, r.kind, r.ring_id) for r in found if r.kind != skip)

    def best_for_request(self, ring_ids: set[str] | None) -> RingScore:
        """The `strongest` of `ring_ids` that is not a signup batch: what a points request
        reads (`GraphLayer.requester_ring`). A batch is accounts made together, intent and not
        abuse yet, so a request excuses it (`detectors.base.in_signup_batch`); read as the
        user's strongest ring, a bigger, stronger batch would hide the scheme a member of
        both is in (a points collectors' ring among the accounts of one sign-up drive)."""
        return self.best(ring_ids, skip=SIGNUP_BATCH)


def strongest(rings: Iterable[RingScore]) -> RingScore:
    """The strongest of `rings` (None: no ring): the highest score, ties to the first ring id;
    None when there is none."""
    return min((ring for ring in rings if ring is not None), key=_strength, default=None)


def _strength(ring: tuple[float, str, str]) -> tuple[float, str]:
    return -ring[0], ring[2]


def ring_score_of(
    user_ring: RingScore, merchant_ring: RingScore = None
) -> tuple[float, list[str]] | None:
    """The ring score and reason code a transaction is decided with, from the strongest ring of
    its user and of its merchant (None: in no ring, or the merchant's does not count, see
    `merchant_ring_counts`): the `strongest` of the two; None when neither is in a ring.

    The one choice replay (`GraphLayer.ring_score`, from the ring book) and the worker
    (`streams.shards.ring_of`, from the ring scores the graph shard published) make.

    >>> ring_score_of((0.7, "referral_farm", "r2"), (0.7, "collusion", "r1"))
    (0.7, ['ring:collusion'])
    >>> ring_score_of(None) is None
    True
    """
    ring = strongest((user_ring, merchant_ring))
    return None if ring is None else (ring[0], [f"{RING_REASON}{ring[1]}"])


def merchant_ring_counts(user_merchant_payments_7d: float | None) -> bool:
    """Whether a merchant's ring weighs on a payment there by a user in no ring: only for a
    returning customer. Rings cycle money through repeat payments; a first-time customer
    of a flagged merchant is a passer-by (on the 1M world, legitimate customers of ring
    merchants were the largest share of legitimate rebate money withheld)."""
    return bool(user_merchant_payments_7d)


@dataclass
class GraphLayer:
    config: GraphConfig = field(default_factory=GraphConfig)
    graph: EntityGraph = field(init=False)
    candidates: Candidates = field(init=False)
    book: RingBook = field(default_factory=RingBook)
    next_scan: int | None = None
    next_rebuild: int | None = None
    #: Links (non-merchant edges) expired since the groups were last rebuilt.
    expired_links: int = 0
    #: Group root or merchant -> (users, touches) when it was last analysed.
    analysed_as: dict[str, tuple[int, int]] = field(default_factory=dict)
    analysed: int = 0
    skipped: int = 0
    oversized: int = 0

    def __post_init__(self) -> None:
        self.graph = EntityGraph(self.config.window_ms)
        self.candidates = Candidates(self.config.limits)

    def signup(self, event: Signup) -> list[RingEvent]:
        out = self.due(event.ts)
        touched = self.graph.signup(event)
        self.candidates.observe(self.graph, touched)
        if touched and event.ip:  # a first signup
            self.candidates.signed_up(USER + event.user_id, IP + event.ip, ts=event.ts)
        return out

    def transaction(self, tx: Transaction) -> list[RingEvent]:
        out = self.due(tx.ts)
        graph = self.graph
        self.candidates.observe(graph, graph.transaction(tx))
        binders = graph.binders.get(USER + tx.user_id)
        if binders:  # what its binders earn on: they are worth another look
            self.candidates.dirty_binders.update(binders)
        return out

    def platform_event(self, event: PlatformEvent) -> list[RingEvent]:
        """A platform event (`GRAPH_EVENT_KINDS`; the others are not the graph's): a binding
        joins the user and the merchant that bound it, with the device and IP it was made
        on; a retention commission counts on its binding; a points transfer joins the giver
        and the receiver; a coupon used by a young account joins it and the merchant. Their
        own edge kinds (`EntityGraph.bindings`, `transfers`, `coupon_uses`): they link no
        identity group, and binders, receivers and coupon merchants are candidates of their
        own.

        Returns the ring events it caused: none, as scans keep the clock of the signups
        and transactions (the scan due by now runs at the next of them, and sees this
        event), so the platform's bookkeeping (a commission on every payment) does not
        move when rings are looked for."""
        kind, graph = event.kind, self.graph
        if kind == BINDING:
            binder = graph.binding(event)
            if binder is not None:
                self.candidates.dirty_binders.add(binder)
        elif kind == RETENTION_COMMISSION:
            graph.commission(event)
        elif kind == POINTS_TRANSFER:
            receiver = graph.transfer(event)
            if receiver is not None:
                self.candidates.dirty_receivers.add(receiver)
        elif kind == COUPON_REDEEM:
            merchant = graph.coupon_redeemed(event)
            if merchant is not None:
                self.candidates.dirty_coupon_merchants.add(merchant)
        return []

    def ring_score(self, user_id: str, merchant_id: str | None) -> tuple[float, list[str]]:
        """The strongest ring the user or the merchant belongs to: its score, and a reason
        code naming its kind (none when neither is in a ring). `merchant_id` None: the
        merchant's rings do not count (see `merchant_ring_counts`)."""
        book = self.book
        merchant = None if merchant_id is None else book.best(book.by_merchant.get(merchant_id))
        return ring_score_of(book.best(book.by_user.get(user_id)), merchant) or (0.0, [])

    def requester_ring(self, user_id: str) -> tuple[float, list[str]]:
        """The ring a points request of the user is weighed with: its strongest ring that is
        not a signup batch (`RingBook.best_for_request`), its score and reason code (none
        when there is none). A request is no repeat payment, so no merchant's ring counts."""
        book = self.book
        return ring_score_of(book.best_for_request(book.by_user.get(user_id))) or (0.0, [])

    def due(self, now: int) -> list[RingEvent]:
        """Event time has reached `now`: the scan (and rebuild) due by then, if any."""
        config = self.config
        if self.next_scan is None:
            self.next_scan = now + config.scan_every_ms
            self.next_rebuild = now + config.rebuild_every_ms
            return []
        if now < self.next_scan:
            return []
        assert self.next_rebuild is not None
        if now >= self.next_rebuild:
            gone = self.graph.expire(now)
            self.expired_links += self.candidates.links_expired(self.graph, gone)
            # Stale links only make groups larger than they are (the detectors read the live
            # graph), so the union-find is rebuilt once they are a tenth of all links.
            if self.expired_links * 10 > len(self.graph.edges) - self.graph.merchant_edges:
                self.candidates.rebuild(self.graph)
                self.analysed_as.clear()
                self.expired_links = 0
            self.next_rebuild = now + config.rebuild_every_ms
            self.candidates.forget_signups(now - NEW_ACCOUNT_MS)
            retired = self.book.retire_expired(now, self.graph)
        else:
            retired = []
        self.next_scan = now + config.scan_every_ms
        return retired + self.scan(now)

    def scan(self, now: int) -> list[RingEvent]:
        """Analyse every group that changed since the last scan: identity groups, merchant
        groups, binders (as binding rings and as commission cycles) and receivers of points,
        and IPs with new accounts (a new signup
        there is always worth a look)."""
        candidates, graph = self.candidates, self.graph
        keys = [(analyse_identity_group, root) for root in candidates.take_dirty(min_users=2)]
        keys += [(analyse_merchant_group, m) for m in candidates.take_dirty_merchants(graph)]
        out = []
        for analyse, key in keys:
            if not self._changed_enough(key):
                self.skipped += 1
                continue
            if analyse is analyse_identity_group:
                nodes = candidates.group(key)
            else:
                nodes = candidates.merchant_group(graph, key)
            if len(nodes) > self.config.max_group_nodes:
                self.oversized += 1
                continue
            self.analysed += 1
            out += self._record(analyse(graph, nodes, now=now), now)
        # Bindings and points transfers, anchored at the merchant and at the receiver; the
        # binders again as earners of commission on a cycle, unless a money ring (brushing,
        # collusion) already holds the merchant: its regular payers are that ring's, and two
        # kinds taking the same accounts in turns would only churn ring ids.
        book = self.book
        binders = [m for m in sorted(candidates.dirty_binders) if m[2:] not in book.by_merchant]
        for anchor, analyse_anchor in (
            *((m, analyse_binder) for m in candidates.take_dirty_binders(graph)),
            *((r, analyse_receiver) for r in candidates.take_dirty_receivers(graph)),
            *((m, analyse_earner) for m in candidates.cycle_earners(graph, binders)),
            *((m, analyse_coupon_merchant) for m in candidates.take_coupon_merchants(graph)),
        ):
            self.analysed += 1
            out += self._record(analyse_anchor(graph, anchor, now=now), now)
        for ip in candidates.take_signup_ips(min_accounts=5):
            self.analysed += 1
            signups = candidates.signup_ips[ip]
            out += self._record(analyse_signup_ip(graph, ip, signups=signups, now=now), now)
        return out

    def _record(self, findings: list[Finding], now: int) -> list[RingEvent]:
        out = []
        for finding in findings:
            if finding.score >= FLAG_AT:
                out += self.book.record(finding, now, graph=self.graph)
        return out

    def _changed_enough(self, key: str) -> bool:
        """Whether a group (root or merchant) changed enough since its last analysis to
        be worth another: a new member, or a quarter more edge updates (and at least 3)."""
        candidates = self.candidates
        if key.startswith(MERCHANT):
            users = len(self.graph.regular_payers.get(key, ()))
        else:
            users = candidates.user_count.get(key, 0)
        touches = candidates.touches.get(key, 0)
        before = self.analysed_as.get(key)
        if before is not None and users == before[0] and touches < before[1] * 1.25 + 3:
            return False
        self.analysed_as[key] = (users, touches)
        return True


__all__ = ["GRAPH_EVENT_KINDS", "USER", "GraphConfig", "GraphLayer", "RingEvent"]
