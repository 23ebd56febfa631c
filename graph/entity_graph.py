"""The windowed entity graph: who pays whom, who shares which identifier, who referred whom.

Nodes are strings with a kind prefix: `u:` user, `m:` merchant, `d:` device, `ip:` IP,
`c:` card, `ph:` phone hash. Edges join a user to something:

- payment and refund edges user-merchant, with counts, money and the rebate requested;
- identifier edges user-device, user-IP, user-card, user-phone (seen together);
- referral edges user-referrer (from first signups).

Each edge remembers when it was first and last seen; `expire(now)` drops edges not seen for
`window_ms` (default 30 days), and nodes left without edges. Updates are incremental (a few
dict operations per edge), so the graph follows the stream; what reads it (candidates,
detectors) reads only the small parts it needs. Pure: no I/O, no clock; pickles into the
owner's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from rebate_guard.contract.records import PAYMENT, Signup, Transaction, requested_rebate_cents
from rebate_guard.contract.time import DAY_MS, HOUR_MS

#: A refund this soon after its payment is the cash-out pattern (pay, take the rebate, refund).
QUICK_REFUND_MS = 24 * HOUR_MS

USER, MERCHANT, DEVICE, IP, CARD, PHONE = "u:", "m:", "d:", "ip:", "c:", "ph:"


def kind_of(node: str) -> str:
    return node[: node.index(":") + 1]


class Edge:
    """One user's relation to one other node, within the window."""

    __slots__ = (
        "first_ts",
        "last_ts",
        "money",
        "payments",
        "quick_refunds",
        "rebate",
        "referral",
        "refund_money",
        "refunds",
        "round_payments",
    )

    def __init__(self, ts: int) -> None:
        self.first_ts = ts
        self.last_ts = ts
        self.payments = 0
        self.money = 0  # cents paid
        self.rebate = 0  # cents of rebate requested on those payments
        self.refunds = 0
        self.refund_money = 0
        self.quick_refunds = 0  # refunds of a payment made within QUICK_REFUND_MS
        self.round_payments = 0  # amounts that are whole multiples of 10.00
        self.referral = False  # user -> referrer

    def __getstate__(self) -> tuple[int | bool, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[int | bool, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


@dataclass
class UserInfo:
    signup_ts: int | None = None
    referrer: str | None = None  # user id


@dataclass
class EntityGraph:
    window_ms: int = 30 * DAY_MS
    #: (user node, other node) -> edge.
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)
    #: node -> its neighbours.
    adjacent: dict[str, set[str]] = field(default_factory=dict)
    users: dict[str, UserInfo] = field(default_factory=dict)
    #: merchant id -> its rebate rate as last seen.
    rebate_rates: dict[str, float] = field(default_factory=dict)
    #: payment tx_id -> (user node, merchant node, ts), for refunds within the window.
    payments: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    updates: int = 0
    #: How many of `edges` join a user to a merchant (the rest are links).
    merchant_edges: int = 0
    #: Payments one user makes at one merchant (in the window) that make them one of its
    #: *regular payers*: what brushing crews and colluding rings are made of, and what
    #: candidate generation reads instead of every payer (a busy shop has thousands).
    regular_at: int = 2
    #: merchant node -> its regular payers (user nodes), kept as payments arrive and expire.
    regular_payers: dict[str, set[str]] = field(default_factory=dict)
    #: user node -> the merchants it is a regular payer of (`regular_payers` inverted): a
    #: collusion group's other merchants, without reading a payer's whole neighbourhood.
    regular_merchants: dict[str, set[str]] = field(default_factory=dict)
    #: merchant node -> payments at it in the window.
    merchant_payments: dict[str, int] = field(default_factory=dict)
    #: Day (ts // DAY_MS) -> edges listed on it, each live edge once: on the day it was
    #: created and, when that day leaves the window with the edge touched since, on the day
    #: it was last touched (`expire`). `expire` looks only at days past the window, and at
    #: each edge about once a window, however often it is touched.
    touched_days: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    #: 2: `touched_days` lists each edge once. Checkpoints written before (1) listed an edge
    #: again on every day it was touched; `__setstate__` converts them.
    touched_days_layout: int = 2

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint. One written before the regular-payer index existed gets
        the index built from its edges (the same as if it had been kept all along); one
        whose `touched_days` listed an edge on every day it was touched gets each edge
        listed once, on the day it was last touched (the same edges expire at the same
        `expire` call). One written before `regular_merchants` existed gets it as
        `regular_payers` inverted."""
        self.__dict__.update(state)
        if state.get("touched_days_layout", 1) < EntityGraph.touched_days_layout:
            self.touched_days = {}
            for key, edge in self.edges.items():
                self._list_on_day(edge.last_ts, key)
            self.touched_days_layout = EntityGraph.touched_days_layout
        if "regular_payers" not in state:
            self.regular_at = EntityGraph.regular_at
            self.regular_payers, self.merchant_payments = {}, {}
            for (user, other), edge in self.edges.items():
                if other.startswith(MERCHANT) and edge.payments:
                    paid = self.merchant_payments.get(other, 0)
                    self.merchant_payments[other] = paid + edge.payments
                    if edge.payments >= self.regular_at:
                        self.regular_payers.setdefault(other, set()).add(user)
        if "regular_merchants" not in state:
            self.regular_merchants = {}
            for merchant, payers in self.regular_payers.items():
                for user in payers:
                    self.regular_merchants.setdefault(user, set()).add(merchant)

    # --- input ----------------------------------------------------------------------------
    def signup(self, event: Signup) -> list[tuple[str, str]]:
        """A first signup; returns the edges it touched (user node, other node)."""
        user = USER + event.user_id
        info = self.users.get(event.user_id)
        if info is not None and info.signup_ts is not None:
            return []  # a repeated signup: the first stands
        if info is None:
            info = self.users[event.user_id] = UserInfo()
        info.signup_ts = event.ts
        touched = []
        if event.referrer_id and event.referrer_id != event.user_id:
            info.referrer = event.referrer_id
            key = (user, USER + event.referrer_id)
            self._touch(key, event.ts).referral = True
            touched.append(key)
        for prefix, value in ((DEVICE, event.device_id), (IP, event.ip), (PHONE, event.phone_hash)):
            if value:
                key = (user, prefix + value)
                self._touch(key, event.ts)
                touched.append(key)
        return touched

    def transaction(self, tx: Transaction) -> list[tuple[str, str]]:
        """A payment or refund; returns the edges it touched."""
        user, merchant = USER + tx.user_id, MERCHANT + tx.merchant_id
        if tx.user_id not in self.users:
            self.users[tx.user_id] = UserInfo()
        paid_at = (user, merchant)
        edge = self._touch(paid_at, tx.ts)
        if tx.kind == PAYMENT:
            edge.payments += 1
            self.merchant_payments[merchant] = self.merchant_payments.get(merchant, 0) + 1
            if edge.payments == self.regular_at:
                self.regular_payers.setdefault(merchant, set()).add(user)
                self.regular_merchants.setdefault(user, set()).add(merchant)
            edge.money += tx.amount_cents
            edge.rebate += requested_rebate_cents(tx.amount_cents, tx.rebate_rate)
            if tx.amount_cents % 1_000 == 0:
                edge.round_payments += 1
            self.rebate_rates[tx.merchant_id] = tx.rebate_rate
            self.payments[tx.tx_id] = (user, merchant, tx.ts)
        else:
            edge.refunds += 1
            edge.refund_money += tx.amount_cents
            paid = self.payments.get(tx.ref_tx_id or "")
            if paid is not None and tx.ts - paid[2] <= QUICK_REFUND_MS:
                edge.quick_refunds += 1
        touched = [paid_at]
        for prefix, value in ((DEVICE, tx.device_id), (IP, tx.ip), (CARD, tx.card_id)):
            if value:
                key = (user, prefix + value)
                self._touch(key, tx.ts)
                touched.append(key)
        return touched

    def _touch(self, key: tuple[str, str], ts: int) -> Edge:
        """The edge `key` (user node, other node) seen at `ts`."""
        self.updates += 1
        edge = self.edges.get(key)
        if edge is None:
            edge = self.edges[key] = Edge(ts)
            a, b = key
            if b.startswith(MERCHANT):
                self.merchant_edges += 1
            self._adjacent(a).add(b)
            self._adjacent(b).add(a)
            self._list_on_day(ts, key)
        elif ts > edge.last_ts:
            edge.last_ts = ts  # still listed on an earlier day: `expire` moves it on
        return edge

    def _list_on_day(self, ts: int, key: tuple[str, str]) -> None:
        day = ts // DAY_MS
        keys = self.touched_days.get(day)
        if keys is None:
            keys = self.touched_days[day] = []
        keys.append(key)

    def _adjacent(self, node: str) -> set[str]:
        out = self.adjacent.get(node)
        if out is None:
            out = self.adjacent[node] = set()
        return out

    # --- window ---------------------------------------------------------------------------
    def expire(self, now: int) -> list[tuple[str, str]]:
        """Drops edges last seen before the window, now - window_ms (to the day: an edge may
        outlive it by up to a day), and nodes left alone; returns the edges dropped. Looks
        only at the edges listed on the days that left the window, not at every edge."""
        horizon_day = (now - self.window_ms) // DAY_MS
        horizon = horizon_day * DAY_MS
        stale = []
        edges, touched_days = self.edges, self.touched_days
        for day in sorted(d for d in touched_days if d < horizon_day):
            for key in touched_days.pop(day):
                edge = edges.get(key)
                if edge is None:  # (each live edge is listed once: not expected)
                    continue
                if edge.last_ts >= horizon:
                    # Touched since it was listed: listed again on its last day, which is
                    # in the window (not among the days this call walks).
                    self._list_on_day(edge.last_ts, key)
                    continue
                del edges[key]
                stale.append(key)
                if key[1].startswith(MERCHANT):
                    self._forget_payments(key, edge)
        adjacent = self.adjacent
        for a, b in stale:
            for x, y in ((a, b), (b, a)):
                near = adjacent.get(x)
                if near is not None:
                    near.discard(y)
                    if not near:
                        del adjacent[x]
                        if x.startswith(USER):  # nothing of the user is left in the window
                            self.users.pop(x[2:], None)
        old = 0  # payments arrive in event-time order: the old ones lead
        for _, _, ts in self.payments.values():
            if ts >= horizon:
                break
            old += 1
        for tx_id in list(islice(self.payments, old)):
            del self.payments[tx_id]
        return stale

    def _forget_payments(self, key: tuple[str, str], edge: Edge) -> None:
        user, merchant = key
        self.merchant_edges -= 1
        left = self.merchant_payments.get(merchant, 0) - edge.payments
        if left > 0:
            self.merchant_payments[merchant] = left
        else:
            self.merchant_payments.pop(merchant, None)
        for index, node, member in (
            (self.regular_payers, merchant, user),
            (self.regular_merchants, user, merchant),
        ):
            members = index.get(node)
            if members is not None:
                members.discard(member)
                if not members:
                    del index[node]

    # --- reading --------------------------------------------------------------------------
    def degree(self, node: str) -> int:
        """How many users an identifier or merchant has been seen with (every edge joins a
        user to something, so all its neighbours are users)."""
        near = self.adjacent.get(node)
        return len(near) if near else 0
