"""A supervised online classifier that learns from delayed labels, with calibrated output.

River's logistic regression on standardised features (`detectors.encoding`). Fraud is a few
percent of transactions and the labelled fraud fewer still, so each fraud example is learned
with weight `fraud_weight`. Weighting multiplies the odds the model learns by that weight, so
the raw probability p is mapped back with the prior-shift correction

    p_calibrated = p / (p + fraud_weight * (1 - p)),

which makes the output a probability again (checked for calibration in the tests).
`explain_one` names the features that pushed this score up the most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from river import compose, linear_model, optim, preprocessing

from detectors.base import Features
from detectors.encoding import encode


@dataclass
class OnlineClassifier:
    fraud_weight: float = 5.0
    learning_rate: float = 0.01
    l2: float = 1e-4
    name: str = "logreg"
    model: Any = field(init=False, repr=False)
    n_learned: int = 0
    n_fraud: int = 0
    _weights_cache: tuple[int, dict[str, float]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        regression = linear_model.LogisticRegression(optim.SGD(self.learning_rate), l2=self.l2)
        self.model = compose.Pipeline(preprocessing.StandardScaler(), regression)

    def predict_proba_one(self, x: Features) -> float:
        return self.proba(self.scale(encode(x)))

    def scale(self, encoded: dict[str, float]) -> dict[str, float]:
        """Standardised inputs (`predict_proba_one` in two steps, to reuse them)."""
        scaled: dict[str, float] = self.model["StandardScaler"].transform_one(encoded)
        return scaled

    def proba(self, scaled: dict[str, float]) -> float:
        raw = self.model["LogisticRegression"].predict_proba_one(scaled).get(True, 0.0)
        return raw / (raw + self.fraud_weight * (1.0 - raw)) if raw < 1.0 else 1.0

    def score_one(self, x: Features) -> float:
        return self.predict_proba_one(x)

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        if y is None:
            return  # unlabelled: nothing to learn for a supervised model
        self.model.learn_one(encode(x), bool(y), w=self.fraud_weight if y else 1.0)
        self.n_learned += 1
        self.n_fraud += bool(y)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_weights_cache"] = None  # derived; scoring must not change what pickles
        return state

    def _weights(self) -> dict[str, float]:
        # River hands out a copy of the weights; they change only when a label is learned.
        cached = self._weights_cache
        if cached is None or cached[0] != self.n_learned:
            cached = self._weights_cache = (
                self.n_learned,
                dict(self.model["LogisticRegression"].weights),
            )
        return cached[1]

    def explain_one(self, x: Features, top: int = 3) -> list[str]:
        return self.explain_scaled(self.scale(encode(x)), top)

    def explain_scaled(self, scaled: dict[str, float], top: int = 3) -> list[str]:
        """Features whose (standardised value x weight) raised the log-odds by more than
        0.5, the largest first."""
        weights = self._weights()
        pushes = []
        for name, value in scaled.items():
            push = value * weights.get(name, 0.0)
            if push > 0.5:
                pushes.append((push, name))
        pushes.sort(reverse=True)
        return [f"model:{name}" for _, name in pushes[:top]]
