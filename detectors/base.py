"""The one protocol every detector follows (river style).

A detector is pure (no I/O), never mutates its input, scores before it learns, and pickles
cleanly so the worker can checkpoint it. `score_one` returns a risk in [0, 1] (higher = more
likely fraud); supervised detectors learn from `learn_one(x, y)` with y True for fraud,
unsupervised ones ignore y.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

Features = dict[str, float | None]

#: The supervised classifiers a deployment may choose (`detectors.online.make_classifier`).
LEARNERS = ("logreg", "arf", "arf+logreg")


@runtime_checkable
class Detector(Protocol):
    #: Short name used in reason codes and model_version.
    name: str

    def score_one(self, x: Features) -> float: ...

    def learn_one(self, x: Features, y: bool | None = None) -> None: ...

    def explain_one(self, x: Features) -> list[str]:
        """Reason codes for the strongest contributors to this score, strongest first."""
        ...
