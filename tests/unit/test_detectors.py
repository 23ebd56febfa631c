"""What each learning detector is for: calibrated fraud probabilities from weighted, delayed
labels; anomaly scores that single out the unusual before any label exists."""

from __future__ import annotations

import math
import random

import pytest
from river import preprocessing

from detectors.anomaly import AnomalyScore, GaussianAnomaly
from detectors.base import Features
from detectors.encoding import encode
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


def _sparse_vectors(rng: random.Random, n: int) -> list[Features]:
    """Vectors with missing values, NaN and a feature that appears only later."""
    out: list[Features] = []
    for i in range(n):
        x: Features = {
            "a": rng.gauss(2, 3),
            "b": None if rng.random() < 0.3 else rng.expovariate(0.1),
            "c": float("nan") if rng.random() < 0.1 else rng.random(),
        }
        if i > n // 2:
            x["late"] = rng.gauss(0, 1)
        out.append(x)
    return out


def test_the_folded_classifier_scores_what_rivers_pipeline_scores() -> None:
    """Scoring folds scaler and weights into one pass; it must give River's own numbers."""
    rng = random.Random(9)
    model = OnlineClassifier()
    data = _sparse_vectors(rng, 3_000)
    for i, x in enumerate(data):
        if i % 3 == 0:  # learn a third, score the rest as they come (the fold is rebuilt)
            model.learn_one(x, rng.random() < 0.2 + 0.1 * (x["a"] > 4))
            continue
        river = model.proba(model.scale(encode(x, scale=True)))
        assert model.predict_proba_one(x) == pytest.approx(river, rel=1e-9, abs=1e-12)
    assert model.n_fraud > 50


def test_the_gaussian_detector_keeps_rivers_running_statistics_bit_for_bit() -> None:
    names = ("a", "b", "c", "late")
    detector = GaussianAnomaly(features=names)
    scaler = preprocessing.StandardScaler()
    for x in _sparse_vectors(random.Random(10), 2_000):
        view = detector.view(x)
        present = {n: v for n, v in zip(names, view, strict=True) if v is not None}
        expected_z = scaler.transform_one(present)
        _, z = detector.score_view(view)
        assert {n: v for n, v in zip(names, z, strict=True) if v is not None} == expected_z
        detector.learn_view(view)
        scaler.learn_one(present)
    assert detector.means == [scaler.means[n] for n in names]
    assert detector.variances == [scaler.vars[n] for n in names]
    assert detector.counts == [scaler.counts[n] for n in names]


def test_the_trusted_classifier_is_moved_by_the_estimated_shift_and_the_rules_are_not() -> None:
    """Labels over-represent fraud, so once it is trusted the classifier's log-odds are
    calibrated and shifted by the prior-shift estimate (`detectors.prior_shift`, no set
    constant); before any fraud label the risk is the rules' and the anomaly score's alone."""
    from detectors.risk import RiskModel

    x = {"a": 2.0, "b": -1.0, "noise": 0.5}
    model = RiskModel()
    before = model.score_one(x)
    rng = random.Random(5)
    for features, fraud in _logistic_world(rng, 4_000):
        model.learn_one(features, None)
        if fraud or rng.random() < 0.05:  # fraud labelled far more often than legit
            model.learn_one(features, fraud)
    assert model.confidence() == 1.0 and model.prior_shift.fits > 0
    shift = model.prior_shift
    assert shift.shift < -1.0  # labels over-represent fraud: the classifier is moved down
    p = model.classifier.predict_proba_one(model.enrich(x))
    logit = math.log(p / (1 - p))
    expected = 1 / (1 + math.exp(-(shift.slope * logit + shift.intercept + shift.shift)))
    assert model.score_one(x) == pytest.approx(expected)
    assert RiskModel().score_one(x) == before  # no labels: the prior only
