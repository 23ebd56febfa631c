"""The highest risk each user's payments got in a trailing window: what the payments' model
concluded about an account, for the decisions that are not payments (its points requests:
`rebate_guard.core.decider.Decider.platform_event`).

Pure and exact: each user keeps only the payments that can still be the window's maximum (a
later payment at least as risky makes an earlier one irrelevant), so a user's list is short
(its risks fall from oldest to newest). Users are kept in the order of their latest payment,
and those whose latest payment has left the window leave from the front: the state holds the
users who paid within the window, and nothing else.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from rebate_guard.contract.time import DAY_MS

#: How far back a request looks at its requester's payments: a month, as far as the
#: ledger claws a granted rebate back (`clawback_within_days`) and the features look for
#: the payment of a refund. On tuning worlds 0-3 (random profile, 20k) a 7-day window saw
#: a payment past `detectors.rules.RISKY_PAYMENT` behind 16-58% of the abusive requesters'
#: points, 30 days behind 27-64%, with no legitimate requester's in either.
PAYMENT_RISK_WINDOW_MS = 30 * DAY_MS


@dataclass
class PaymentRisks:
    """user -> [(ts, risk), ...] of the payments that may still be the window's highest
    (oldest first, risks strictly falling), users in the order of their latest payment.

    >>> risks = PaymentRisks()
    >>> risks.add("u", 0, 0.9)
    >>> risks.add("u", 10 * DAY_MS, 0.3)
    >>> risks.highest("u", 20 * DAY_MS), risks.highest("u", 31 * DAY_MS)
    (0.9, 0.3)
    >>> risks.highest("u", 41 * DAY_MS) is None, risks.highest("nobody", 0) is None
    (True, True)
    """

    window_ms: int = PAYMENT_RISK_WINDOW_MS
    by_user: OrderedDict[str, list[tuple[int, float]]] = field(default_factory=OrderedDict)

    def add(self, user_id: str, ts: int, risk: float) -> None:
        """A payment of `user_id` at `ts` was scored `risk` (payments come in event-time
        order): the earlier ones no riskier can no longer be the highest."""
        self._forget_idle(ts)
        kept = self.by_user.pop(user_id, None)
        if kept is None:
            kept = []
        horizon = ts - self.window_ms
        while kept and (kept[-1][1] <= risk or kept[-1][0] <= horizon):
            kept.pop()
        kept.append((ts, risk))
        if kept[0][0] <= horizon:  # the oldest left the window (the newer ones did not)
            kept[:] = [(t, r) for t, r in kept if t > horizon]
        self.by_user[user_id] = kept  # its latest payment now: to the back

    def highest(self, user_id: str, now: int) -> float | None:
        """The highest risk of the user's payments in the window before `now` (None: no
        payment in it). Changes nothing."""
        horizon = now - self.window_ms
        for ts, risk in self.by_user.get(user_id, ()):
            if ts > horizon:
                return risk  # the oldest still in the window is the highest
        return None

    def _forget_idle(self, now: int) -> None:
        """Users whose latest payment left the window leave (from the front: oldest first)."""
        by_user, horizon = self.by_user, now - self.window_ms
        while by_user:
            user, kept = next(iter(by_user.items()))
            if kept[-1][0] > horizon:
                break
            del by_user[user]

    def __len__(self) -> int:
        return len(self.by_user)
