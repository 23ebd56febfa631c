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


@dataclass
class DriftWatch:
    score: Any = field(default_factory=_adwin, repr=False)
    error: Any = field(default_factory=_adwin, repr=False)
    score_drifts: int = 0
    error_drifts: int = 0
    #: Event time (ms) of the latest drift of each kind.
    last_score_drift_ts: int | None = None
    last_error_drift_ts: int | None = None

    def scored(self, risk: float, ts: int) -> bool:
        """A transaction was scored; True if the score distribution just drifted."""
        self.score.update(risk)
        if self.score.drift_detected:
            self.score_drifts += 1
            self.last_score_drift_ts = ts
            return True
        return False

    def labelled(self, risk: float, fraud: bool, ts: int) -> bool:
        """A label arrived for a transaction scored `risk`; True if the error rate drifted."""
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
