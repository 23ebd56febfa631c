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
customer of every merchant would chain the whole graph together, and a ring's merchant
also serves ordinary customers (tens to thousands of them). What a ring adds is *regular
payers* (two or more payments each in the window, `EntityGraph.regular_payers`, kept as
payments arrive): a merchant paid since the last analysis with at most `Limits.merchant`
of them, and either a high rebate rate or repeat payers bringing most of its money, is a
candidate with its regular payers, plus, for collusion, the other high-rate merchants they
share (`merchant_group`): one hop, bounded by the limit.

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
    #: The most *regular payers* (`EntityGraph.regular_at` payments or more) a merchant may
    #: have and still anchor a merchant group.
    merchant: int = 40
    #: Payments by one payer that make them one of a brushed merchant's accounts.
    repeat_payments: int = 3
    #: Such payers from which a merchant may be a brushing crew's (`rings.brushing`).
    brushing_accounts: int = 5
    #: From this rebate rate a merchant is worth a look as a colluding ring's.
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

    def signed_up(self, user: str, ip: str, *, ts: int) -> None:
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
        """The merchants paid since the last call that could anchor a money ring, read from
        their *regular payers* only (`EntityGraph.regular_payers`, kept incrementally), so a
        shop's size costs nothing: at most `Limits.merchant` of them, and either a high
        rebate rate with two or more (what collusion farms), or `brushing_accounts` paying
        `repeat_payments` times or more and bringing at least half its payments (what
        brushing looks like: below that the brushing detector's closed-money trait is
        zero). Most merchants are neither."""
        limits, edges = self.limits, graph.edges
        out = []
        for merchant in sorted(self.dirty_merchants):
            regulars = graph.regular_payers.get(merchant)
            if not regulars or len(regulars) > limits.merchant:
                continue
            if graph.rebate_rates.get(merchant[2:], 0.0) >= limits.money_ring_rate:
                if len(regulars) >= 2:
                    out.append(merchant)
                continue
            repeated = [edges[(payer, merchant)].payments for payer in regulars]
            repeated = [n for n in repeated if n >= limits.repeat_payments]
            if len(repeated) >= limits.brushing_accounts and 2 * sum(
                repeated
            ) >= graph.merchant_payments.get(merchant, 0):
                out.append(merchant)
        self.dirty_merchants.clear()
        return out

    def merchant_group(self, graph: EntityGraph, merchant: str) -> list[str]:
        """`merchant` and its regular payers; for a high-rate merchant also the other
        high-rate merchants that two or more of them pay regularly (a colluding ring
        cycles money through several), with their regular payers. Bounded by the limit."""
        limits, rates = self.limits, graph.rebate_rates
        regular_payers, edges = graph.regular_payers, graph.edges
        merchants = {merchant}
        if rates.get(merchant[2:], 0.0) >= limits.money_ring_rate:
            shared: dict[str, int] = {}
            for payer in regular_payers.get(merchant, ()):
                for other in graph.adjacent.get(payer, ()):
                    if (
                        other.startswith(MERCHANT)
                        and other != merchant
                        and edges[(payer, other)].payments >= graph.regular_at
                        and rates.get(other[2:], 0.0) >= limits.money_ring_rate
                    ):
                        shared[other] = shared.get(other, 0) + 1
            merchants.update(
                other
                for other, payers in shared.items()
                if payers >= 2 and len(regular_payers.get(other, ())) <= limits.merchant
            )
        payers = {p for m in merchants for p in regular_payers.get(m, ())}
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
