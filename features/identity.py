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
    """Distinct users per identifier over each window in `widths`, and (optionally) signups
    from it over `signup_window_ms` and the rebate its payments requested over
    `rebate_window_ms`."""

    def __init__(
        self,
        entity: str,
        read: Callable[[Signup | Transaction], str | None],
        widths: dict[str, int],
        signup_window: tuple[str, int] | None = None,
        rebate_window: tuple[str, int] | None = None,
    ) -> None:
        self.entity = entity
        self.read = read
        self.widths = tuple(widths.values())
        extra = tuple(w[1] for w in (signup_window, rebate_window) if w is not None)
        self.longest_ms = max(self.widths + extra)
        self.signup_window_ms = None if signup_window is None else signup_window[1]
        self.rebate_window_ms = None if rebate_window is None else rebate_window[1]
        self.names = (
            tuple(f"{entity}_user_count_{label}" for label in widths)
            + (() if signup_window is None else (f"{entity}_signup_count_{signup_window[0]}",))
            + (() if rebate_window is None else (f"{entity}_rebate_requested_{rebate_window[0]}",))
        )
        self.state: dict[str, IdentityState] = {}

    def _touch(self, key: str, ts: int) -> IdentityState:
        return touch(self.state, key, ts, self._new)

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

    def transaction(self, tx: Transaction, out: list[float | None]) -> None:
        key = self.read(tx)
        if key is None:
            out.extend((None,) * len(self.names))
            return
        ts = tx.ts
        state = self.state.get(key)
        if state is None:
            out.extend((1,) * len(self.widths))
            if self.signup_window_ms is not None:
                out.append(0)
            if self.rebate_window_ms is not None:
                out.append(0)
            if tx.kind != PAYMENT:
                return
        else:
            for window in state.users:
                window.expire(ts)
                out.append(window.count_with(tx.user_id))
            if self.signup_window_ms is not None:
                signups = state.signups
                if signups is not None:
                    signups.expire(ts)
                out.append(0 if signups is None else len(signups))
            if self.rebate_window_ms is not None:
                rebate = state.rebate
                if rebate is not None:
                    rebate.expire(ts)
                out.append(0 if rebate is None else rebate.sums[0])
        if tx.kind == PAYMENT:
            state = self._touch(key, ts)
            for window in state.users:
                window.add(ts, tx.user_id)
            if self.rebate_window_ms is not None:
                if state.rebate is None:
                    state.rebate = PaymentLog((self.rebate_window_ms,))
                state.rebate.add(ts, requested_rebate_cents(tx.amount_cents, tx.rebate_rate))

    def sweep(self, now_ms: int) -> int:
        """Drop identifiers idle for the longest window: all their state has expired anyway."""
        return len(sweep_idle(self.state, now_ms - self.longest_ms))


def device_family() -> IdentityFamily:
    return IdentityFamily(
        "device",
        attrgetter("device_id"),
        {"24h": DAY_MS, "7d": 7 * DAY_MS},
        ("7d", 7 * DAY_MS),
        ("24h", DAY_MS),
    )


def ip_family() -> IdentityFamily:
    return IdentityFamily(
        "ip", attrgetter("ip"), {"24h": DAY_MS, "7d": 7 * DAY_MS}, ("7d", 7 * DAY_MS)
    )


def card_family() -> IdentityFamily:
    # Signups carry no card; cards are seen only at payment.
    return IdentityFamily("card", _card_id, {"30d": 30 * DAY_MS})


def _card_id(event: Signup | Transaction) -> str | None:
    return event.card_id if isinstance(event, Transaction) else None
