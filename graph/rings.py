"""Ring detectors: what a candidate group (`graph.candidates`) looks like when it is a ring.

Each detector reads one group's part of the entity graph, builds the NetworkX graph it needs,
and returns `Finding`s: the members, a score in [0, 1] and the evidence behind it. A score is
a fuzzy AND of the kind's defining traits: each trait maps to [0, 1] by a linear ramp between
"not at all" and "fully" (`ramp`), and the score is the smallest of them, so a ring must show
every trait and the evidence says which one was weakest. The traits, per kind:

- referral farm: referrals among the accounts, many accounts per device or phone, accounts
  buying within a day of signing up, few merchants between them;
- pyramid: a referral tree more than three tiers deep, growing fast (days between tiers),
  whose paying members mostly pay at one merchant (the scheme selling the packages);
- collusion: a dense user x merchant block (greedy peeling for the densest subgraph) whose
  merchants are paid almost only by the block, users paying at several of them, high
  rebate rates;
- brushing: a merchant paid almost only by accounts that share devices, each buying often;
- cash-out cluster: accounts linked by a card or device, most payments refunded within a
  day, large amounts;
- binding ring: a merchant most of whose bound users buy elsewhere only (it earns retention
  commission on customers who never buy from it), and they are either a farm (five or more
  accounts bound soon after signing up, on shared devices or phones, or bound from a few
  devices) or bound just in time (bound again within an hour before their payments
  elsewhere);
- points collector: an account given points by five or more fresh accounts on shared
  devices or phones;
- commission cycle: a merchant whose payments come mostly from its own bound users, paying
  it again and again (the money it takes is theirs going round), who share devices, cards or
  phones with each other, and on whom it earns retention commission;
- coupon farm: five or more young accounts using one merchant's coupons, soon after signing
  up, on shared devices or phones;
- signup batch: five or more accounts registered within a day or two on a few devices or
  phones, before they do anything: how farms, brushing crews and cash-out teams start. It is
  the earliest warning and the weakest (its score is capped at `SIGNUP_BATCH_MAX`, so the
  trust weight reduces rather than blocks); a specific kind found later on the same
  accounts, scoring at least as high, retires it.

Look-alikes stay below the thresholds by construction: a family on one device has no
referrals and its own merchants (no farm, no brushing); an office IP links nobody (too
common, `Limits`); a viral referrer's tree is wide but shallow and its referees have their
own devices; a loyal daily customer pays one busy merchant (no block, no closed merchant);
an ordinary refund is one account's, once in a while; a shop's bound customers buy from it
(a family on one phone bound to its local shop, a morning's customers bound at the till),
and its bound regulars are unrelated people on their own phones, or a small part of its trade;
relatives giving points to one member are a few old accounts, a popular member's givers
have their own devices.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from graph.candidates import Limits
from graph.entity_graph import (
    CARD,
    DEVICE,
    MERCHANT,
    PHONE,
    USER,
    EntityGraph,
    UserInfo,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS

REFERRAL_FARM = "referral_farm"
PYRAMID = "pyramid"
COLLUSION = "collusion"
BRUSHING = "brushing"
CASH_OUT = "cash_out"
BINDING_RING = "binding_ring"
POINTS_COLLECTOR = "points_collector"
COMMISSION_CYCLE = "commission_cycle"
COUPON_FARM = "coupon_farm"
SIGNUP_BATCH = "signup_batch"
#: In order of precedence at equal scores: the specific kinds first.
KINDS = (
    REFERRAL_FARM,
    PYRAMID,
    COLLUSION,
    BRUSHING,
    CASH_OUT,
    BINDING_RING,
    POINTS_COLLECTOR,
    COMMISSION_CYCLE,
    COUPON_FARM,
    SIGNUP_BATCH,
)

#: Referral tiers a legitimate programme pays; deeper is the pyramid's shape.
MAX_LEGIT_TIERS = 3


@dataclass
class Finding:
    kind: str
    users: frozenset[str]  # user ids
    merchants: frozenset[str]  # merchant ids
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)
    rebate_at_risk_cents: int = 0


def ramp(value: float, *, none: float, full: float) -> float:
    """0 at `none`, 1 at `full`, linear between (either direction), clamped."""
    if full == none:
        return 1.0 if value >= full else 0.0
    return min(1.0, max(0.0, (value - none) / (full - none)))


def _strip(nodes: Iterable[str]) -> frozenset[str]:
    return frozenset(n[n.index(":") + 1 :] for n in nodes)


@dataclass
class Group:
    """One candidate group's view of the graph, with what several detectors need."""

    graph: EntityGraph
    users: list[str]  # user nodes
    merchants: list[str]  # merchant nodes in the group (small merchants)
    now: int
    _paid: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    _members: set[str] | None = None
    #: (user, kind prefix) -> its identifiers of that kind: several detectors read them.
    _identifiers: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _tree: nx.DiGraph | None = None

    def paid(self, user: str) -> list[tuple[str, Any]]:
        """(merchant node, edge) for each merchant `user` has paid or refunded, any size."""
        out = self._paid.get(user)
        if out is None:
            graph = self.graph
            out = self._paid[user] = []
            for other in graph.adjacent.get(user, ()):
                if other.startswith(MERCHANT):
                    edge = graph.edges.get((user, other))
                    if edge is not None:
                        out.append((other, edge))
        return out

    def members(self) -> set[str]:
        """The group's user nodes, as a set (cached)."""
        if self._members is None:
            self._members = set(self.users)
        return self._members

    def identifiers(self, user: str, prefix: str) -> list[str]:
        out = self._identifiers.get((user, prefix))
        if out is None:
            near = self.graph.adjacent.get(user, ())
            out = self._identifiers[user, prefix] = [n for n in near if n.startswith(prefix)]
        return out

    def referral_tree(self) -> nx.DiGraph:
        """referrer -> referee, for the referrals inside the group (cached; read only)."""
        if self._tree is None:
            self._tree = _referral_tree(self)
        return self._tree

    def finding(
        self,
        kind: str,
        users: Iterable[str],
        *,
        merchants: Iterable[str],
        traits: dict[str, float],
        evidence: dict[str, Any],
    ) -> Finding | None:
        """A finding scored as the fuzzy AND of `traits` (the weakest), with the traits in
        its evidence; None when a trait is absent altogether."""
        score = min(traits.values())
        if score <= 0.0:
            return None
        users = list(users)
        evidence["traits"] = {name: round(value, 3) for name, value in traits.items()}
        return Finding(
            kind, _strip(users), _strip(merchants), score, evidence, self.rebate_at_risk(users)
        )

    def rebate_at_risk(self, users: Iterable[str]) -> int:
        return sum(edge.rebate for user in users for _, edge in self.paid(user))

    def per_identifier(self, users: list[str], prefix: str, *, known_only: bool = False) -> float:
        """Accounts per distinct identifier of kind `prefix` among `users`; `known_only`:
        among those of `users` seen with one in the window (an account whose identifiers
        left the window shares none that the graph knows of)."""
        seen = {n for user in users for n in self.identifiers(user, prefix)}
        if known_only:
            users = [user for user in users if self.identifiers(user, prefix)]
        return len(users) / len(seen) if seen else 0.0

    def shared_phones(self, users: list[str]) -> float:
        """Accounts per device or phone among `users` seen with one in the window (the
        busier of the two)."""
        return max(
            self.per_identifier(users, DEVICE, known_only=True),
            self.per_identifier(users, PHONE, known_only=True),
        )


def analyse_identity_group(graph: EntityGraph, nodes: list[str], *, now: int) -> list[Finding]:
    """The rings an identity group (users linked by referrals and identifiers) may be."""
    return _analyse(graph, nodes, now, (referral_farm, pyramid, cash_out, signup_batch))


def analyse_merchant_group(graph: EntityGraph, nodes: list[str], *, now: int) -> list[Finding]:
    """The rings a merchant group (small merchants and their payers) may be."""
    return _analyse(graph, nodes, now, (collusion, brushing))


def _analyse(
    graph: EntityGraph, nodes: list[str], now: int, detectors: tuple[Any, ...]
) -> list[Finding]:
    users = [n for n in nodes if n.startswith(USER)]
    merchants = [n for n in nodes if n.startswith(MERCHANT)]
    group = Group(graph, users, merchants, now)
    found: list[Finding] = []
    for detect in detectors:
        found.extend(detect(group))
    # One kind per set of accounts: a farm that refers in a chain is also a deep tree, but
    # it is one ring. The stronger finding wins; at equal scores, the order of `KINDS`.
    found.sort(key=lambda f: (-f.score, KINDS.index(f.kind)))
    kept: list[Finding] = []
    for finding in found:
        if all(not _same_accounts(finding, k) for k in kept):
            kept.append(finding)
    return kept


def _same_accounts(a: Finding, b: Finding) -> bool:
    shared = len(a.users & b.users)
    return shared >= 0.5 * min(len(a.users), len(b.users))


# --- referral trees -----------------------------------------------------------------------
def _referral_tree(group: Group) -> nx.DiGraph:
    """referrer -> referee, for the referrals inside the group."""
    tree = nx.DiGraph()
    members = set(group.users)
    users = group.graph.users
    for node in group.users:
        info = users.get(node[2:])
        if info is not None and info.referrer is not None:
            referrer = USER + info.referrer
            if referrer in members:
                tree.add_edge(referrer, node)
    return tree


def referral_farm(group: Group, min_users: int = 5) -> list[Finding]:
    users = group.users
    if len(users) < min_users:
        return []
    tree = group.referral_tree()
    referred = tree.number_of_edges() / len(users)
    referred_share = ramp(referred, none=0.3, full=0.6)
    if referred_share <= 0.0:  # no finding without it (the fuzzy AND): skip the rest
        return []
    concentration = max(group.per_identifier(users, DEVICE), group.per_identifier(users, PHONE))
    info = group.graph.users
    delays = []
    merchants: set[str] = set()
    for user in users:
        paid = group.paid(user)
        merchants.update(m for m, e in paid if e.payments)
        first = min((e.first_ts for _, e in paid if e.payments), default=None)
        signup = info[user[2:]].signup_ts if user[2:] in info else None
        if first is not None and signup is not None:
            delays.append(first - signup)
    if not delays:
        return []
    to_first_buy = statistics.median(delays)
    merchants_per_user = len(merchants) / len(users)
    traits = {
        "referred_share": referred_share,
        "accounts_per_device_or_phone": ramp(concentration, none=1.2, full=2.5),
        "buys_soon_after_signup": ramp(to_first_buy, none=3 * DAY_MS, full=DAY_MS),
        "few_merchants": ramp(merchants_per_user, none=0.5, full=0.15),
    }
    evidence = {
        "accounts": len(users),
        "referred_share": round(referred, 3),
        "accounts_per_device_or_phone": round(concentration, 2),
        "median_hours_to_first_buy": round(to_first_buy / HOUR_MS, 1),
        "merchants": len(merchants),
    }
    found = group.finding(
        REFERRAL_FARM, users, merchants=merchants, traits=traits, evidence=evidence
    )
    return [found] if found else []


def pyramid(group: Group, min_users: int = 10) -> list[Finding]:
    if len(group.users) < min_users:  # the tree's nodes are some of them
        return []
    tree = group.referral_tree()
    if tree.number_of_nodes() < min_users:
        return []
    info = group.graph.users
    out = []
    for root in [n for n, d in tree.in_degree() if d == 0]:
        layers = list(nx.bfs_layers(tree, root))
        tiers = len(layers) - 1
        if tiers <= MAX_LEGIT_TIERS:
            continue
        members = [n for layer in layers for n in layer]
        if len(members) < min_users:
            continue
        gaps = []
        for referrer, referee in nx.bfs_edges(tree, root):
            # Between rebuilds a group may still hold accounts that left the window.
            a = _signup_ts(info.get(referrer[2:]))
            b = _signup_ts(info.get(referee[2:]))
            if a is not None and b is not None:
                gaps.append(b - a)
        gap = statistics.median(gaps) if gaps else float("inf")
        # What the tiers are for: a pyramid's recruits buy their qualifying packages from
        # the scheme, so most of its paying members pay at one merchant; the members of an
        # organic referral chain (which may run as deep, and grow as fast where a platform's
        # referrals bunch up) shop where they like, and even the busiest shop among them is
        # paid by a minority. No payment yet: no evidence of a scheme.
        payers: dict[str, int] = {}
        paying = 0
        for user in members:
            paid = {m for m, e in group.paid(user) if e.payments}
            paying += bool(paid)
            for merchant in paid:
                payers[merchant] = payers.get(merchant, 0) + 1
        scheme_share = max(payers.values()) / paying if paying else 0.0
        traits = {
            "tiers": ramp(tiers, none=MAX_LEGIT_TIERS, full=MAX_LEGIT_TIERS + 2),
            "fast_growth": ramp(gap, none=5 * DAY_MS, full=2 * DAY_MS),
            "pay_at_one_merchant": ramp(scheme_share, none=0.4, full=0.7),
        }
        merchants = set(payers)
        evidence = {
            "accounts": len(members),
            "tiers": tiers,
            "median_hours_between_tiers": round(gap / HOUR_MS, 1),
            "root": root[2:],
            "share_paying_at_one_merchant": round(scheme_share, 3),
        }
        found = group.finding(
            PYRAMID, members, merchants=merchants, traits=traits, evidence=evidence
        )
        if found is not None:
            out.append(found)
    return out


# --- money blocks --------------------------------------------------------------------------
def densest_block(block: nx.Graph) -> set[str]:
    """Greedy peeling (Charikar): repeatedly drop the node of least weighted degree, keep
    the densest stage (weight / nodes); a 2-approximation of the densest subgraph. A heap
    with lazy deletion makes it O(E log V)."""
    degree: dict[str, float] = dict(block.degree(weight="weight"))
    heap = [(d, n) for n, d in degree.items()]
    heapq.heapify(heap)
    total = block.size(weight="weight")
    left = len(degree)
    removed: list[str] = []
    gone: set[str] = set()
    best_density, best_cut = total / max(1, left), 0
    while left > 2:
        d, node = heapq.heappop(heap)
        if node in gone or d != degree[node]:
            continue  # a stale entry: the node went, or its degree fell since
        gone.add(node)
        removed.append(node)
        total -= d
        left -= 1
        for other, data in block[node].items():
            if other not in gone:
                degree[other] -= data["weight"]
                heapq.heappush(heap, (degree[other], other))
        if total / left > best_density:
            best_density, best_cut = total / left, len(removed)
    return set(block) - set(removed[:best_cut])


#: Below this rebate rate a merchant pays too little to be worth colluding with.
COLLUSION_MIN_RATE = 0.12


def collusion(group: Group) -> list[Finding]:
    rates = group.graph.rebate_rates
    small = {m for m in group.merchants if rates.get(m[2:], 0.0) >= COLLUSION_MIN_RATE}
    if len(small) < 2 or len(group.users) < 3:
        return []
    # From the group's users (each merchant's regular payers, a few dozen at most), never
    # from a merchant's whole clientele.
    graph = group.graph
    edges = []
    for user in group.users:
        for merchant in sorted(small):
            edge = graph.edges.get((user, merchant))
            if edge is not None and edge.payments:
                edges.append((user, merchant, edge.payments))
    # A block needs 3+ users, and with at most one of them paying at two of its merchants
    # the cross-paying trait stays below 1/3 -> 0.44, under the flag: skip the peeling.
    spread: dict[str, int] = {}
    for user, _, _ in edges:
        spread[user] = spread.get(user, 0) + 1
    if sum(1 for n in spread.values() if n >= 2) < 2:
        return []
    block = nx.Graph()
    block.add_weighted_edges_from(edges)
    dense = densest_block(block)
    users = sorted(n for n in dense if n.startswith(USER))
    merchants = sorted(n for n in dense if n.startswith(MERCHANT))
    if len(users) < 2 or len(merchants) < 2:
        return []
    # Closed money among the merchants' *regular* payers: a colluding merchant also takes
    # one-off payments from passers-by (the busier the platform, the more), but its regular
    # custom is the ring's; a lunch place's regulars are dozens of unrelated people.
    inside = set(users)
    from_block = sum(block[u][m]["weight"] for u in users for m in merchants if m in block[u])
    from_others = sum(
        graph.edges[(payer, m)].payments
        for m in merchants
        for payer in graph.regular_payers.get(m, ())
        if payer not in inside
    )
    closed = from_block / (from_block + from_others) if from_block else 0.0
    everyone = sum(graph.merchant_payments.get(m, 0) for m in merchants)
    cross = sum(1 for u in users if sum(1 for m in block[u] if m in dense) >= 2) / len(users)
    rate = statistics.mean(rates.get(m[2:], 0.0) for m in merchants)
    traits = {
        "merchants": ramp(len(merchants), none=1, full=2),
        "users": ramp(len(users), none=2, full=3),
        "closed_money": ramp(closed, none=0.3, full=0.6),
        "cross_paying": ramp(cross, none=0.2, full=0.5),
        "high_rebate_rate": ramp(rate, none=COLLUSION_MIN_RATE, full=0.2),
    }
    evidence = {
        "users": len(users),
        "merchants": len(merchants),
        "closed_share": round(closed, 3),
        "share_of_all_payments": round(from_block / everyone, 3) if everyone else 0.0,
        "cross_paying_share": round(cross, 3),
        "mean_rebate_rate": round(rate, 3),
        "payments": from_block,
    }
    found = group.finding(COLLUSION, users, merchants=merchants, traits=traits, evidence=evidence)
    return [found] if found else []


def brushing(group: Group, *, min_accounts: int = 5, repeat: int = 3) -> list[Finding]:
    """Per merchant of the group: its *repeat* payers (at least `repeat` payments there; the
    occasional real customer of a brushed shop is not one of the accounts)."""
    graph = group.graph
    members = group.members()
    out = []
    for merchant in group.merchants:
        payers, payments = [], 0
        for payer in sorted(graph.regular_payers.get(merchant, ())):
            edge = graph.edges[(payer, merchant)]
            if payer in members and edge.payments >= repeat:
                payers.append(payer)
                payments += edge.payments
        everyone = graph.merchant_payments.get(merchant, 0)
        if len(payers) < min_accounts:
            continue
        shared = group.per_identifier(payers, DEVICE)
        per_account = payments / len(payers)
        closed = payments / everyone if everyone else 0.0
        traits = {
            "accounts_per_device": ramp(shared, none=1.5, full=3.0),
            "payments_per_account": ramp(per_account, none=3.0, full=8.0),
            "closed_money": ramp(closed, none=0.5, full=0.8),
        }
        evidence = {
            "accounts": len(payers),
            "accounts_per_device": round(shared, 2),
            "payments_per_account": round(per_account, 1),
            "closed_share": round(closed, 3),
        }
        found = group.finding(
            BRUSHING, payers, merchants=[merchant], traits=traits, evidence=evidence
        )
        if found is not None:
            out.append(found)
    return out


def cash_out(group: Group, min_accounts: int = 2) -> list[Finding]:
    accounts, payments, quick, money = [], 0, 0, 0
    merchants: set[str] = set()
    for user in group.users:
        paid = group.paid(user)
        q = sum(e.quick_refunds for _, e in paid)
        if not q:  # only accounts that refunded a payment within a day take part
            continue
        accounts.append(user)
        quick += q
        payments += sum(e.payments for _, e in paid)
        money += sum(e.money for _, e in paid)
        merchants.update(m for m, e in paid if e.quick_refunds)
    if len(accounts) < min_accounts or not payments:
        return []
    linked = max(group.per_identifier(accounts, CARD), group.per_identifier(accounts, DEVICE))
    refunded = quick / payments
    mean_amount = money / payments
    traits = {
        "accounts_share_card_or_device": ramp(linked, none=1.0, full=1.5),
        "refunded_within_a_day": ramp(refunded, none=0.2, full=0.5),
        "large_amounts": ramp(mean_amount, none=10_000, full=30_000),
    }
    evidence = {
        "accounts": len(accounts),
        "accounts_per_card_or_device": round(linked, 2),
        "quick_refund_share": round(refunded, 3),
        "mean_amount_cents": round(mean_amount),
    }
    found = group.finding(CASH_OUT, accounts, merchants=merchants, traits=traits, evidence=evidence)
    return [found] if found else []


# --- bindings and points transfers -------------------------------------------------------
#: Accounts from which a group is a farm (as `referral_farm`'s and `signup_batch`'s).
FARM_ACCOUNTS = 5


def analyse_binder(graph: EntityGraph, merchant: str, *, now: int) -> list[Finding]:
    """The binding ring a merchant and its bound users may be (`Candidates.take_dirty_binders`)."""
    found = binding_ring(graph, merchant, now=now)
    return [found] if found else []


def binding_ring(graph: EntityGraph, merchant: str, *, now: int) -> Finding | None:
    """A merchant's bound users who buy elsewhere only (`Binding.buys_elsewhere_only`),
    when they are most of its bound users and were bound for the commission, not brought in:

    - a farm: `FARM_ACCOUNTS` or more, bound soon after signing up (median 3 d -> 1 d), on
      shared devices or phones or bound from a few devices (accounts per device 1.2 -> 2.5);
    - or just in time: 2 -> 3 accounts bound for their payments elsewhere: within an hour
      before them (share of the payments 0.3 -> 0.6), or bound again and again (bindings
      per account 1 -> 2; a customer is brought in once, not before each purchase).

    A shop's real bound customers buy from it, whether bound at the till or by a QR code at
    signup (a family on one phone, a morning's customers); relatives bound to the same shop
    are not fresh accounts on shared phones unless they buy there too."""
    bound = sorted(graph.bound.get(merchant, ()))
    bindings = graph.bindings
    accounts = [u for u in bound if bindings[(u, merchant)].buys_elsewhere_only]
    if len(accounts) < 2:
        return None
    group = Group(graph, accounts, [merchant], now)
    mine = [bindings[(u, merchant)] for u in accounts]
    share = len(accounts) / len(bound)
    # A farm: fresh accounts on a few phones (their own identifiers, or where the bindings
    # were made: a merchant's phone binding account after account).
    binding_devices = [b.device for b in mine if b.device]
    concentration = max(
        group.shared_phones(accounts),
        len(binding_devices) / len(set(binding_devices)) if binding_devices else 0.0,
    )
    to_binding = _median_age(graph, accounts, [b.first_ts for b in mine])
    farm = min(
        1.0 if len(accounts) >= FARM_ACCOUNTS else 0.0,
        ramp(concentration, none=1.2, full=2.5),
        ramp(to_binding, none=3 * DAY_MS, full=DAY_MS),
    )
    elsewhere = sum(b.elsewhere for b in mine)
    just_before = sum(b.bound_just_before for b in mine) / elsewhere
    rebound = sum(b.times for b in mine) / len(mine)
    # Bound for each payment: within the hour before it, or bound again and again however
    # long before (a customer is brought in once).
    for_each = max(ramp(just_before, none=0.3, full=0.6), ramp(rebound, none=1.0, full=2.0))
    in_time = min(ramp(len(accounts), none=2, full=3), for_each)
    traits = {
        "bound_users_buying_elsewhere_only": ramp(share, none=0.3, full=0.6),
        "bound_for_the_commission": max(farm, in_time),
    }
    evidence = {
        "merchant": merchant[2:],
        "bound_users": len(bound),
        "buying_elsewhere_only": len(accounts),
        "accounts_per_device_or_phone": round(concentration, 2),
        "median_hours_signup_to_binding": _hours(to_binding),
        "payments_elsewhere": elsewhere,
        "share_bound_within_an_hour_before": round(just_before, 3),
        "bindings_per_account": round(rebound, 2),
        "commission_cents": sum(b.commission for b in mine),
        "farm": round(farm, 3),
        "just_in_time": round(in_time, 3),
    }
    return group.finding(
        BINDING_RING, accounts, merchants=[merchant], traits=traits, evidence=evidence
    )


def analyse_receiver(graph: EntityGraph, receiver: str, *, now: int) -> list[Finding]:
    """The points collector a receiver of points and its givers may be
    (`Candidates.take_dirty_receivers`)."""
    found = points_collector(graph, receiver, now=now)
    return [found] if found else []


def points_collector(graph: EntityGraph, receiver: str, *, now: int) -> Finding | None:
    """An account given points by `FARM_ACCOUNTS` or more accounts that gave soon after
    signing up (median 3 d -> 1 d) and share devices or phones (accounts per device or phone
    1.2 -> 2.5). Relatives giving points to one member are a few old accounts; a popular
    member's givers (a viral referrer's referees) have their own devices."""
    givers = sorted(graph.givers.get(receiver, ()))
    if len(givers) < FARM_ACCOUNTS:
        return None
    group = Group(graph, givers, [], now)
    transfers = [graph.transfers[(g, receiver)] for g in givers]
    to_giving = _median_age(graph, givers, [t.first_ts for t in transfers])
    concentration = group.shared_phones(givers)
    soon, shared = _fresh_on_shared_phones(to_giving, concentration)
    traits = {"givers_give_soon_after_signup": soon, "givers_per_device_or_phone": shared}
    evidence = {
        "receiver": receiver[2:],
        "givers": len(givers),
        "median_hours_signup_to_giving": _hours(to_giving),
        "givers_per_device_or_phone": round(concentration, 2),
        "transfers": sum(t.times for t in transfers),
        "points_cents": sum(t.cents for t in transfers),
    }
    members = [receiver, *givers]
    merchants = {m for user in members for m, e in group.paid(user) if e.payments}
    return group.finding(
        POINTS_COLLECTOR, members, merchants=merchants, traits=traits, evidence=evidence
    )


def analyse_earner(graph: EntityGraph, merchant: str, *, now: int) -> list[Finding]:
    """The commission cycle a merchant and its bound regular payers may be
    (`Candidates.cycle_earners`)."""
    found = commission_cycle(graph, merchant, now=now)
    return [found] if found else []


def commission_cycle(graph: EntityGraph, merchant: str, *, now: int) -> Finding | None:
    """A merchant's bound users who are its regular payers (`EntityGraph.regular_payers`),
    when the merchant earns retention commission on them and

    - they bring most of its payments (share 0.5 -> 0.8): its trade is their money going
      round, not customers it brought in;
    - they are linked: most of them share a device, card or phone with another user bound to
      it (share 0.3 -> 0.6; one seen with more accounts than `Limits` allows links nobody);
    - three or more of them (two and a shop are a family's corner shop as often as not).

    A shop's real regulars bound to it are unrelated people on their own phones, and a busy
    shop's regulars are a small part of its trade; a family on one phone bound to its local
    shop is a few of the shop's many customers.

    Not traits, measured on the random profile's tuning worlds (docs/detectors.md): bills
    bigger than the shop's other customers' do not tell two colluders from a small shop's
    bound customers, who often pay more than its passers-by; and counting every bound payer
    (not only the regular ones) by its share of the money draws legitimate customers bound
    to the same shop into rings of a few linked accounts."""
    bindings, edges = graph.bindings, graph.edges
    accounts = sorted(
        u for u in graph.regular_payers.get(merchant, ()) if (u, merchant) in bindings
    )
    everyone = graph.merchant_payments.get(merchant, 0)
    if len(accounts) < 3 or not everyone:
        return None
    group = Group(graph, accounts, [merchant], now)
    theirs = sum(edges[(u, merchant)].payments for u in accounts)
    closed = theirs / everyone
    linked = _linked_share(group, accounts, merchant)
    commission = sum(bindings[(u, merchant)].commission for u in accounts)
    traits = {
        "bound_payers_bring_its_payments": ramp(closed, none=0.5, full=0.8),
        "bound_payers_share_devices": ramp(linked, none=0.3, full=0.6),
        "bound_payers": ramp(len(accounts), none=2, full=3),
        "earns_commission_on_them": 1.0 if commission > 0 else 0.0,
    }
    evidence = {
        "merchant": merchant[2:],
        "bound_users": len(graph.bound.get(merchant, ())),
        "bound_regular_payers": len(accounts),
        "their_payments": theirs,
        "closed_share": round(closed, 3),
        "linked_share": round(linked, 3),
        "round_payments": sum(edges[(u, merchant)].round_payments for u in accounts),
        "payments_elsewhere": sum(bindings[(u, merchant)].elsewhere for u in accounts),
        "commission_cents": commission,
    }
    return group.finding(
        COMMISSION_CYCLE, accounts, merchants=[merchant], traits=traits, evidence=evidence
    )


#: The identifiers that link accounts as `graph.candidates` links them, with its limits.
_LIMITS = Limits()
_LINKING = (DEVICE, CARD, PHONE)


def _linked_share(group: Group, accounts: list[str], merchant: str) -> float:
    """The share of `accounts` that share a device, card or phone with another user bound to
    `merchant` (one seen with at most `Limits` accounts in the window: a shop's till tablet
    links nobody); reads only the identifiers' few users."""
    graph = group.graph
    adjacent, bindings = graph.adjacent, graph.bindings
    linked = 0
    for user in accounts:
        linked += any(
            len(users := adjacent.get(node, ())) <= _LIMITS.of(prefix)
            and any(other != user and (other, merchant) in bindings for other in users)
            for prefix in _LINKING
            for node in group.identifiers(user, prefix)
        )
    return linked / len(accounts)


def analyse_coupon_merchant(graph: EntityGraph, merchant: str, *, now: int) -> list[Finding]:
    """The coupon farm a merchant's young coupon users may be
    (`Candidates.take_coupon_merchants`)."""
    found = coupon_farm(graph, merchant, now=now)
    return [found] if found else []


def coupon_farm(graph: EntityGraph, merchant: str, *, now: int) -> Finding | None:
    """`FARM_ACCOUNTS` or more young accounts (`EntityGraph.coupon_redeemed`) using the
    merchant's coupons, soon after signing up (median 3 d -> 1 d to the first), on shared
    devices or phones (accounts per device or phone 1.2 -> 2.5). Deal hunters on one campus
    network are mostly old accounts on their own phones (an IP links nobody); a family
    joining on one phone is a few accounts."""
    accounts = sorted(graph.coupon_users.get(merchant, ()))
    if len(accounts) < FARM_ACCOUNTS:
        return None
    group = Group(graph, accounts, [merchant], now)
    uses = [graph.coupon_uses[(u, merchant)] for u in accounts]
    to_use = statistics.median(use.age_ms for use in uses)
    concentration = group.shared_phones(accounts)
    soon, shared = _fresh_on_shared_phones(to_use, concentration)
    traits = {"used_soon_after_signup": soon, "accounts_per_device_or_phone": shared}
    evidence = {
        "merchant": merchant[2:],
        "young_coupon_users": len(accounts),
        "coupons_used": sum(use.times for use in uses),
        "median_hours_signup_to_use": _hours(to_use),
        "accounts_per_device_or_phone": round(concentration, 2),
    }
    return group.finding(
        COUPON_FARM, accounts, merchants=[merchant], traits=traits, evidence=evidence
    )


def _fresh_on_shared_phones(age_ms: float, per_phone: float) -> tuple[float, float]:
    """A farm's two traits: its accounts acted soon after signing up (median age 3 d -> 1 d)
    on shared devices or phones (accounts per device or phone 1.2 -> 2.5)."""
    return ramp(age_ms, none=3 * DAY_MS, full=DAY_MS), ramp(per_phone, none=1.2, full=2.5)


def _median_age(graph: EntityGraph, users: list[str], at: list[int]) -> float:
    """The median age of `users`' accounts at `at` (each its own moment); an account whose
    signup the window does not hold is older than the window (infinitely old, here)."""
    info = graph.users
    ages = []
    for user, ts in zip(users, at, strict=True):
        signup = _signup_ts(info.get(user[2:]))
        ages.append(math.inf if signup is None else ts - signup)
    return statistics.median(ages)


def _hours(ms: float) -> float | None:
    """`ms` in hours, for the evidence (None: infinite, JSON has no infinity)."""
    return None if math.isinf(ms) else round(ms / HOUR_MS, 1)


#: A signup batch is evidence of intent, not of abuse yet: its score stays below this.
SIGNUP_BATCH_MAX = 0.7
#: Accounts younger than this count as new.
NEW_ACCOUNT_MS = 7 * DAY_MS


def signup_batch(group: Group, min_accounts: int = 5) -> list[Finding]:
    """New accounts of the identity group, when `min_accounts` of them were registered close
    together and are linked: on shared devices or phones (1.2 -> 2 accounts each), or
    referring each other (share referred by another of them 0.3 -> 0.6). A family shares a
    device too, but its members did not all sign up within days of each other; an office IP
    links nobody (`Limits`)."""
    info, now = group.graph.users, group.now
    young: list[tuple[int, str]] = []
    for user in group.users:
        record = info.get(user[2:])
        signup = None if record is None else record.signup_ts
        if signup is not None and now - signup <= NEW_ACCOUNT_MS:
            young.append((signup, user))
    if len(young) < min_accounts:
        return []
    accounts = [user for _, user in young]
    concentration = max(
        group.per_identifier(accounts, DEVICE), group.per_identifier(accounts, PHONE)
    )
    # New accounts referring each other as they register: a chain farm or a pyramid being
    # built (a viral referrer's fans are referred by an old account, not by each other).
    new = set(accounts)
    referred = sum(1 for user in accounts if _referrer(group, user) in new) / len(accounts)
    linked = max(ramp(concentration, none=1.2, full=2.0), ramp(referred, none=0.3, full=0.6))
    return _batch(group, young, min_accounts, "linked", linked, 0.0, 1.0)


def _signup_ts(record: UserInfo | None) -> int | None:
    return None if record is None else record.signup_ts


def _referrer(group: Group, user: str) -> str | None:
    record = group.graph.users.get(user[2:])
    return None if record is None or record.referrer is None else USER + record.referrer


def analyse_signup_ip(
    graph: EntityGraph, ip: str, *, signups: list[tuple[int, str]], now: int
) -> list[Finding]:
    """New accounts registered from one IP (`Candidates.take_signup_ips`), when they are
    most of the address's users: a crew registering from its own line. An office or a
    carrier's NAT address has many other users, so a handful of new accounts there are a
    small share of them."""
    young = [(ts, user) for ts, user in signups if now - ts <= NEW_ACCOUNT_MS]
    if len(young) < 5:
        return []
    group = Group(graph, sorted({user for _, user in young}), [], now)
    share = len(group.users) / max(1, graph.degree(ip))
    return _batch(group, young, 5, "share_of_the_ips_users", share, 0.3, 0.6)


def _batch(
    group: Group,
    young: list[tuple[int, str]],
    min_accounts: int,
    link: str,
    linked: float,
    none: float,
    full: float,
) -> list[Finding]:
    """A signup-batch finding over `young` (signup ts, user node) accounts linked by `link`
    (its value `linked`, ramped from `none` to `full`), scored at most `SIGNUP_BATCH_MAX`."""
    young = sorted(young)
    times = [ts for ts, _ in young]
    # The tightest run of `min_accounts` consecutive signups.
    spread = min(
        times[i + min_accounts - 1] - times[i] for i in range(len(times) - min_accounts + 1)
    )
    accounts = [user for _, user in young]
    traits = {
        link: ramp(linked, none=none, full=full),
        "registered_together": ramp(spread, none=3 * DAY_MS, full=DAY_MS),
    }
    evidence = {
        "new_accounts": len(accounts),
        link: round(linked, 2),
        f"hours_for_{min_accounts}_signups": round(spread / HOUR_MS, 1),
    }
    merchants = {m for user in accounts for m, e in group.paid(user) if e.payments}
    found = group.finding(
        SIGNUP_BATCH, accounts, merchants=merchants, traits=traits, evidence=evidence
    )
    if found is None:
        return []
    found.score *= SIGNUP_BATCH_MAX
    found.evidence["score_cap"] = SIGNUP_BATCH_MAX
    return [found]
