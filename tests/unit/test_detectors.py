"""What each learning detector is for: calibrated fraud probabilities from weighted, delayed
labels; anomaly scores that single out the unusual before any label exists."""

from __future__ import annotations

import math
import random

import pytest

from detectors.anomaly import AnomalyScore, GaussianAnomaly
from detectors.base import Features
from detectors.online import OnlineClassifier


def _logistic_world(rng: random.Random, n: int) -> list[tuple[Features, bool]]:
    """A known truth: log-odds linear in two features, about 5% positives."""
    out = []
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        p = 1 / (1 + math.exp(-(-3.6 + 1.5 * a - 1.0 * b)))
        out.append(({"a": a, "b": b, "noise": rng.random()}, rng.random() < p))
    return out


def test_weighted_learning_still_gives_calibrated_probabilities() -> None:
    rng = random.Random(3)
    model = OnlineClassifier(fraud_weight=5.0)
    for x, y in _logistic_world(rng, 30_000):
        model.learn_one(x, y)
    test = _logistic_world(rng, 20_000)
    predicted = [model.predict_proba_one(x) for x, _ in test]
    observed = [y for _, y in test]
    base = sum(observed) / len(observed)
    assert 0.03 < base < 0.08
    assert abs(sum(predicted) / len(predicted) - base) < 0.01
    # Reliability where it matters: the riskiest tenth.
    ranked = sorted(zip(predicted, observed, strict=True), reverse=True)[: len(test) // 10]
    mean_p = sum(p for p, _ in ranked) / len(ranked)
    rate = sum(y for _, y in ranked) / len(ranked)
    assert abs(mean_p - rate) < 0.25 * rate, (mean_p, rate)
    # Without the correction the weighted model would overstate risk several-fold.
    assert model.n_fraud > 0 and model.n_learned == 30_000


def test_explanations_name_the_features_that_raised_the_score() -> None:
    rng = random.Random(4)
    model = OnlineClassifier()
    for x, y in _logistic_world(rng, 20_000):
        model.learn_one(x, y)
    assert model.explain_one({"a": 3.0, "b": 0.0, "noise": 0.5})[0] == "model:a"
    assert "model:a" not in model.explain_one({"a": -3.0, "b": 0.0, "noise": 0.5})


@pytest.mark.parametrize(
    "make",
    [lambda: AnomalyScore(seed=1), lambda: GaussianAnomaly(features=("amount", "count"))],
    ids=["hst", "gaussian"],
)
def test_anomalies_score_above_the_usual_traffic_before_any_label(make) -> None:
    rng = random.Random(5)
    detector = make()
    for _ in range(3_000):
        x: Features = {"amount": rng.gauss(5_000, 1_000), "count": rng.randint(0, 5)}
        detector.learn_one(x)
    usual = [
        detector.score_one({"amount": rng.gauss(5_000, 1_000), "count": rng.randint(0, 5)})
        for _ in range(300)
    ]
    odd = [
        detector.score_one({"amount": rng.uniform(20_000, 40_000), "count": rng.randint(20, 40)})
        for _ in range(300)
    ]
    wins = sum(o > u for o, u in zip(sorted(odd), sorted(usual), strict=True))
    assert wins > 0.9 * len(odd)
