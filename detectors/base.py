"""The protocols detectors follow (river style).

A detector (`Detector`) is pure (no I/O), never mutates its input, scores before it learns,
and pickles cleanly so the worker can checkpoint it. `score_one` returns a risk in [0, 1]
(higher = more likely fraud); supervised detectors learn from `learn_one(x, y)` with y True
for fraud, unsupervised ones ignore y. Each declares the parameter sets the detector contract
tests it with (`_unit_test_params`, as river's estimators do); `detectors.registry` finds them
all, so a new detector is contract-tested without being listed anywhere.

A detector that takes part in the risk model's prior (`detectors.risk`) also follows
`PriorDetector`: it reads a transaction once (score, reasons, and what it will learn from),
and learns after scoring and from labels as that model tells it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

Features = dict[str, float | None]

#: The supervised classifiers a deployment may choose (`detectors.online.make_classifier`).
LEARNERS = ("logreg", "arf", "arf+logreg")


@runtime_checkable
class Detector(Protocol):
    #: Short name used in reason codes and model_version.
    name: str

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        """Keyword arguments to build it with for the contract tests, one dict per set."""
        ...

    def score_one(self, x: Features) -> float: ...

    def learn_one(self, x: Features, y: bool | None = None) -> None: ...

    def explain_one(self, x: Features) -> list[str]:
        """Reason codes for the strongest contributors to this score, strongest first."""
        ...


class Reading(NamedTuple):
    """What a `PriorDetector` makes of one transaction (`PriorDetector.read`)."""

    #: Its risk in [0, 1].
    score: float
    #: Its reason codes, strongest first.
    reasons: list[str]
    #: What it learns from once the transaction is scored (`learn_scored`), worked out while
    #: reading it so that learning does not repeat the work; None: nothing to learn.
    learnable: Any = None


class PriorDetector(Protocol):
    """A detector in `detectors.risk.RiskModel`'s prior: read once per transaction (the risk
    model's current log-odds shift given, for a detector whose say is a precision among all
    payments), then `learn_scored` with that reading, and `learn_label` when a label
    arrives for the vector it was scored with."""

    name: str

    def read(self, x: Features, *, log_odds_shift: float) -> Reading: ...

    def learn_scored(self, reading: Reading) -> None: ...

    def learn_label(self, x: Features, fraud: bool) -> None: ...
