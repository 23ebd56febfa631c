"""The simulated risk team that reviews the sample of withheld payments (issue #21).

The friction budget can measure the legitimate share of the money it withholds only from
labels on a random sample of it: `[budget] review_share` of the payments withheld at
decision (`core.budget.sampled_for_review`, a stable hash of the tx_id) go to the risk team,
who decide each within the hold's timeout. In production those labels come from the
console's review queue; in the simulated harness nobody is there to review, so `ReviewDesk`
plays the team: it knows the world's truth, errs at the world's mislabel rates, and answers
`hold_review_delay_min_hours`..`hold_review_delay_max_hours` after the payment. Replay
(`rebate_guard.tools.replay.replay`, `reviews=`) tells it each decision and applies the
labels it has due before the next event.

Its draws (the delay, a mislabel) come from a keyed hash of the tx_id, not from a generator
read in call order: the same world and decisions give the same labels whatever else the
desk was told, and in whatever order.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Mapping

import polars as pl

from rebate_guard.contract.records import FRAUD, LEGIT, Decision, Label
from rebate_guard.contract.time import HOUR_MS
from rebate_guard.core.policy import in_review_sample
from rebate_guard.tools.simulator._labels import REVIEW, SOURCES
from rebate_guard.tools.simulator.config import WorldConfig

#: The labels' source: the risk team's review.
REVIEW_SOURCE = SOURCES[REVIEW]
_UNIT = 2.0**-64


class ReviewDesk:
    """The risk team: labels each sampled withheld payment with its truth (or, at the
    world's mislabel rates, the other label), a delay after the payment.

    Parameters
    ----------
    truth : Mapping[str, bool]
        tx_id -> is_fraud (the world's `tx_truth`); a payment not in it is not reviewed.
    config : WorldConfig
        The world's: its mislabel rates and hold review delays; its seed keys the draws.
    seed : int, optional
        Instead of the config's seed.

    Examples
    --------
    A held legitimate payment in the review sample, reviewed 4-48 hours later:

    >>> desk = ReviewDesk({"t1": False}, config=WorldConfig())
    >>> from rebate_guard.core.policy import REVIEW_SAMPLE
    >>> reasons = [REVIEW_SAMPLE]
    >>> desk.decided(Decision("t1", 0, "u1", "m1", 0.9, 0.1, "hold", 1_000, 0, reasons, "m", 0))
    >>> desk.due(0), [label.label for label in desk.due(2**62)], desk.delivered
    ([], ['legit'], 1)
    """

    def __init__(
        self,
        truth: Mapping[str, bool],
        *,
        config: WorldConfig,
        seed: int | None = None,
    ) -> None:
        self.truth = truth
        self.legit_mislabel_rate = config.legit_mislabel_rate
        self.fraud_mislabel_rate = config.fraud_mislabel_rate
        self.delay_min_ms = round(config.hold_review_delay_min_hours * HOUR_MS)
        self.delay_max_ms = round(config.hold_review_delay_max_hours * HOUR_MS)
        self.key = str(config.seed if seed is None else seed).encode()
        #: (label ts, tx_id, label): the scheduled labels, earliest first.
        self.scheduled: list[tuple[int, str, Label]] = []
        #: Labels handed out by `due` so far.
        self.delivered = 0

    @classmethod
    def of(cls, tx_truth: pl.DataFrame, *, config: WorldConfig) -> ReviewDesk:
        """The desk of a world, from its `tx_truth` (tx_id, is_fraud)."""
        truth = dict(zip(tx_truth["tx_id"], tx_truth["is_fraud"], strict=True))
        return cls(truth, config=config)

    def decided(self, decision: Decision) -> None:
        """Schedules the review of `decision`'s payment if it is in the sample
        (`core.policy.in_review_sample`: held by the budget's thresholds or cut, and drawn;
        not a points request, a campaign's or a fail-closed hold) and a rebate was asked."""
        if decision.rebate_granted_cents >= decision.rebate_requested_cents or not (
            in_review_sample(decision.action, decision.reasons)
        ):
            return
        fraud = self.truth.get(decision.tx_id)
        if fraud is None:
            return
        delay_draw, error_draw = self._draws(decision.tx_id)
        wrong = error_draw < (self.fraud_mislabel_rate if fraud else self.legit_mislabel_rate)
        ts = decision.ts + self.delay_min_ms
        ts += int(delay_draw * (self.delay_max_ms - self.delay_min_ms + 1))
        label = Label(
            ts=ts,
            label=FRAUD if fraud != wrong else LEGIT,
            source=REVIEW_SOURCE,
            tx_id=decision.tx_id,
            user_id=decision.user_id,
        )
        heapq.heappush(self.scheduled, (ts, decision.tx_id, label))

    def due(self, ts: int) -> list[Label]:
        """The scheduled labels with ts <= `ts`, in ts order (then tx_id), handed out once."""
        out = []
        while self.scheduled and self.scheduled[0][0] <= ts:
            out.append(heapq.heappop(self.scheduled)[2])
        self.delivered += len(out)
        return out

    def _draws(self, tx_id: str) -> tuple[float, float]:
        """Two uniforms in [0, 1) of `tx_id`, keyed by the seed (independent of the sample's
        unkeyed hash)."""
        digest = hashlib.blake2b(tx_id.encode(), digest_size=16, key=self.key).digest()
        return (
            int.from_bytes(digest[:8], "big") * _UNIT,
            int.from_bytes(digest[8:], "big") * _UNIT,
        )
