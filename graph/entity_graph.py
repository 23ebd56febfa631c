"""The windowed entity graph: who pays whom, who shares which identifier, who referred whom.

Nodes are strings with a kind prefix: `u:` user, `m:` merchant, `d:` device, `ip:` IP,
`c:` card, `ph:` phone hash. Edges join a user to something:

- payment and refund edges user-merchant, with counts, money and the rebate requested;
- identifier edges user-device, user-IP, user-card, user-phone (seen together);
- referral edges user-referrer (from first signups).

Two relations of the platform's own events (`platform-events`) are kept beside them, in
their own edge kinds, because they are not identity: they never link accounts into identity
groups (`graph.candidates`), and nothing that reads `edges` sees them:

- binding edges user-merchant (`Binding`): the merchant is recorded as having brought the user
  in; it counts the times it was bound, the device and IP the binding was made on, the
  retention commission the merchant earned on the user, and the user's payments since it was
  bound, at the merchant and elsewhere;
- points-transfer edges giver-receiver (`Transfer`): points the giver passed to the receiver;
- coupon uses young account-merchant (`CouponUse`): a merchant's coupons used by an account
  within a week of its signup.

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

from rebate_guard.contract.records import (
    PAYMENT,
    PlatformEvent,
    Signup,
    Transaction,
    is_visit,
    requested_rebate_cents,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS

#: A refund this soon after its payment is the cash-out pattern (pay, take the rebate, refund).
QUICK_REFUND_MS = 24 * HOUR_MS

USER, MERCHANT, DEVICE, IP, CARD, PHONE = "u:", "m:", "d:", "ip:", "c:", "ph:"
#: A payment elsewhere this soon after the user was (re)bound to a merchant: the binding was
#: made for that payment (a merchant claiming a customer it did not bring, just in time for
#: the commission), not by a merchant the customer came to.
BOUND_JUST_BEFORE_MS = HOUR_MS
#: A coupon used this soon after its account signed up is a young account's (a coupon farm's
#: accounts claim and use theirs within hours of being made).
YOUNG_COUPON_MS = 7 * DAY_MS


def kind_of(node: str) -> str:
    return node[: node.index(":") + 1]


class _Slotted:
    """Pickles as the tuple of its slots' values (small checkpoints)."""

    __slots__: tuple[str, ...] = ()

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class Edge(_Slotted):
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


class Binding(_Slotted):
    """A user's binding to a merchant (the merchant brought the user in), within the window:
    first and last bound (only a binding refreshes it), how often, where the last binding was
    made, the retention commission the merchant earned on the user since, and the user's
    payments: at the merchant before it was first bound, its largest one there since (a
    purchase or a token: `visited`), and elsewhere since, and elsewhere within
    `BOUND_JUST_BEFORE_MS` of a binding."""

    __slots__ = (
        "at_merchant",
        "bound_just_before",
        "commission",
        "device",
        "elsewhere",
        "first_ts",
        "ip",
        "last_ts",
        "times",
        "visit_cents",
        "visited",
    )

    def __init__(self, ts: int) -> None:
        self.first_ts = ts
        self.last_ts = ts
        self.times = 0
        self.device: str | None = None
        self.ip: str | None = None
        self.commission = 0  # cents earned by the merchant on the user's payments
        self.at_merchant = 0  # the user's payments at the merchant before it bound
        self.elsewhere = 0  # the user's payments at other merchants since it was bound
        self.bound_just_before = 0  # of those, made within BOUND_JUST_BEFORE_MS of a binding
        #: The user's largest payment at the merchant since it was bound (0: none), and
        #: whether it is a purchase against the user's mean payment as of its latest payment
        #: (`is_visit`): a token paid to fake a visit is none once its big payments come.
        self.visit_cents = 0
        self.visited = False

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        """Restores a checkpoint; one from before visits were weighed counted every payment
        at the merchant in `at_merchant` and has neither."""
        if len(state) == len(self.__slots__) - 2:
            state = (*state, 0, False)
        super().__setstate__(state)

    @property
    def buys_elsewhere_only(self) -> bool:
        """The user has paid other merchants since it was bound, and never bought from this
        one: the merchant earns commission on a customer who does not buy from it."""
        return self.elsewhere > 0 and self.at_merchant == 0 and not self.visited


class Transfer(_Slotted):
    """Points a giver passed to a receiver, within the window (requests: allowed or not, the
    giver meant it)."""

    __slots__ = ("cents", "first_ts", "last_ts", "times")

    def __init__(self, ts: int) -> None:
        self.first_ts = ts
        self.last_ts = ts
        self.times = 0
        self.cents = 0


class CouponUse(_Slotted):
    """A young account's coupons of one merchant used in the window: when it first and last
    used one, how many, and how old the account was at the first."""

    __slots__ = ("age_ms", "first_ts", "last_ts", "times")

    def __init__(self, ts: int, age_ms: int) -> None:
        self.first_ts = ts
        self.last_ts = ts
        self.times = 0
        self.age_ms = age_ms


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
    #: (user node, merchant node) -> the user's binding to the merchant.
    bindings: dict[tuple[str, str], Binding] = field(default_factory=dict)
    #: merchant node -> the users bound to it; user node -> the merchants it is bound to.
    bound: dict[str, set[str]] = field(default_factory=dict)
    binders: dict[str, set[str]] = field(default_factory=dict)
    #: merchant node -> how many of its bound users buy elsewhere only
    #: (`Binding.buys_elsewhere_only`), kept as bindings, payments and expiry change it.
    buying_elsewhere: dict[str, int] = field(default_factory=dict)
    #: (giver node, receiver node) -> the points the giver passed to the receiver.
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)
    #: receiver node -> its givers.
    givers: dict[str, set[str]] = field(default_factory=dict)
    #: Day -> the bindings and transfers listed on it (`touched_days`' scheme; True: a
    #: binding's key, False: a transfer's).
    flow_days: dict[int, list[tuple[bool, tuple[str, str]]]] = field(default_factory=dict)
    #: (user node, merchant node) -> the coupons of the merchant a young account used
    #: (`coupon_redeemed`); merchant node -> those accounts; day -> the uses listed on it
    #: (`touched_days`' scheme).
    coupon_uses: dict[tuple[str, str], CouponUse] = field(default_factory=dict)
    coupon_users: dict[str, set[str]] = field(default_factory=dict)
    coupon_days: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint. One written before the regular-payer index existed gets
        the index built from its edges (the same as if it had been kept all along); one
        whose `touched_days` listed an edge on every day it was touched gets each edge
        listed once, on the day it was last touched (the same edges expire at the same
        `expire` call). One written before `regular_merchants` existed gets it as
        `regular_payers` inverted. One written before bindings and transfers were kept
        starts with none."""
        self.__dict__.update(state)
        if "coupon_uses" not in state:
            self.coupon_uses, self.coupon_users, self.coupon_days = {}, {}, {}
        if "bindings" not in state:
            self.bindings, self.bound, self.binders, self.buying_elsewhere = {}, {}, {}, {}
            self.transfers, self.givers, self.flow_days = {}, {}, {}
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
            binders = self.binders.get(user)
            if binders:
                self._bound_user_paid(user, merchant, tx, binders)
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

    def binding(self, event: PlatformEvent) -> str | None:
        """A binding (`user_id` brought in by `merchant_id`); returns the merchant node."""
        if not event.user_id or not event.merchant_id:
            return None
        user, merchant = USER + event.user_id, MERCHANT + event.merchant_id
        key = (user, merchant)
        binding = self.bindings.get(key)
        if binding is None:
            binding = self.bindings[key] = Binding(event.ts)
            paid = self.edges.get(key)  # a customer it already had
            binding.at_merchant = paid.payments if paid is not None else 0
            self.bound.setdefault(merchant, set()).add(user)
            self.binders.setdefault(user, set()).add(merchant)
            self._list_flow(event.ts, True, key)
        elif event.ts > binding.last_ts:
            binding.last_ts = event.ts
        binding.times += 1
        binding.device = event.device_id or binding.device
        binding.ip = event.ip or binding.ip
        return merchant

    def commission(self, event: PlatformEvent) -> str | None:
        """A retention commission the merchant earned on its bound user's payment; returns
        the merchant node, or None when no binding of theirs is in the window (a binding
        older than the window says nothing the graph can weigh)."""
        if not event.user_id or not event.merchant_id:
            return None
        merchant = MERCHANT + event.merchant_id
        binding = self.bindings.get((USER + event.user_id, merchant))
        if binding is None:
            return None
        binding.commission += event.amount_cents
        return merchant

    def transfer(self, event: PlatformEvent) -> str | None:
        """A points transfer request from `user_id` to `counterparty_id`; returns the
        receiver node."""
        giver, receiver = event.user_id, event.counterparty_id
        if not giver or not receiver or giver == receiver:
            return None
        key = (USER + giver, USER + receiver)
        transfer = self.transfers.get(key)
        if transfer is None:
            transfer = self.transfers[key] = Transfer(event.ts)
            self.givers.setdefault(key[1], set()).add(key[0])
            self._list_flow(event.ts, False, key)
        elif event.ts > transfer.last_ts:
            transfer.last_ts = event.ts
        transfer.times += 1
        transfer.cents += event.amount_cents
        return key[1]

    def _bound_user_paid(
        self, user: str, merchant: str, tx: Transaction, binders: set[str]
    ) -> None:
        """A payment by a bound user, counted on each of its bindings: at its binder, a visit
        that is a purchase only while it is one against the user's mean payment in the window,
        this one included (`is_visit`, as the binding lead's feature judges it at the led
        payment), so that a hijacker's accomplice paying a token does not pass for a customer
        who buys from its binder."""
        ts, mean = tx.ts, None
        for binder in binders:
            binding = self.bindings[(user, binder)]
            before = binding.buys_elsewhere_only
            if binder == merchant:
                binding.visit_cents = max(binding.visit_cents, tx.amount_cents)
            else:
                binding.elsewhere += 1
                if ts - binding.last_ts <= BOUND_JUST_BEFORE_MS:
                    binding.bound_just_before += 1
            if binding.visit_cents:  # judged anew: the mean moves with the user's payments
                mean = self._mean_payment(user) if mean is None else mean
                binding.visited = is_visit(binding.visit_cents, mean)
            if binding.buys_elsewhere_only != before:
                self._count_elsewhere(binder, 1 if binding.buys_elsewhere_only else -1)

    def _mean_payment(self, user: str) -> float:
        """The user's mean payment over its merchant edges in the window (cents; 0 without
        one)."""
        money = payments = 0
        for node in self.adjacent.get(user, ()):
            if node.startswith(MERCHANT):
                edge = self.edges[(user, node)]
                money, payments = money + edge.money, payments + edge.payments
        return money / payments if payments else 0.0

    def _count_elsewhere(self, merchant: str, change: int) -> None:
        left = self.buying_elsewhere.get(merchant, 0) + change
        if left > 0:
            self.buying_elsewhere[merchant] = left
        else:
            self.buying_elsewhere.pop(merchant, None)

    def _list_flow(self, ts: int, is_binding: bool, key: tuple[str, str]) -> None:
        day = ts // DAY_MS
        keys = self.flow_days.get(day)
        if keys is None:
            keys = self.flow_days[day] = []
        keys.append((is_binding, key))

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
        self._expire_flows(horizon_day)
        self._expire_coupon_uses(horizon_day)
        return stale

    def _expire_flows(self, horizon_day: int) -> None:
        """Drops the bindings and transfers last made before `horizon_day` (as `expire`
        does edges: each listed once, moved on when touched since)."""
        horizon = horizon_day * DAY_MS
        flow_days = self.flow_days
        for day in sorted(d for d in flow_days if d < horizon_day):
            for is_binding, key in flow_days.pop(day):
                flows: dict[tuple[str, str], Any] = self.bindings if is_binding else self.transfers
                flow = flows.get(key)
                if flow is None:
                    continue
                if flow.last_ts >= horizon:
                    self._list_flow(flow.last_ts, is_binding, key)
                    continue
                del flows[key]
                a, b = key
                if is_binding:
                    if flow.buys_elsewhere_only:
                        self._count_elsewhere(b, -1)
                    _discard(self.bound, b, a)
                    _discard(self.binders, a, b)
                else:
                    _discard(self.givers, b, a)

    def coupon_redeemed(self, event: PlatformEvent) -> str | None:
        """A coupon of `merchant_id` used by `user_id`; kept (and the merchant node returned)
        only for an account used within `YOUNG_COUPON_MS` of its signup in the window: what
        a coupon farm is made of, and a busy merchant's thousands of established customers
        using its coupons cost nothing."""
        if not event.user_id or not event.merchant_id:
            return None
        info = self.users.get(event.user_id)
        signup = None if info is None else info.signup_ts
        if signup is None or event.ts - signup > YOUNG_COUPON_MS:
            return None
        key = (USER + event.user_id, MERCHANT + event.merchant_id)
        use = self.coupon_uses.get(key)
        if use is None:
            use = self.coupon_uses[key] = CouponUse(event.ts, event.ts - signup)
            self.coupon_users.setdefault(key[1], set()).add(key[0])
            self.coupon_days.setdefault(event.ts // DAY_MS, []).append(key)
        elif event.ts > use.last_ts:
            use.last_ts = event.ts
        use.times += 1
        return key[1]

    def _expire_coupon_uses(self, horizon_day: int) -> None:
        """Drops the coupon uses last made before `horizon_day` (as `_expire_flows`)."""
        horizon = horizon_day * DAY_MS
        days = self.coupon_days
        for day in sorted(d for d in days if d < horizon_day):
            for key in days.pop(day):
                use = self.coupon_uses.get(key)
                if use is None:
                    continue
                if use.last_ts >= horizon:
                    days.setdefault(use.last_ts // DAY_MS, []).append(key)
                    continue
                del self.coupon_uses[key]
                _discard(self.coupon_users, key[1], key[0])

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


def _discard(index: dict[str, set[str]], node: str, member: str) -> None:
    """`member` out of `index[node]`, and `node` out of `index` when none is left."""
    members = index.get(node)
    if members is not None:
        members.discard(member)
        if not members:
            del index[node]
