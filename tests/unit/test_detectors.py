"""What each learning detector is for: calibrated fraud probabilities from weighted, delayed
labels; anomaly scores that single out the unusual before any label exists."""

from __future__ import annotations

import copy
import math
import random

import pytest
from river import preprocessing

from detectors.anomaly import AnomalyScore, GaussianAnomaly
from detectors.base import Features, Reading
from detectors.encoding import encode
from detectors.online import OnlineClassifier
from detectors.risk import ANOMALY_SCORE, RULE_RISK, RiskModel, Signal, default_signals
from graph.evidence import ring_features


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


def _rivers_reasons(model: OnlineClassifier, x: Features) -> list[str]:
    """`explain_one` on River's own path: the pipeline's scaled vector times its weights."""
    scaled = copy.deepcopy(model).scale(encode(x, scale=True))  # River's scaler fills gaps
    weights = model.model["LogisticRegression"].weights
    pushes = [(v * weights.get(n, 0.0), n) for n, v in scaled.items()]
    return [f"model:{n}" for push, n in sorted(pushes, reverse=True)[:3] if push > 0.5]


def test_the_folded_reasons_are_the_ones_rivers_pipeline_gives() -> None:
    """Reasons come from the fold (the scaler's statistics and the weights as of the last
    label), not from River's scaler: they must name what River's own path names."""
    rng = random.Random(11)
    model = OnlineClassifier()
    explained = 0
    for i, x in enumerate(_sparse_vectors(rng, 3_000)):
        if i % 3 == 0:  # learn a third (the fold is rebuilt), explain the rest
            model.learn_one(x, rng.random() < (0.7 if x["a"] > 4 else 0.05))
            continue
        reasons = model.explain_one(x)
        assert reasons == _rivers_reasons(model, x)
        explained += bool(reasons)
        # A key named like another's missing indicator: `encode` keeps one value for both.
        clash = {**x, "b_missing": 3.0}
        assert model.explain_one(clash) == _rivers_reasons(model, clash)
    assert explained > 100


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


class _Blocklist:
    """A prior detector a deployment might add: flags cards on a blocklist, and counts what
    it is taught."""

    name = "blocklist"

    def __init__(self) -> None:
        self.scored: list[Reading] = []
        self.labels: list[bool] = []

    def read(self, x: Features, *, log_odds_shift: float) -> Reading:
        listed = x.get("card_blocklisted") == 1.0
        return Reading(1.0 if listed else 0.0, ["blocklisted_card"] if listed else [], listed)

    def learn_scored(self, reading: Reading) -> None:
        self.scored.append(reading)

    def learn_label(self, x: Features, fraud: bool) -> None:
        self.labels.append(fraud)


def test_the_default_prior_is_the_documented_noisy_or_of_rules_anomaly_and_ring() -> None:
    model, rng = RiskModel(), random.Random(6)
    for _ in range(200):  # the anomaly detector learns the usual: its score moves off 0
        model.learn_one({"amount_cents": rng.uniform(500, 5_000), "user_tx_count_24h": 2.0})
    odd = {"amount_cents": 900_000.0, "user_tx_count_24h": 30.0}
    x = {**odd, **ring_features((0.8, ["ring:cash_out"]))}
    assessment = model.assess(x)
    r, a, g, _rule_say, _kind_say = (reading.score for reading in assessment.readings)
    assert r > 0.0 and a > 0.5 and g == pytest.approx(0.4)
    assert assessment.risk == 1.0 - (1.0 - r) * (1.0 - 0.5 * a) * (1.0 - g)  # bit for bit
    assert assessment.enriched == {**x, RULE_RISK: r, ANOMALY_SCORE: a}
    # The rules' reasons first, the anomaly detector's after (the classifier has none yet).
    assert assessment.reasons == ["velocity_user_24h", "unusual:amount_cents"]


def test_a_detector_added_to_the_signals_list_raises_the_prior_and_learns() -> None:
    """Adding a detector to the prior is adding it to the list: its score joins the noisy-OR
    at its weight, it becomes a classifier input if it has a `feature`, its reasons are
    given, and it learns after scoring and from labels; RiskModel is not touched."""
    blocklist = _Blocklist()
    extended = RiskModel(signals=[*default_signals(), Signal(blocklist, weight=0.8, feature="bl")])
    plain = RiskModel()
    clean = {"user_tx_count_24h": 20.0, "card_blocklisted": 0.0}
    listed = {"user_tx_count_24h": 20.0, "card_blocklisted": 1.0}
    assert extended.score_one(clean) == plain.score_one(clean)
    before = plain.assess(listed)
    after = extended.assess(listed)
    assert after.risk == pytest.approx(1.0 - (1.0 - before.risk) * (1.0 - 0.8))
    assert after.reasons == [*before.reasons, "blocklisted_card"]
    assert after.enriched["bl"] == 1.0
    extended.learn_scored(after)
    extended.learn_one(after.enriched, True)
    assert [reading.learnable for reading in blocklist.scored] == [True]
    assert blocklist.labels == [True] and extended.version == "risk.l1.t1"


def test_a_till_sign_ups_age_is_not_read_as_a_young_farm_accounts() -> None:
    """Fraud labels on minutes-old referred accounts, legit labels on old ones (as on a
    platform where legit young payments are almost never labelled): a till sign-up of the
    same age is not given the farm accounts' risk, by the classifier or the prior."""
    model, rng = RiskModel(), random.Random(3)
    for _ in range(400):
        young = rng.random() < 0.4
        age = rng.uniform(60, 3_600) if young else rng.uniform(30, 300) * 86_400
        x = {
            "user_account_age_s": age,
            "signup_to_first_payment_s": min(age, 600.0),
            "signed_up_at_till": 0.0,
            "amount_cents": rng.uniform(1_000, 5_000),
        }
        model.learn_one(x)
        model.learn_one(model.enrich(x), young)
    assert model.confidence() == 1.0
    farm = {"user_account_age_s": 300.0, "signup_to_first_payment_s": 300.0}
    farm |= {"amount_cents": 3_000.0}
    farm_risk = model.assess({**farm, "signed_up_at_till": 0.0})
    till_risk = model.assess({**farm, "signed_up_at_till": 1.0})
    assert "young_account" in farm_risk.reasons and "young_account" not in till_risk.reasons
    assert "model:user_account_age_s" not in till_risk.reasons
    # With the age features shared, the till account was at about 0.48 (the farm at 0.94).
    assert till_risk.risk < 0.2 and farm_risk.risk > 0.9
