"""User family: a user's own recent activity, keyed by user_id.

Also holds the user x merchant pair counts and the user's recent payments by tx_id (for the
time since a refunded payment): both are per-user facts, so they live where the user's events
are, and need no other key.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any, ClassVar

from features.rows import FeatureRow, Value, feature_row
from features.windows import PaymentLog, WindowDistinct, drop_oldest, sweep_idle, touch
from rebate_guard.contract.records import PAYMENT, Signup, Transaction
from rebate_guard.contract.time import DAY_MS, HOUR_MS

# Longest first (PaymentLog's contract); names below follow the same order.
USER_HORIZONS = (30 * DAY_MS, 7 * DAY_MS, DAY_MS, HOUR_MS)
PAIR_WINDOW_MS = 7 * DAY_MS
REFUND_LOOKBACK_MS = 30 * DAY_MS
#: How soon after signing up a first payment at the till is paid: a counter's in minutes, a
#: restaurant table's after the meal (scan to order, eat, pay: up to about an hour and a
#: half), so two hours hold both and a sign-up the user came back to later is not one.
TILL_SIGNUP_MS = 2 * HOUR_MS


@feature_row
class UserFeatures(FeatureRow):
    """A user's own recent activity, before the transaction."""

    user_tx_count_30d: Value
    user_tx_count_7d: Value
    user_tx_count_24h: Value
    user_tx_count_1h: Value
    user_amount_sum_30d: Value
    user_amount_sum_7d: Value
    user_amount_sum_24h: Value
    user_amount_sum_1h: Value
    #: Distinct merchants, devices and IPs over 24 h, including the current one.
    user_merchant_count_24h: Value
    user_device_count_24h: Value
    user_ip_count_24h: Value
    seconds_since_prev_payment: Value
    #: The amount against the user's earlier payments (Welford's mean and spread).
    user_amount_zscore: Value
    user_amount_to_mean: Value
    user_account_age_s: Value
    #: Until the first payment (this one, if it is the first).
    signup_to_first_payment_s: Value
    #: 1 if the user signed up at a merchant's till: no referrer, and the first payment
    #: (this one, if it is the first) within `TILL_SIGNUP_MS` of the sign-up, on the device
    #: (or, without one, the IP) it signed up with; else 0; None without a known sign-up.
    #: A referral farm's accounts have a referrer (the bonus is why they exist), so a
    #: minutes-old account that pays at once is not, by its age alone, a farm's.
    signed_up_at_till: Value
    #: Payments to this merchant over 7 d.
    user_merchant_tx_count_7d: Value
    #: A refund: seconds since the payment it refunds, if known.
    refund_delay_s: Value


class UserProfile:
    """Lifetime facts of a user: tiny, kept until the user is idle past the user TTL."""

    __slots__ = (
        "first_payment_ts",
        "last_payment_ts",
        "last_ts",
        "m2",
        "mean",
        "n",
        "referrer",
        "signup_device",
        "signup_ip",
        "signup_ts",
        "till_signup",
    )

    def __init__(self) -> None:
        self.signup_ts: int | None = None
        #: Who referred the user (None for none, or for a self-referral), from the signup.
        self.referrer: str | None = None
        #: Where the user signed up from (the signup's device and IP, if it said).
        self.signup_device: str | None = None
        self.signup_ip: str | None = None
        #: `signed_up_at_till`, settled at the first payment (None before it).
        self.till_signup: bool | None = None
        self.first_payment_ts: int | None = None
        self.last_payment_ts: int | None = None
        # Welford's running mean and spread of payment amounts.
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.last_ts = 0

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restores a checkpoint; one from before the sign-up's device and IP were kept has
        none (its users' first payments are settled as not at a till)."""
        self.signup_device = self.signup_ip = None
        self.till_signup = None
        for name, value in state[1].items():
            setattr(self, name, value)
        if self.till_signup is None and self.first_payment_ts is not None:
            self.till_signup = False

    def at_till(self, tx: Transaction) -> bool:
        """Whether `tx`, as the user's first payment, is one at the till it signed up at."""
        signup = self.signup_ts
        if signup is None or self.referrer is not None or tx.ts - signup > TILL_SIGNUP_MS:
            return False
        if tx.device_id is not None and self.signup_device is not None:
            return tx.device_id == self.signup_device
        return tx.ip is not None and tx.ip == self.signup_ip


class UserActivity:
    """Windowed activity of a user: dropped after 30 d without a transaction, when every
    window in it has expired anyway (so dropping it changes no feature)."""

    __slots__ = (
        "devices_24h",
        "ips_24h",
        "last_ts",
        "merchants_24h",
        "pairs_7d",
        "payments",
        "recent_payments",
    )

    def __init__(self) -> None:
        self.payments = PaymentLog(USER_HORIZONS)
        self.merchants_24h = WindowDistinct(DAY_MS)
        self.devices_24h = WindowDistinct(DAY_MS)
        self.ips_24h = WindowDistinct(DAY_MS)
        #: merchant -> payment ts in the last 7 d, merchants in last-payment order.
        self.pairs_7d: dict[str, deque[int]] = {}
        #: tx_id -> ts of this user's payments in the refund lookback, oldest first.
        self.recent_payments: dict[str, int] = {}
        self.last_ts = 0


ACTIVITY_TTL_MS = max(USER_HORIZONS[0], PAIR_WINDOW_MS, REFUND_LOOKBACK_MS)


class TxContext:
    """What the other families need to know about a transaction's user, as of its ts: the
    user stage works it out, and the entity stage (another partition, perhaps) receives it."""

    __slots__ = ("account_age_ms", "binder", "depth", "referrer", "signup_ts")

    def __init__(
        self,
        *,
        account_age_ms: int | None,
        signup_ts: int | None,
        referrer: str | None,
        depth: int | None = None,
        binder: str | None = None,
    ) -> None:
        self.account_age_ms = account_age_ms
        self.signup_ts = signup_ts
        self.referrer = referrer
        #: The user's referral depth; filled in from the referral tree by whoever holds it.
        self.depth = depth
        #: The merchant the user is bound to (platform events: `features.platform`).
        self.binder = binder

    def wire(self) -> list[Any]:
        """What crosses from the user stage to the entity stage: the depth is not known
        yet there (the entity stage fills it in from the referral tree). The binder rides
        along only when there is one, so a context without is the three fields every reader
        of the wire knows."""
        fields = [self.account_age_ms, self.signup_ts, self.referrer]
        if self.binder is not None:
            fields.append(self.binder)
        return fields

    @classmethod
    def of_wire(cls, fields: Sequence[Any]) -> TxContext:
        """The context `wire` sent (one sent before bindings existed has no binder)."""
        account_age_ms, signup_ts, referrer, *binder = fields
        return cls(
            account_age_ms=account_age_ms,
            signup_ts=signup_ts,
            referrer=referrer,
            binder=binder[0] if binder else None,
        )


class UserFamily:
    names: ClassVar[tuple[str, ...]] = UserFeatures.names

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.profiles: dict[str, UserProfile] = {}
        self.activity: dict[str, UserActivity] = {}

    def _profile(self, user_id: str, ts: int) -> UserProfile | None:
        """The user's profile unless idle past the TTL. Checked on every read, so a user's
        lifetime facts restart at the same moment however often (or whether) sweeps run."""
        profile = self.profiles.get(user_id)
        if profile is not None and profile.last_ts <= ts - self.ttl_ms:
            del self.profiles[user_id]
            return None
        return profile

    def signup(self, event: Signup) -> bool:
        """Records the signup; False (and no change) if the user's signup is already known."""
        profile = self._profile(event.user_id, event.ts)
        if profile is not None and profile.signup_ts is not None:
            return False
        profile = touch(self.profiles, event.user_id, ts=event.ts, new=UserProfile)
        profile.signup_ts = event.ts
        referrer = event.referrer_id
        profile.referrer = None if referrer == event.user_id else referrer
        profile.signup_device = event.device_id
        profile.signup_ip = event.ip
        return True

    def transaction(self, tx: Transaction) -> tuple[UserFeatures, TxContext]:
        """The user features of `tx` and its user context; then learns `tx`."""
        ts = tx.ts
        amount = tx.amount_cents
        self._profile(tx.user_id, ts)
        profile = touch(self.profiles, tx.user_id, ts=ts, new=UserProfile)
        user = touch(self.activity, tx.user_id, ts=ts, new=UserActivity)
        log = user.payments
        log.expire(ts)
        row = UserFeatures()
        n_items = len(log.ts)
        heads, sums = log.heads, log.sums  # in `USER_HORIZONS` order
        row.user_tx_count_30d = n_items - heads[0]
        row.user_tx_count_7d = n_items - heads[1]
        row.user_tx_count_24h = n_items - heads[2]
        row.user_tx_count_1h = n_items - heads[3]
        row.user_amount_sum_30d = sums[0]
        row.user_amount_sum_7d = sums[1]
        row.user_amount_sum_24h = sums[2]
        row.user_amount_sum_1h = sums[3]
        merchants, devices, ips = user.merchants_24h, user.devices_24h, user.ips_24h
        merchants.expire(ts)
        devices.expire(ts)
        ips.expire(ts)
        row.user_merchant_count_24h = merchants.count_with(tx.merchant_id)
        row.user_device_count_24h = (
            None if tx.device_id is None else devices.count_with(tx.device_id)
        )
        row.user_ip_count_24h = None if tx.ip is None else ips.count_with(tx.ip)
        last = profile.last_payment_ts
        row.seconds_since_prev_payment = None if last is None else (ts - last) / 1000
        n = profile.n
        row.user_amount_zscore = (
            (amount - profile.mean) / math.sqrt(profile.m2 / n)
            if n >= 2 and profile.m2 > 0.0
            else None
        )
        row.user_amount_to_mean = amount / profile.mean if n else None
        signup = profile.signup_ts
        context = TxContext(
            account_age_ms=None if signup is None else ts - signup,
            signup_ts=signup,
            referrer=profile.referrer,
        )
        first = profile.first_payment_ts
        if signup is None:
            row.user_account_age_s = row.signup_to_first_payment_s = None
            row.signed_up_at_till = None
        else:
            row.user_account_age_s = (ts - signup) / 1000
            row.signup_to_first_payment_s = ((ts if first is None else first) - signup) / 1000
            till = profile.till_signup
            if till is None:
                till = profile.at_till(tx)
            row.signed_up_at_till = float(till)
        pairs = user.pairs_7d
        horizon = ts - PAIR_WINDOW_MS
        # Pairs are kept in last-payment order: merchants not paid for a week leave first.
        stale = 0
        for payments in pairs.values():
            if payments[-1] > horizon:
                break
            stale += 1
        for merchant in list(islice(pairs, stale)):  # one pass (see windows.drop_oldest)
            del pairs[merchant]
        pair = pairs.get(tx.merchant_id)
        if pair is None:
            row.user_merchant_tx_count_7d = 0
        else:
            while pair[0] <= horizon:
                pair.popleft()
            row.user_merchant_tx_count_7d = len(pair)
        recent = user.recent_payments
        drop_oldest(recent, ts - REFUND_LOOKBACK_MS)
        if tx.kind == PAYMENT:
            row.refund_delay_s = None
            log.add(ts, amount)
            merchants.add(ts, tx.merchant_id)
            if tx.device_id is not None:
                devices.add(ts, tx.device_id)
            if tx.ip is not None:
                ips.add(ts, tx.ip)
            if pair is None:
                pair = deque()
            else:
                del pairs[tx.merchant_id]
            pair.append(ts)
            pairs[tx.merchant_id] = pair
            recent[tx.tx_id] = ts
            profile.last_payment_ts = ts
            if first is None:
                profile.first_payment_ts = ts
                profile.till_signup = row.signed_up_at_till == 1.0
            n += 1
            delta = amount - profile.mean
            profile.mean += delta / n
            profile.m2 += delta * (amount - profile.mean)
            profile.n = n
        else:
            paid = recent.get(tx.ref_tx_id) if tx.ref_tx_id is not None else None
            row.refund_delay_s = None if paid is None else (ts - paid) / 1000
        return row, context

    def last_paid_at(self, user_id: str, merchant_id: str) -> int | None:
        """The ts of the user's latest payment at the merchant in the pair window (or
        older, not yet expired: callers compare it to their own horizon); reads only."""
        activity = self.activity.get(user_id)
        pair = None if activity is None else activity.pairs_7d.get(merchant_id)
        return pair[-1] if pair else None

    def sweep(self, now_ms: int) -> int:
        """Drop expired activity, and profiles of users idle past the TTL (whose lifetime
        facts then restart)."""
        sweep_idle(self.activity, now_ms - ACTIVITY_TTL_MS)
        return len(sweep_idle(self.profiles, now_ms - self.ttl_ms))
