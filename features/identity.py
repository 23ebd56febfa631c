"""Identity families: devices, IPs and cards shared between users, keyed by the identifier.

Referral farms and cash-out crews run many accounts from few phones, networks and cards; the
number of distinct users behind one identifier (payments and signups alike) is the signal.
"Including the current user": a first-time identifier already counts 1.

Devices also sum the rebate money their payments requested over the last 24 h (before the
current payment): what the policy's per-device daily cap reads. A device's payments come from
users decided on different partitions, so the money *requested* (known from each payment, in
event-time order here) is counted rather than the money granted (decided elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from features.rows import Value
from features.windows import PaymentLog, WindowCount, WindowDistinct, sweep_idle, touch
from rebate_guard.contract.records import PAYMENT, Signup, Transaction, requested_rebate_cents
from rebate_guard.contract.time import DAY_MS


class IdentityState:
    __slots__ = ("last_ts", "rebate", "signups", "users")

    def __init__(self, widths: tuple[int, ...]) -> None:
        self.users = tuple(WindowDistinct(w) for w in widths)
        # Signups from this identifier; most are only ever seen paying, so the queue (an empty
        # deque is ~600 bytes) is created with the first signup.
        self.signups: WindowCount | None = None
        # Rebate requested by payments on it (families with a rebate window), from the first.
        self.rebate: PaymentLog | None = None
        self.last_ts = 0


class IdentityFamily:
    """Per identifier: the distinct users behind it over each of the `users` windows, and
    optionally the signups from it over the `signups` window and the rebate its payments
    requested over the `rebate` window. Each window is declared with the name of the feature
    it gives, as `{name: width_ms}` or `(name, width_ms)`."""

    def __init__(
        self,
        entity: str,
        read: Callable[[Signup | Transaction], str | None],
        *,
        users: dict[str, int],
        signups: tuple[str, int] | None = None,
        rebate: tuple[str, int] | None = None,
    ) -> None:
        self.entity = entity
        self.read = read
        self.widths = tuple(users.values())
        extras = tuple(window for window in (signups, rebate) if window is not None)
        self.longest_ms = max(self.widths + tuple(width for _, width in extras))
        self.signup_window_ms = None if signups is None else signups[1]
        self.rebate_window_ms = None if rebate is None else rebate[1]
        #: In the order `transaction` writes the values: users per window, signups, rebate.
        self.names = (*users, *(name for name, _ in extras))
        self.state: dict[str, IdentityState] = {}

    def _touch(self, key: str, ts: int) -> IdentityState:
        return touch(self.state, key, ts=ts, new=self._new)

    def _new(self) -> IdentityState:
        return IdentityState(self.widths)

    def signup(self, event: Signup) -> None:
        key = self.read(event)
        if key is None:
            return
        state = self._touch(key, event.ts)
        for window in state.users:
            window.add(event.ts, event.user_id)
        if self.signup_window_ms is not None:
            signups = state.signups
            if signups is None:
                signups = state.signups = WindowCount(self.signup_window_ms)
            signups.expire(event.ts)
            signups.add(event.ts)

    def transaction(self, tx: Transaction) -> list[Value]:
        """The values of `names` for `tx`; then learns `tx`."""
        key = self.read(tx)
        if key is None:
            return [None] * len(self.names)
        ts = tx.ts
        state = self.state.get(key)
        values: list[Value]
        if state is None:
            values = [1] * len(self.widths)  # the current user alone
            if self.signup_window_ms is not None:
                values.append(0)
            if self.rebate_window_ms is not None:
                values.append(0)
            if tx.kind != PAYMENT:
                return values
        else:
            values = []
            for window in state.users:
                window.expire(ts)
                values.append(window.count_with(tx.user_id))
            if self.signup_window_ms is not None:
                signups = state.signups
                if signups is not None:
                    signups.expire(ts)
                values.append(0 if signups is None else len(signups))
            if self.rebate_window_ms is not None:
                rebate = state.rebate
                if rebate is not None:
                    rebate.expire(ts)
                values.append(0 if rebate is None else rebate.sums[0])
        if tx.kind == PAYMENT:
            state = self._touch(key, ts)
            for window in state.users:
                window.add(ts, tx.user_id)
            if self.rebate_window_ms is not None:
                if state.rebate is None:
                    state.rebate = PaymentLog((self.rebate_window_ms,))
                state.rebate.add(ts, requested_rebate_cents(tx.amount_cents, tx.rebate_rate))
        return values

    def sweep(self, now_ms: int) -> int:
        """Drop identifiers idle for the longest window: all their state has expired anyway."""
        return len(sweep_idle(self.state, now_ms - self.longest_ms))


def device_family() -> IdentityFamily:
    return IdentityFamily(
        "device",
        attrgetter("device_id"),
        users={"device_user_count_24h": DAY_MS, "device_user_count_7d": 7 * DAY_MS},
        signups=("device_signup_count_7d", 7 * DAY_MS),
        rebate=("device_rebate_requested_24h", DAY_MS),
    )


def ip_family() -> IdentityFamily:
    return IdentityFamily(
        "ip",
        attrgetter("ip"),
        users={"ip_user_count_24h": DAY_MS, "ip_user_count_7d": 7 * DAY_MS},
        signups=("ip_signup_count_7d", 7 * DAY_MS),
    )


def card_family() -> IdentityFamily:
    # Signups carry no card; cards are seen only at payment.
    return IdentityFamily("card", _card_id, users={"card_user_count_30d": 30 * DAY_MS})


def _card_id(event: Signup | Transaction) -> str | None:
    return event.card_id if isinstance(event, Transaction) else None
