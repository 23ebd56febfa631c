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

**Binders and receivers.** Bindings and points transfers (`EntityGraph.bindings`,
`transfers`) link nobody into identity groups: a shop binds its customers, relatives give
each other points. Two more anchored candidates read them instead: a merchant bound to or
whose bound users paid since the last analysis, when enough of its bound users buy
elsewhere only (`take_dirty_binders`: the binding-ring detector's first trait is zero below
that), the same merchants again when its bound regular payers bring most of its payments
(`cycle_earners`: a commission cycle's), a user given points since then by enough givers
(`take_dirty_receivers`), and a merchant whose coupons enough young accounts used
(`take_coupon_merchants`). Each
is analysed with its own bound users or givers, read from indices kept as events arrive.

Union-find cannot forget, so when edges expire the groups are rebuilt from the live window
(`rebuild`, once a tenth of the links expired); between rebuilds they only grow. A rebuild
gives the groups that grouping every live link afresh would, but groups again only the
groups something changed in since the last one (`_to_regroup`). Every group touched since
the last analysis is *dirty*; the ring detectors look only at those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graph.entity_graph import CARD, DEVICE, IP, MERCHANT, PHONE, USER, EntityGraph, kind_of


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
    #: Bound users buying elsewhere only from which a merchant may anchor a binding ring
    #: (`rings.binding_ring`), and the least share of its bound users they must be.
    binding_accounts: int = 3
    binding_share: float = 0.3
    #: Givers from which a receiver of points may be a collector's (`rings.points_collector`).
    givers: int = 5
    #: Bound regular payers from which a merchant may be earning commission on a cycle
    #: (`rings.commission_cycle`), and the least share of its payments they must bring.
    cycle_accounts: int = 3
    cycle_share: float = 0.5
    #: Young accounts using a merchant's coupons from which it may be a coupon farm's
    #: (`rings.coupon_farm`).
    coupon_accounts: int = 5
    #: From this rebate rate a merchant is worth a look as a colluding ring's.
    money_ring_rate: float = 0.12

    def of(self, kind: str) -> int:
        """The limit for identifiers of `kind`; 0 for those that never link (IPs)."""
        if kind == DEVICE:
            return self.device
        if kind == CARD:
            return self.card
        return self.phone if kind == PHONE else 0


def _links_left(graph: EntityGraph, user: str) -> bool:
    """Whether `user` still has an edge to something other than a merchant."""
    return not all(n.startswith(MERCHANT) for n in graph.adjacent.get(user, ()))


class _NotClosed(Exception):
    """A link leads out of the groups a rebuild regroups (`Candidates.rebuild`)."""


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
    #: Since the last `rebuild`: nodes that joined the union-find; nodes whose groups may
    #: no longer be what grouping the live links afresh gives (groups merged, links
    #: expired); identifiers seen too common to link while in a group (links made then
    #: were not followed, and may link by the next rebuild): what it regroups.
    joined: set[str] = field(default_factory=set)
    regroup: set[str] = field(default_factory=set)
    outgrown: set[str] = field(default_factory=set)
    #: The next rebuild regroups everything (a checkpoint written before `regroup` was kept).
    regroup_all: bool = False
    #: Merchants bound to, or whose bound users paid, since the last `take_dirty_binders`;
    #: users given points since the last `take_dirty_receivers`.
    dirty_binders: set[str] = field(default_factory=set)
    dirty_receivers: set[str] = field(default_factory=set)
    #: Merchants whose coupons a young account used since the last `take_coupon_merchants`.
    dirty_coupon_merchants: set[str] = field(default_factory=set)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint; one written before `joined` and `regroup` were kept has
        its groups all regrouped at the next rebuild."""
        self.__dict__.update(state)
        if "regroup" not in state:
            self.joined, self.regroup, self.outgrown = set(), set(), set()
            self.regroup_all = True
        if "dirty_binders" not in state:
            self.dirty_binders, self.dirty_receivers = set(), set()
        if "dirty_coupon_merchants" not in state:
            self.dirty_coupon_merchants = set()

    def find(self, node: str) -> str:
        parent = self.parent
        root = parent.get(node)
        if root is None:
            parent[node] = node
            self.members[node] = [node]
            self.user_count[node] = 1 if node.startswith(USER) else 0
            self.joined.add(node)
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
        self.regroup.add(ra)
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
        touches, adjacent, limits = self.touches, graph.adjacent, self.limits
        for user, other in touched:
            if other.startswith(MERCHANT):
                self.dirty_merchants.add(other)
                touches[other] = touches.get(other, 0) + 1
                continue
            # `strong`, inline: this runs for every link of every event.
            kind = kind_of(other)
            if kind == USER or len(adjacent.get(other, ())) <= limits.of(kind):
                root = self.union(user, other)
            else:
                root = self.find(user)
                if other in self.parent:  # it linked when it was less common
                    self.outgrown.add(other)
            self.dirty.add(root)
            touches[root] = touches.get(root, 0) + 1

    def links_expired(self, graph: EntityGraph, gone: list[tuple[str, str]]) -> int:
        """Edges that just left `graph`'s window (`EntityGraph.expire`): what the next
        rebuild must regroup for them. Returns how many were links (not payments)."""
        parent, joined, links = self.parent, self.joined, 0
        for user, other in gone:
            if other.startswith(MERCHANT):
                continue
            links += 1
            if kind_of(other) != IP:
                self.regroup.add(other)  # one user fewer: it may link now
            if other in parent and other not in joined:
                self.regroup.add(user)  # it linked at the last rebuild: a group lost a link
            elif user in parent and not _links_left(graph, user):
                self.regroup.add(user)  # its last link: it leaves the groups
        return links

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
            if len(regulars) < limits.brushing_accounts:  # too few to repeat enough
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
        regular_payers, regular_merchants = graph.regular_payers, graph.regular_merchants
        merchants = {merchant}
        if rates.get(merchant[2:], 0.0) >= limits.money_ring_rate:
            shared: dict[str, int] = {}
            for payer in regular_payers.get(merchant, ()):
                for other in regular_merchants.get(payer, ()):
                    if other != merchant and rates.get(other[2:], 0.0) >= limits.money_ring_rate:
                        shared[other] = shared.get(other, 0) + 1
            merchants.update(
                other
                for other, payers in shared.items()
                if payers >= 2 and len(regular_payers.get(other, ())) <= limits.merchant
            )
        payers = {p for m in merchants for p in regular_payers.get(m, ())}
        return sorted(merchants) + sorted(payers)

    def take_dirty_binders(self, graph: EntityGraph) -> list[str]:
        """The merchants bound to (or whose bound users paid) since the last call with at
        least `Limits.binding_accounts` bound users buying elsewhere only, and at least
        `Limits.binding_share` of its bound users: read from counts kept as events arrive,
        so a shop binding thousands of customers who buy from it costs nothing."""
        limits, elsewhere, bound = self.limits, graph.buying_elsewhere, graph.bound
        out = []
        for merchant in sorted(self.dirty_binders):
            n = elsewhere.get(merchant, 0)
            if n >= limits.binding_accounts and n >= limits.binding_share * len(
                bound.get(merchant, ())
            ):
                out.append(merchant)
        self.dirty_binders.clear()
        return out

    def cycle_earners(self, graph: EntityGraph, merchants: list[str]) -> list[str]:
        """Of `merchants` (the dirty binders, read before `take_dirty_binders` clears them:
        bound to, or whose bound users paid, since the last scan), those that may be earning
        commission on a cycle: at most `Limits.merchant` regular payers (a busy shop's trade
        is not a few accounts' money), `Limits.cycle_accounts` or more of them bound to it,
        bringing at least `Limits.cycle_share` of its payments (below that the detector's
        first trait is zero). Read from the regular-payer index and the bindings."""
        limits, edges, bindings = self.limits, graph.edges, graph.bindings
        out = []
        for merchant in merchants:
            regulars = graph.regular_payers.get(merchant, ())
            if len(regulars) > limits.merchant:
                continue
            bound = [u for u in regulars if (u, merchant) in bindings]
            if len(bound) < limits.cycle_accounts:
                continue
            theirs = sum(edges[(u, merchant)].payments for u in bound)
            if theirs >= limits.cycle_share * graph.merchant_payments.get(merchant, 0):
                out.append(merchant)
        return out

    def take_dirty_receivers(self, graph: EntityGraph) -> list[str]:
        """The users given points since the last call by at least `Limits.givers` givers
        (in the window)."""
        givers, least = graph.givers, self.limits.givers
        out = sorted(r for r in self.dirty_receivers if len(givers.get(r, ())) >= least)
        self.dirty_receivers.clear()
        return out

    def take_coupon_merchants(self, graph: EntityGraph) -> list[str]:
        """The merchants whose coupons a young account used since the last call, with at
        least `Limits.coupon_accounts` young accounts using them in the window."""
        users, least = graph.coupon_users, self.limits.coupon_accounts
        out = sorted(m for m in self.dirty_coupon_merchants if len(users.get(m, ())) >= least)
        self.dirty_coupon_merchants.clear()
        return out

    def take_dirty(self, min_users: int) -> list[str]:
        """Roots of the groups changed since the last call with at least `min_users`."""
        roots = {self.find(node) for node in self.dirty}
        self.dirty.clear()
        return sorted(r for r in roots if self.user_count.get(r, 0) >= min_users)

    def group(self, root: str) -> list[str]:
        return self.members[root]

    def rebuild(self, graph: EntityGraph) -> None:
        """Groups from the live window only (after `graph.expire`); every group is dirty.

        The groups are those of grouping every live link afresh, in `graph.edges`' order
        (the same roots and members in the same order, which decide what is analysed in
        which order), but a group nothing changed in since the last rebuild already is
        that: only the others are taken apart and grouped again (`_to_regroup`)."""
        nodes = None if self.regroup_all else self._to_regroup(graph)
        try:
            self._group_links(graph, nodes)
        except _NotClosed:  # (not expected: `_to_regroup` says why)
            self._group_links(graph, None)
        self.dirty.clear()
        self.dirty.update(self.members)
        self.touches = {m: n for m, n in self.touches.items() if m.startswith(MERCHANT)}
        self.joined, self.regroup, self.outgrown = set(), set(), set()
        self.regroup_all = False

    def _to_regroup(self, graph: EntityGraph) -> set[str]:
        """The nodes of every group that grouping afresh may give otherwise than it stands.

        A group (as the last rebuild left it) is regrouped the same when none of its nodes'
        links changed, each of them links or not as then and did so throughout, and it
        merged with nothing since: its links are then the same, in the same order, and
        link only among its nodes. So the groups to regroup are those holding a node in
        `regroup` (merged into, an end of an expired link) or `joined` (new since), and
        every user of an identifier that links now but did not then or the other way
        round, or that was `outgrown` for a while (links made then were not followed)."""
        parent, adjacent, joined = self.parent, graph.adjacent, self.joined
        moved = self.regroup | joined | self.outgrown
        for node in list(moved):
            if node in self.outgrown:
                moved.update(adjacent.get(node, ()))
            elif kind_of(node) in (DEVICE, CARD, PHONE):
                linked_then = node in parent and node not in joined
                if linked_then != self.strong(graph, node):
                    moved.update(adjacent.get(node, ()))
        out = set(moved)
        for root in {self.find(node) for node in moved if node in parent}:
            members = self.members.pop(root)
            out.update(members)
            del self.user_count[root]
            for node in members:
                del parent[node]
        return out

    def _group_links(self, graph: EntityGraph, nodes: set[str] | None) -> None:
        """Unions the live links (`nodes`: only those of users among them), in the graph's
        edge order; every user with a link is in a group. (A link that does not link only
        puts its user in a group of its own, wherever it comes in the order: the unions
        alone decide the roots and the members' order.)"""
        if nodes is None:
            self.parent.clear()
            self.members.clear()
            self.user_count.clear()
        parent = self.parent
        # Per other end (its degree does not change here): 0 a merchant, 1 does not link,
        # 2 links.
        links: dict[str, int] = {}
        for user, other in graph.edges:
            if nodes is not None and user not in nodes:
                continue
            link = links.get(other)
            if link is None:
                if other.startswith(MERCHANT):
                    link = links[other] = 0
                else:
                    link = links[other] = 2 if self.strong(graph, other) else 1
            if link == 2:
                if nodes is not None and other not in nodes:
                    raise _NotClosed
                self.union(user, other)
            elif link == 1 and user not in parent:
                self.find(user)
