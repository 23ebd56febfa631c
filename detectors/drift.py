"""Drift: has the score distribution moved, or has the model started to be wrong more often?

Two ADWIN detectors (River): one over every transaction's risk (the distribution's mean moves
when traffic or the model changes), one over the squared error (risk - outcome)^2 of each
labelled transaction, taken with the risk it was *scored* with. ADWIN keeps a window of
adaptive length and reports a change when two halves of it differ significantly, so it adapts
its memory to the rate of change. The classifier itself adapts continuously (online SGD, every
label); drift is exposed for the risk team: counts and the event time of the latest in
`/api/stats`, and a log line from the worker each time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from river import drift


def _adwin() -> Any:
    return drift.ADWIN(delta=0.002)


@dataclass(kw_only=True)
class DriftWatch:
    """ADWIN over the risk of every transaction and over the squared error of the labelled
    ones (module docstring).

    Examples
    --------
    A thousand transactions scored about 0.1, then the scores jump to about 0.6: the
    score distribution drifts once, a couple of dozen transactions after the jump.

    >>> import random
    >>> rng = random.Random(0)
    >>> watch = DriftWatch()
    >>> for ts in range(1_300):
    ...     _ = watch.scored(min(1.0, max(0.0, rng.gauss(0.1 if ts < 1_000 else 0.6, 0.05))), ts)
    >>> watch.score_drifts, watch.last_score_drift_ts, round(watch.summary()["mean_risk"], 2)
    (1, 1023, 0.6)
    """

    score: Any = field(default_factory=_adwin, repr=False)
    error: Any = field(default_factory=_adwin, repr=False)
    score_drifts: int = 0
    error_drifts: int = 0
    #: Event time (ms) of the latest drift of each kind.
    last_score_drift_ts: int | None = None
    last_error_drift_ts: int | None = None

    def scored(self, risk: float, ts: int) -> bool:
        """A transaction was scored; True if the score distribution just drifted.

        Parameters
        ----------
        risk : float
            Its risk.
        ts : int
            Its event time (ms), kept as the latest drift's when it drifted.

        Returns
        -------
        bool
            The score distribution just drifted.
        """
        self.score.update(risk)
        if self.score.drift_detected:
            self.score_drifts += 1
            self.last_score_drift_ts = ts
            return True
        return False

    def labelled(self, risk: float, fraud: bool, *, ts: int) -> bool:
        """A label arrived for a transaction scored `risk`; True if the error rate drifted.

        Parameters
        ----------
        risk : float
            The risk the transaction was scored with.
        fraud : bool
            The label.
        ts : int
            The label's event time (ms), kept as the latest drift's when it drifted.

        Returns
        -------
        bool
            The squared error's mean just drifted.
        """
        self.error.update((risk - (1.0 if fraud else 0.0)) ** 2)
        if self.error.drift_detected:
            self.error_drifts += 1
            self.last_error_drift_ts = ts
            return True
        return False

    def summary(self) -> dict[str, Any]:
        return {
            "score_drifts": self.score_drifts,
            "error_drifts": self.error_drifts,
            "last_score_drift_ts": self.last_score_drift_ts,
            "last_error_drift_ts": self.last_error_drift_ts,
            "mean_risk": self.score.estimation,
            "mean_squared_error": self.error.estimation,
        }
