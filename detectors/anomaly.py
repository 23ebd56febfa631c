"""An unsupervised anomaly detector: useful from the first minute, before any label arrives.

River's Half-Space Trees over min-max-scaled features (`detectors.encoding`): a transaction
whose features fall where few recent ones did scores high. It learns from every transaction
it scores (after scoring it), so it follows the traffic as it drifts. Scores are in [0, 1] but
not probabilities; `detectors.risk` decides how much they count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from river import anomaly, compose, preprocessing

from detectors.base import Features
from detectors.encoding import encode


@dataclass
class AnomalyScore:
    n_trees: int = 10
    height: int = 8
    window_size: int = 250
    seed: int = 42
    name: str = "hst"
    model: Any = field(init=False, repr=False)
    n_learned: int = 0

    def __post_init__(self) -> None:
        trees = anomaly.HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=self.window_size,
            seed=self.seed,
        )
        self.model = compose.Pipeline(preprocessing.MinMaxScaler(), trees)

    def score_one(self, x: Features) -> float:
        return float(self.model.score_one(encode(x)))

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Learns the transaction's features; the label, if any, is not used."""
        self.model.learn_one(encode(x))
        self.n_learned += 1

    def explain_one(self, x: Features) -> list[str]:
        return ["anomaly"] if self.score_one(x) > 0.8 else []
