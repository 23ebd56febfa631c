"""Platform-event families: bindings, retention commissions, coupons and points transfers
(issue #21; the events are `platform-events`, docs/events.md), as features of the payments.

The flows the platform pays through besides rebates are abused the way rebates are:

- a merchant binds a customer it did not bring in right before the customer's big payment
  elsewhere, and earns retention commission on it (`bound_elsewhere_s`,
  `binding_lead_amount_cents`), binding it again before each one: a customer is brought in
  once;
- binding farms bind many accounts from a few devices, accounts that then spend little
  (`binder_*`, and the device and IP families' `*_bound_user_count_7d`);
- a merchant's retention commission comes from colluding customers who also pay at it, in
  a tight cycle (`user_commission_cycle_share_30d`, `binder_commission_cycle_share_30d`);
- coupon farms claim coupons from many accounts on a few devices and use them at once
  (`user_coupons_claimed_24h`, `coupon_claim_to_use_s`, `*_coupon_user_count_24h`);
- points are moved to one account to be resold: it receives transfers from many givers and
  redeems them fast (`points_givers_30d`, `points_received_30d`, `points_quick_redeem_s`).

Two families, as the engine's stages split the work (`features.stages`): `UserPlatformFamily`
keyed by the event's user (the user stage: a platform event is keyed by its user, like the
user's payments) and `BinderFamily` keyed by the merchant a user is bound to (an entity-stage
family, read by the payments of its bound customers as the referral family is read by the
payments of a referrer's referees). A world without platform events leaves every state empty,
and each feature at its constant "nothing known" value.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar

from features.rows import FeatureRow, Value, feature_row
from features.windows import PaymentLog, WindowCount, WindowDistinct, drop_oldest, sweep_idle, touch
from rebate_guard.contract.records import (
    BINDING,
    COUPON_ISSUE,
    COUPON_REDEEM,
    PAYMENT,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_WITHDRAW,
    RETENTION_COMMISSION,
    PlatformEvent,
    Transaction,
    is_visit,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS

#: A binding this recent, to another merchant, makes a payment's `bound_elsewhere_s`.
BOUND_ELSEWHERE_MS = DAY_MS
#: ... and this recent its `binding_lead_amount_cents`: the commission a binding right before
#: a big payment elsewhere earns is the fraud, so the amount is what matters.
BINDING_LEAD_MS = HOUR_MS
#: A binding to the merchant the user was already bound to this recently is a re-binding,
#: whose lead lasts as long as the binding is recent (`BOUND_ELSEWHERE_MS`), not an hour: a
#: merchant brings a customer in once, so one binding the customer again and again is
#: claiming each of its payments elsewhere, however long before it binds. Either lead ends
#: once the user makes a purchase at the binder after the binding (`is_visit`): then it
#: was a visit (a regular re-scanning its shop's QR code at the door, a new customer bound at
#: the counter), which a hijacker's accomplice does not make.
REBOUND_MS = 30 * DAY_MS
#: A checkpoint from before visits were weighed knows that the user paid at the binder, not
#: how much: it restores as a purchase (as it counted then).
UNWEIGHED_VISIT_CENTS = 2**62
COUPON_CLAIM_WINDOW_MS = DAY_MS
#: A coupon's issue is looked up this far back from its use; a use is matched to its payment
#: this long after.
COUPON_LOOKBACK_MS = 30 * DAY_MS
COUPON_USE_MATCH_MS = DAY_MS
POINTS_WINDOW_MS = 30 * DAY_MS
COMMISSION_WINDOW_MS = 30 * DAY_MS
#: A commission is "cycled" when its customer paid at the earning merchant this shortly before.
CYCLE_MS = DAY_MS
BINDER_WINDOW_MS = 7 * DAY_MS
BINDER_SPEND_WINDOW_MS = 30 * DAY_MS
YOUNG_ACCOUNT_MS = 7 * DAY_MS


@feature_row
class PlatformUserFeatures(FeatureRow):
    """What the user's own platform events say, before the transaction."""

    #: Seconds since the user's latest binding, when it was to another merchant within 24 h.
    bound_elsewhere_s: Value
    #: A payment's amount when its user was bound to another merchant in the hour before it,
    #: or re-bound to it (bound to it again within 30 d) in the 24 h before it, and has made
    #: no purchase at that merchant since the binding (a token payment is none: `is_visit`).
    binding_lead_amount_cents: Value
    user_coupons_claimed_24h: Value
    #: For a payment a coupon was used on: seconds from the coupon's issue to its use.
    coupon_claim_to_use_s: Value
    #: Distinct users who transferred points to the user in 30 d, and the points.
    points_givers_30d: Value
    points_received_30d: Value
    #: The shortest time (s) from a received transfer to the user's next points request.
    points_quick_redeem_s: Value
    #: Retention commission the user's payments earned in 30 d, and the share of it earned by
    #: merchants the user had paid at in the 24 h before.
    user_commission_30d: Value
    user_commission_cycle_share_30d: Value


class CommissionWindow:
    """Retention commission over 30 d, and the part of it that was cycled (its customer had
    paid at the earning merchant in the 24 h before)."""

    __slots__ = ("cycled", "items", "total")

    def __init__(self) -> None:
        #: (ts, cents, cycled) of each commission in the window, oldest first.
        self.items: deque[tuple[int, int, bool]] = deque()
        self.total = 0
        self.cycled = 0

    def add(self, ts_ms: int, cents: int, *, cycled: bool) -> None:
        self.expire(ts_ms)
        self.items.append((ts_ms, cents, cycled))
        self.total += cents
        self.cycled += cents * cycled

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - COMMISSION_WINDOW_MS
        items = self.items
        while items and items[0][0] <= horizon:
            _, cents, cycled = items.popleft()
            self.total -= cents
            self.cycled -= cents * cycled

    def cycled_share(self) -> float | None:
        return self.cycled / self.total if self.total else None


class UserPlatform:
    """One user's platform events, as far as the features need them. Created with the
    user's first platform event; forgotten once idle past the user TTL."""

    __slots__ = (
        "binder",
        "bound_ts",
        "claims",
        "commissions",
        "coupon_uses",
        "givers",
        "issued",
        "last_received_ts",
        "last_ts",
        "rebound",
        "received",
        "requests",
        "visit_cents",
    )

    def __init__(self) -> None:
        #: The merchant of the user's latest binding, and when; whether that binding was a
        #: re-binding (to the merchant it was bound to before, within `REBOUND_MS`), and
        #: the largest payment the user has made at the merchant since (None: none).
        self.binder: str | None = None
        self.bound_ts = 0
        self.rebound = False
        self.visit_cents: int | None = None
        self.claims = WindowCount(COUPON_CLAIM_WINDOW_MS)
        #: coupon_id -> ts of its latest issue to the user (30 d), in issue order.
        self.issued: dict[str, int] = {}
        #: payment tx_id -> (ts of the coupon's use, seconds from its issue), in use order.
        self.coupon_uses: dict[str, tuple[int, float]] = {}
        self.givers = WindowDistinct(POINTS_WINDOW_MS)
        self.received = PaymentLog((POINTS_WINDOW_MS,))
        self.last_received_ts: int | None = None
        #: (ts, ms since the latest transfer received) of each points request after one.
        self.requests: deque[tuple[int, int]] = deque()
        #: The commissions the user's payments earned.
        self.commissions = CommissionWindow()
        self.last_ts = 0

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restores a checkpoint; one from before re-bindings were told apart has none, one
        from before visits were seen none of those, and one from before visits were weighed
        whether the user paid at the binder (`UNWEIGHED_VISIT_CENTS`)."""
        self.rebound = False
        self.visit_cents = None
        values = dict(state[1])
        if values.pop("visited", False):
            self.visit_cents = UNWEIGHED_VISIT_CENTS
        for name, value in values.items():
            setattr(self, name, value)


class PlatformContext:
    """What the entity families need of a platform event's user, worked out by the user
    stage: the account's age at the event (a binding's), and whether the user paid at the
    earning merchant shortly before (a commission's)."""

    __slots__ = ("account_age_ms", "cycled")

    def __init__(self, *, account_age_ms: int | None, cycled: bool = False) -> None:
        self.account_age_ms = account_age_ms
        self.cycled = cycled

    def wire(self) -> list[Any]:
        return [self.account_age_ms, self.cycled]

    @classmethod
    def of_wire(cls, fields: list[Any]) -> PlatformContext:
        account_age_ms, cycled = fields
        return cls(account_age_ms=account_age_ms, cycled=bool(cycled))


#: The features of a user without platform events (a constant row: nothing known).
PLATFORM_NOTHING_KNOWN: tuple[Value, ...] = (None, None, 0, None, 0, 0, None, 0, None)


class UserPlatformFamily:
    names: ClassVar[tuple[str, ...]] = PlatformUserFeatures.names

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.state: dict[str, UserPlatform] = {}

    def _state(self, user_id: str, ts: int) -> UserPlatform | None:
        """The user's state unless idle past the TTL (checked on read, as profiles are)."""
        state = self.state.get(user_id)
        if state is not None and state.last_ts <= ts - self.ttl_ms:
            del self.state[user_id]
            return None
        return state

    def binder(self, user_id: str, ts: int) -> str | None:
        """The merchant the user is bound to at `ts` (None: never bound, or forgotten)."""
        state = self._state(user_id, ts)
        return None if state is None else state.binder

    def platform_event(self, event: PlatformEvent, context: PlatformContext) -> bool:
        """Learns one of the user's platform events (`context`: what the user stage knows
        of it); False for a kind no feature reads."""
        kind, user_id, ts = event.kind, event.user_id, event.ts
        if user_id is None or kind not in USER_KINDS:
            return False
        if kind == POINTS_GRANT and event.counterparty_id in (None, user_id):
            return False  # a bonus or promotion, not a transfer
        self._state(user_id, ts)
        state = touch(self.state, user_id, ts=ts, new=UserPlatform)
        if kind == BINDING:
            state.rebound = state.binder == event.merchant_id and state.bound_ts > ts - REBOUND_MS
            state.binder, state.bound_ts, state.visit_cents = event.merchant_id, ts, None
        elif kind == COUPON_ISSUE:
            state.claims.expire(ts)
            state.claims.add(ts)
            issued = state.issued
            drop_oldest(issued, ts - COUPON_LOOKBACK_MS)
            issued.pop(str(event.coupon_id), None)
            issued[str(event.coupon_id)] = ts
        elif kind == COUPON_REDEEM:
            self._coupon_used(state, event)
        elif kind == POINTS_GRANT:
            state.givers.expire(ts)
            state.givers.add(ts, str(event.counterparty_id))
            state.received.expire(ts)
            state.received.add(ts, event.amount_cents)
            state.last_received_ts = ts
        elif kind in (POINTS_REDEEM, POINTS_WITHDRAW):
            received = state.last_received_ts
            if received is not None and received > ts - POINTS_WINDOW_MS:
                state.requests.append((ts, ts - received))
        else:  # RETENTION_COMMISSION
            state.commissions.add(ts, event.amount_cents, cycled=context.cycled)
        return True

    def _coupon_used(self, state: UserPlatform, event: PlatformEvent) -> None:
        ts = event.ts
        uses = state.coupon_uses
        _expire_uses(uses, ts)
        issued = state.issued.get(str(event.coupon_id))
        if event.tx_id is not None and issued is not None and issued > ts - COUPON_LOOKBACK_MS:
            uses.pop(event.tx_id, None)
            uses[event.tx_id] = (ts, (ts - issued) / 1000)

    def transaction(self, tx: Transaction, *, typical_cents: float | None) -> tuple[Value, ...]:
        """The platform features of `tx` (`typical_cents`: its user's mean payment, this one
        included); then a payment at its user's binder is a visit to the binding (the only
        platform state a transaction changes), the largest one kept."""
        payment = tx if tx.kind == PAYMENT else None
        at = tx.merchant_id
        values = self.features_at(
            tx.user_id, tx.ts, merchant_id=at, payment=payment, typical_cents=typical_cents
        )
        if payment is not None:
            state = self.state.get(tx.user_id)
            if state is not None and state.binder == tx.merchant_id:
                state.visit_cents = max(state.visit_cents or 0, payment.amount_cents)
        return values

    def features_at(
        self,
        user_id: str,
        ts: int,
        *,
        merchant_id: str | None,
        payment: Transaction | None = None,
        typical_cents: float | None = None,
    ) -> tuple[Value, ...]:
        """The user's platform features at `ts`, at `merchant_id`, for `payment` (None: not
        a payment, so no binding lead and no coupon use), whose user pays `typical_cents` on
        average, the payment included (None: not known, the payment's own amount stands in);
        reading expires windows."""
        state = self._state(user_id, ts)
        if state is None:
            return PLATFORM_NOTHING_KNOWN
        row = PlatformUserFeatures()
        elsewhere = (
            state.binder is not None
            and state.binder != merchant_id
            and state.bound_ts > ts - BOUND_ELSEWHERE_MS
        )
        row.bound_elsewhere_s = (ts - state.bound_ts) / 1000 if elsewhere else None
        lead = (
            elsewhere
            and payment is not None
            and (state.rebound or state.bound_ts > ts - BINDING_LEAD_MS)
        )
        if lead and payment is not None and state.visit_cents is not None:
            typical = payment.amount_cents if typical_cents is None else typical_cents
            lead = not is_visit(state.visit_cents, typical)  # a token is no visit
        row.binding_lead_amount_cents = payment.amount_cents if lead and payment else None
        state.claims.expire(ts)
        row.user_coupons_claimed_24h = len(state.claims)
        uses = state.coupon_uses
        _expire_uses(uses, ts)
        use = None if payment is None else uses.get(payment.tx_id)
        row.coupon_claim_to_use_s = None if use is None else use[1]
        state.givers.expire(ts)
        row.points_givers_30d = len(state.givers)
        state.received.expire(ts)
        row.points_received_30d = state.received.sums[0]
        requests = state.requests
        while requests and requests[0][0] <= ts - POINTS_WINDOW_MS:
            requests.popleft()
        row.points_quick_redeem_s = min(r[1] for r in requests) / 1000 if requests else None
        commissions = state.commissions
        commissions.expire(ts)
        row.user_commission_30d = commissions.total
        row.user_commission_cycle_share_30d = commissions.cycled_share()
        return row.values()

    def sweep(self, now_ms: int) -> int:
        return len(sweep_idle(self.state, now_ms - self.ttl_ms))


#: The kinds the user family learns.
USER_KINDS = frozenset(
    {BINDING, COUPON_ISSUE, COUPON_REDEEM, POINTS_GRANT, POINTS_REDEEM, POINTS_WITHDRAW}
    | {RETENTION_COMMISSION}
)


def _expire_uses(uses: dict[str, tuple[int, float]], now_ms: int) -> None:
    horizon = now_ms - COUPON_USE_MATCH_MS
    stale = [tx_id for tx_id, (ts, _) in uses.items() if ts <= horizon]
    for tx_id in stale:  # few: a user's coupon uses of one day
        del uses[tx_id]


@feature_row
class BinderFeatures(FeatureRow):
    """The merchant the payer is bound to (its binder), before the transaction."""

    binder_bindings_7d: Value
    #: Its 7 d bindings made on a device, per distinct device among them.
    binder_bindings_per_device_7d: Value
    #: Share of its 7 d bindings whose user's account was younger than 7 d.
    binder_young_binding_share_7d: Value
    #: Its bound customers' payments in 30 d (cents), per binding to it in 30 d.
    binder_spend_per_binding_30d: Value
    #: Share of its retention commission in 30 d earned on customers who had paid at it in
    #: the 24 h before.
    binder_commission_cycle_share_30d: Value


class BinderState:
    __slots__ = (
        "commissions",
        "devices",
        "last_ts",
        "month",
        "spend",
        "week",
        "with_device",
        "young",
    )

    def __init__(self) -> None:
        #: (ts, device, young) of its bindings in 7 d, with running counts over them.
        self.week: deque[tuple[int, str | None, bool]] = deque()
        self.devices: dict[str, int] = {}
        self.with_device = 0
        self.young = 0
        self.month = WindowCount(BINDER_SPEND_WINDOW_MS)
        self.spend = PaymentLog((BINDER_SPEND_WINDOW_MS,))
        self.commissions = CommissionWindow()
        self.last_ts = 0

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - BINDER_WINDOW_MS
        week, devices = self.week, self.devices
        while week and week[0][0] <= horizon:
            _, device, young = week.popleft()
            self.young -= young
            if device is not None:
                self.with_device -= 1
                left = devices[device] - 1
                if left:
                    devices[device] = left
                else:
                    del devices[device]
        self.month.expire(now_ms)
        self.spend.expire(now_ms)
        self.commissions.expire(now_ms)


class BinderFamily:
    """Keyed by the merchant a payer is bound to (`TxContext.binder`)."""

    names: ClassVar[tuple[str, ...]] = BinderFeatures.names
    #: The features of a transaction whose user is bound to no merchant.
    unbound: ClassVar[tuple[Value, ...]] = (None,) * len(BinderFeatures.names)
    #: Kinds it learns (keyed by the event's merchant: the binder, or the earner).
    kinds: ClassVar[frozenset[str]] = frozenset({BINDING, RETENTION_COMMISSION})

    def __init__(self) -> None:
        self.state: dict[str, BinderState] = {}

    def platform_event(self, event: PlatformEvent, context: PlatformContext) -> None:
        merchant = event.merchant_id
        if merchant is None or event.kind not in self.kinds:
            return
        ts = event.ts
        state = touch(self.state, merchant, ts=ts, new=BinderState)
        state.expire(ts)
        if event.kind == BINDING:
            age = context.account_age_ms
            young = age is not None and age < YOUNG_ACCOUNT_MS
            device = event.device_id
            state.week.append((ts, device, young))
            state.young += young
            if device is not None:
                state.with_device += 1
                state.devices[device] = state.devices.get(device, 0) + 1
            state.month.add(ts)
        else:
            state.commissions.add(ts, event.amount_cents, cycled=context.cycled)

    def transaction(self, tx: Transaction, binder: str | None) -> tuple[Value, ...]:
        """The binder features of `tx`, whose payer is bound to `binder`; then learns it."""
        if binder is None:
            return self.unbound
        ts = tx.ts
        state = self.state.get(binder)
        row = BinderFeatures()
        if state is None:
            row.binder_bindings_7d = 0
            row.binder_bindings_per_device_7d = row.binder_young_binding_share_7d = None
            row.binder_spend_per_binding_30d = row.binder_commission_cycle_share_30d = None
        else:
            state.expire(ts)
            n = len(state.week)
            row.binder_bindings_7d = n
            devices = len(state.devices)
            row.binder_bindings_per_device_7d = state.with_device / devices if devices else None
            row.binder_young_binding_share_7d = state.young / n if n else None
            month = len(state.month)
            row.binder_spend_per_binding_30d = state.spend.sums[0] / month if month else None
            row.binder_commission_cycle_share_30d = state.commissions.cycled_share()
        if tx.kind == PAYMENT:
            state = touch(self.state, binder, ts=ts, new=BinderState)
            state.expire(ts)
            state.spend.add(ts, tx.amount_cents)
        return row.values()

    def sweep(self, now_ms: int) -> int:
        """Drop binders idle for the longest window: all their state has expired anyway."""
        return len(sweep_idle(self.state, now_ms - BINDER_SPEND_WINDOW_MS))


class ClaimsState:
    __slots__ = ("bound", "coupons", "last_ts")

    def __init__(self, bound_ms: int, coupon_ms: int) -> None:
        self.bound = WindowDistinct(bound_ms)
        self.coupons = WindowDistinct(coupon_ms)
        self.last_ts = 0


class ClaimsFamily:
    """Per device (or IP): the users bound to a merchant on it, and the users who claimed a
    coupon on it, each over its window. A count is null when nobody did in the window (or
    the transaction has no device): "nothing known" is one value, as for the other platform
    features. Kept apart from the identity family of the same key, whose values a checkpoint
    from before platform events holds without these."""

    def __init__(
        self,
        entity: str,
        read: Callable[[Transaction | PlatformEvent], str | None],
        *,
        bound: tuple[str, int],
        coupons: tuple[str, int],
    ) -> None:
        self.entity = entity
        self.read = read
        self.bound_ms, self.coupon_ms = bound[1], coupons[1]
        self.names = (bound[0], coupons[0])
        self.state: dict[str, ClaimsState] = {}

    def _new(self) -> ClaimsState:
        return ClaimsState(self.bound_ms, self.coupon_ms)

    def platform_event(self, event: PlatformEvent) -> bool:
        """A binding or a coupon claim made on it; False when the event names none."""
        kind, key, user = event.kind, self.read(event), event.user_id
        if key is None or user is None or kind not in (BINDING, COUPON_ISSUE):
            return False
        state = touch(self.state, key, ts=event.ts, new=self._new)
        window = state.bound if kind == BINDING else state.coupons
        window.expire(event.ts)
        window.add(event.ts, user)
        return True

    def transaction(self, tx: Transaction) -> tuple[Value, ...]:
        """The values of `names` for `tx` (a transaction adds nothing)."""
        key = self.read(tx)
        state = None if key is None else self.state.get(key)
        if state is None:
            return (None, None)
        out: list[Value] = []
        for window in (state.bound, state.coupons):
            window.expire(tx.ts)
            out.append(len(window) or None)
        return tuple(out)

    def sweep(self, now_ms: int) -> int:
        return len(sweep_idle(self.state, now_ms - max(self.bound_ms, self.coupon_ms)))


def device_claims_family() -> ClaimsFamily:
    return ClaimsFamily(
        "device",
        attrgetter("device_id"),
        bound=("device_bound_user_count_7d", 7 * DAY_MS),
        coupons=("device_coupon_user_count_24h", DAY_MS),
    )


def ip_claims_family() -> ClaimsFamily:
    return ClaimsFamily(
        "ip",
        attrgetter("ip"),
        bound=("ip_bound_user_count_7d", 7 * DAY_MS),
        coupons=("ip_coupon_user_count_24h", DAY_MS),
    )


#: Every feature the platform families give, and each one's value without platform events.
PLATFORM_FEATURES: dict[str, Value] = {
    **dict(zip(UserPlatformFamily.names, PLATFORM_NOTHING_KNOWN, strict=True)),
    **dict.fromkeys(BinderFamily.names),
    **dict.fromkeys(device_claims_family().names + ip_claims_family().names),
}
