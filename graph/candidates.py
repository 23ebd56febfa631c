"""Candidate rings: small groups found incrementally, for NetworkX to analyse.

Whole-graph analysis does not keep up with a stream (../shared/README.md: Louvain on a 1M-edge
graph took 75 s here). Two kinds of candidates instead, both cheap to keep up to date:

**Identity groups.** A union-find joins users through *strong* links only, as edges arrive:
- a referral (user -> referrer): always strong;
- a shared device, card or phone while it has at most `Limits` users: a device shared by
  three accounts is evidence, one shared by three hundred is not, so an identifier stops
  linking once it is that common. IPs never link: carrier NAT and office networks put
  unrelated people behind one address (the detectors still read them as evidence).

**Merchant groups.** Money rings (brushing, collusion) meet at merchants, but linking every
customer of every merchant would chain the whole graph together. So a *small* merchant (at
most `Limits.merchant` payers in the window) that was paid since the last analysis is a
candidate with its payers, the other small merchants they pay repeatedly, and those
merchants' payers (`merchant_group`): one hop, bounded by the limit.

**Signup IPs.** An IP links nobody, but new accounts registered from one address are what a
farm or a brushing crew looks like before it buys anything: every IP with a signup since the
last analysis is a candidate with the accounts registered there within `new_account_ms`
(`take_signup_ips`); the detector then asks whether they are most of the address's users.

Union-find cannot forget, so when edges expire the groups are rebuilt from the live window
(`rebuild`, the full candidate scan, daily by default); between rebuilds they only grow. Every
group touched since the last analysis is *dirty*; the ring detectors look only at those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graph.entity_graph import CARD, DEVICE, MERCHANT, PHONE, USER, EntityGraph, kind_of


@dataclass(frozen=True)
class Limits:
    """The most users an identifier (or payers a merchant) may have and still link them."""

    device: int = 12
    card: int = 6
    phone: int = 12
    merchant: int = 40
    #: Payments by one user that make a merchant one of "theirs" (a merchant group's hop;
    #: also the payments per payer from which a small merchant is worth a look).
    repeat_payments: int = 3
    #: From this rebate rate a small merchant is worth a look whatever its payers do.
    money_ring_rate: float = 0.12

    def of(self, kind: str) -> int:
        """The limit for identifiers of `kind`; 0 for those that never link (IPs)."""
        return {DEVICE: self.device, CARD: self.card, PHONE: self.phone}.get(kind, 0)


@dataclass
class Candidates:
    limits: Limits = field(default_factory=Limits)
    parent: dict[str, str] = field(default_factory=dict)
    #: root -> every node of its group.
    members: dict[str, list[str]] = field(default_factory=dict)
    #: root -> how many users its group has.
    user_count: dict[str, int] = field(default_factory=dict)
    #: Group root or merchant -> edges touched in it so far: how much it has changed.
    touches: dict[str, int] = field(default_factory=dict)
    #: IP node -> (signup ts, user node) of the accounts registered from it, oldest first,
    #: kept while they are new (`forget_signups`).
    signup_ips: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: IPs with a signup since the last `take_signup_ips`.
    dirty_ips: set[str] = field(default_factory=set)
    #: Nodes whose group changed since the last `take_dirty`.
    dirty: set[str] = field(default_factory=set)
    #: Merchants paid since the last `take_dirty_merchants`.
    dirty_merchants: set[str] = field(default_factory=set)

    def find(self, node: str) -> str:
        parent = self.parent
        root = parent.get(node)
        if root is None:
            parent[node] = node
            self.members[node] = [node]
            self.user_count[node] = 1 if node.startswith(USER) else 0
            return node
        while root != node:  # path halving
            grand = parent[root]
            parent[node] = grand
            node, root = grand, parent[grand]
        return root

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        self.user_count[ra] += self.user_count.pop(rb)
        self.touches[ra] = self.touches.get(ra, 0) + self.touches.pop(rb, 0)
        return ra

    def strong(self, graph: EntityGraph, other: str) -> bool:
        """Whether an edge from a user to `other` links them into one group, as of now."""
        kind = kind_of(other)
        if kind == USER:
            return True
        return graph.degree(other) <= self.limits.of(kind)

    def observe(self, graph: EntityGraph, touched: list[tuple[str, str]]) -> None:
        """Edges just added or refreshed in `graph` (user, other)."""
        touches = self.touches
        for user, other in touched:
            if other.startswith(MERCHANT):
                self.dirty_merchants.add(other)
                touches[other] = touches.get(other, 0) + 1
                continue
            root = self.union(user, other) if self.strong(graph, other) else self.find(user)
            self.dirty.add(root)
            touches[root] = touches.get(root, 0) + 1

    def signed_up(self, user: str, ip: str, ts: int) -> None:
        """A first signup of `user` from `ip`."""
        self.signup_ips.setdefault(ip, []).append((ts, user))
        self.dirty_ips.add(ip)

    def take_signup_ips(self, min_accounts: int) -> list[str]:
        """The IPs registered from since the last call with `min_accounts` new accounts."""
        ips = self.signup_ips
        out = sorted(ip for ip in self.dirty_ips if len(ips.get(ip, ())) >= min_accounts)
        self.dirty_ips.clear()
        return out

    def forget_signups(self, before: int) -> None:
        """Accounts registered before `before` are no longer new."""
        for ip in list(self.signup_ips):
            kept = [s for s in self.signup_ips[ip] if s[0] >= before]
            if kept:
                self.signup_ips[ip] = kept
            else:
                del self.signup_ips[ip]

    def take_dirty_merchants(self, graph: EntityGraph) -> list[str]:
        """The small merchants paid since the last call that could anchor a money ring:
        a high rebate rate (what collusion farms), or payers who each pay often (what
        brushing looks like). Most small merchants are neither, and cost nothing more."""
        limits = self.limits
        out = []
        for merchant in sorted(self.dirty_merchants):
            payers = graph.adjacent.get(merchant, ())
            if not payers or len(payers) > limits.merchant:
                continue
            if graph.rebate_rates.get(merchant[2:], 0.0) >= limits.money_ring_rate:
                out.append(merchant)
                continue
            payments = 0
            for payer in payers:
                edge = graph.edges.get((payer, merchant))
                payments += edge.payments if edge is not None else 0
            if payments >= limits.repeat_payments * len(payers):
                out.append(merchant)
        self.dirty_merchants.clear()
        return out

    def merchant_group(self, graph: EntityGraph, merchant: str) -> list[str]:
        """`merchant`, its payers, the other small merchants they pay repeatedly, and
        those merchants' payers."""
        limit, repeat = self.limits.merchant, self.limits.repeat_payments
        adjacent, edges = graph.adjacent, graph.edges
        merchants = {merchant}
        for payer in adjacent.get(merchant, ()):
            for other in adjacent.get(payer, ()):
                if other.startswith(MERCHANT) and other not in merchants:
                    edge = edges.get((payer, other))
                    repeated = edge is not None and edge.payments >= repeat
                    if repeated and graph.degree(other) <= limit:
                        merchants.add(other)
        payers = {p for m in merchants for p in adjacent.get(m, ())}
        return sorted(merchants) + sorted(payers)

    def take_dirty(self, min_users: int) -> list[str]:
        """Roots of the groups changed since the last call with at least `min_users`."""
        roots = {self.find(node) for node in self.dirty}
        self.dirty.clear()
        return sorted(r for r in roots if self.user_count.get(r, 0) >= min_users)

    def group(self, root: str) -> list[str]:
        return self.members[root]

    def rebuild(self, graph: EntityGraph) -> None:
        """Groups from the live window only (after `graph.expire`); every group is dirty."""
        self.parent.clear()
        self.members.clear()
        self.user_count.clear()
        self.dirty.clear()
        self.touches = {m: n for m, n in self.touches.items() if m.startswith(MERCHANT)}
        for user, other in graph.edges:
            if other.startswith(MERCHANT):
                continue
            if self.strong(graph, other):
                self.union(user, other)
            else:
                self.find(user)
        self.dirty.update(self.members)
