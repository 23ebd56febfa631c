"""Every weight that turns evidence into withheld money is learned from labels: the labels'
prior shift is estimated from the traffic, ring evidence enters the classifier as features,
and each ring kind's say is calibrated on the labels of payments scored with it."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import replace

import pytest

from detectors.prior_shift import PriorShift, _platt
from detectors.ring_say import RingSay
from detectors.risk import RiskModel
from graph.evidence import RING_FEATURES, ring_features
from rebate_guard.contract.validation import parse_label, parse_signup, parse_transaction
from rebate_guard.core.decider import ALL_FEATURE_NAMES, Decider, Scorer
from rebate_guard.core.policy import default_policy
from tests.factories import DAY, T0, label, signup, tx
from tests.unit.test_detectors import _logistic_world


def test_the_prior_estimate_moves_to_the_traffics_when_labels_over_represent_fraud() -> None:
    """80% of fraud and 2% of legitimate payments are labelled: the labels are mostly fraud,
    the traffic ~5%. The estimate starts from the labels' share and reaches the traffic's,
    and the shift the textbook correction log(0.02 / 0.8)."""
    rng = random.Random(11)
    model = RiskModel()
    stream = _logistic_world(rng, 30_000)
    for x, fraud in stream:
        model.learn_scored(model.assess(x))  # scored, then maybe labelled
        if rng.random() < (0.8 if fraud else 0.02):
            model.learn_one(x, fraud)
    estimate = model.prior_shift
    recent = [y for _, y in stream[-estimate.window :]]
    truth = sum(recent) / len(recent)
    assert estimate.labelled_prior is not None and estimate.labelled_prior > 0.5
    assert estimate.prior is not None and abs(estimate.prior - truth) < 0.3 * truth
    assert estimate.shift == pytest.approx(math.log(0.02 / 0.8), abs=0.6)


def test_the_em_recovers_the_prior_of_calibrated_scores() -> None:
    """Scores that are the exact posteriors under the labels' prior (0.5): the EM finds the
    traffic's prior (0.04) whatever the labels said."""
    rng = random.Random(2)
    shift = PriorShift(refit_every=10**9)
    frauds = 0
    for _ in range(shift.window):
        fraud = rng.random() < 0.04
        frauds += fraud
        # class-conditional N(+-1.5, 1): posterior log-odds at prior 1/2 is 3 x
        score = 3.0 * rng.gauss(1.5 if fraud else -1.5, 1.0)
        shift.observe(score)
    for _ in range(400):
        fraud = rng.random() < 0.5
        shift.labelled(3.0 * rng.gauss(1.5 if fraud else -1.5, 1.0), fraud)
    shift.fit()
    assert shift.slope == pytest.approx(1.0, abs=0.25)
    assert shift.prior == pytest.approx(frauds / shift.window, rel=0.15)


def test_the_prior_never_falls_below_the_share_labelled_fraud() -> None:
    """Traffic the calibrated classifier calls plainly legitimate drives the EM to a prior
    near 0; yet fraud labels arrived with a tenth of the window's transactions, so the
    traffic holds at least that much fraud and the estimate stays there. Labels that
    arrived before the window's transactions do not count."""
    shift = PriorShift(window=1_000, refit_every=10**9)
    for _ in range(300):
        shift.labelled(5.0, True)  # before the window: not counted
        shift.observe(-5.0)
    for i in range(1_000):
        shift.observe(-5.0)
        if i % 10 == 0:
            shift.labelled(5.0, True)
            shift.labelled(-5.0, False)
    shift.fit()
    assert shift.label_bounds() == pytest.approx((0.1, 0.1))
    assert shift.prior == pytest.approx(0.1)
    unfloored = PriorShift(window=1_000, refit_every=10**9)
    for score, fraud in shift.labels:
        unfloored.labelled(score, fraud)
    unfloored.fraud_label_marks.clear()
    unfloored.legit_label_marks.clear()
    for score in shift.log_odds:
        unfloored.observe(score)
    unfloored.fit()
    assert unfloored.prior is not None and unfloored.prior < 0.01


def test_the_prior_never_rises_above_the_share_not_labelled_legit() -> None:
    """Nearly every payment labelled, two frauds among the last labels: Platt's fit hardly
    separates and the traffic scores high, so the EM alone runs to a prior near 1. Legit
    labels arrived with 98% of the window's transactions, so at most 2% of it is fraud.
    (Fitted from two fraud labels on, below the floor of twenty, to reach the bound.)"""
    shift = PriorShift(window=1_000, label_window=1_000, refit_every=10**9, min_class_labels=1)
    rng = random.Random(5)
    for i in range(1_000):
        shift.observe(3.0)
        if i % 500 == 0:
            shift.labelled(rng.gauss(0.0, 1.0), True)
        if i % 50:  # 980 of the 1,000
            shift.labelled(rng.gauss(0.0, 1.0), False)
    shift.fit()
    assert shift.prior is not None and shift.prior == pytest.approx(0.02)


def test_no_fit_before_twenty_labels_of_each_class() -> None:
    """One mistaken fraud label and twenty legitimate ones, a classifier that has learnt
    nothing (the same log-odds everywhere): fitted, the EM runs to the legit labels' ceiling
    and calls nearly all traffic fraud. Below twenty labels of a class there is no fit; from
    twenty of each, the calibration is fitted."""

    def labelled(shift: PriorShift, frauds: int, legits: int) -> PriorShift:
        for i in range(2_000):
            shift.observe(0.0)
            if i < frauds:
                shift.labelled(0.0, True)
            if i < legits:
                shift.labelled(0.0, False)
        shift.fit()
        return shift

    eager = labelled(PriorShift(window=2_000, refit_every=10**9, min_class_labels=1), 1, 20)
    assert eager.fits == 1 and eager.prior is not None and eager.prior > 0.98
    assert labelled(PriorShift(window=2_000, refit_every=10**9), 1, 20).fits == 0
    assert labelled(PriorShift(window=2_000, refit_every=10**9), 20, 19).fits == 0
    assert labelled(PriorShift(window=2_000, refit_every=10**9), 20, 20).fits == 1
    # A checkpoint from before the floor goes on fitting as it did.
    state = dict(PriorShift().__dict__)
    del state["min_class_labels"]
    old = PriorShift.__new__(PriorShift)
    old.__setstate__(state)
    assert old.min_class_labels == 1


def test_platt_finds_the_calibration_when_the_log_odds_are_far_from_the_labels_scale() -> None:
    """A classifier whose log-odds sit far below 0 even on the labelled fraud: Newton's full
    step from (1, 0) overshoots there, and undamped it ran off to non-finite values and the
    fit fell back to (1, 0), the calibration unused."""
    rng = random.Random(0)
    labels: deque[tuple[float, bool]] = deque()
    for _ in range(1_000):
        fraud = rng.random() < 0.55
        labels.append((rng.gauss(-8.0 if fraud else -14.0, 2.0), fraud))
    slope, intercept = _platt(labels)
    assert (slope, intercept) != (1.0, 0.0)
    calibrated = [1.0 / (1.0 + math.exp(-(slope * score + intercept))) for score, _ in labels]
    share = sum(fraud for _, fraud in labels) / len(labels)
    assert sum(calibrated) / len(calibrated) == pytest.approx(share, abs=0.01)


def test_pickled_prior_shift_goes_on_identically() -> None:
    import pickle

    rng = random.Random(4)
    a = PriorShift(window=500, refit_every=100)
    for _ in range(50):
        a.labelled(rng.gauss(0, 2), rng.random() < 0.5)
    for _ in range(250):
        a.observe(rng.gauss(-2, 2))
    b = pickle.loads(pickle.dumps(a))
    for _ in range(300):
        score = rng.gauss(-2, 2)
        a.observe(score)
        b.observe(score)
    assert (a.shift, a.prior, a.slope, a.fits) == (b.shift, b.prior, b.slope, b.fits)


def test_a_ring_kind_that_flags_legit_users_loses_its_say_and_another_keeps_it() -> None:
    say = RingSay()
    collusion = ring_features((0.9, ["ring:collusion"]))
    cash_out = ring_features((0.9, ["ring:cash_out"]))
    # Before any label: the uninformative prior, half the ring's score.
    assert say.score(collusion) == say.score(cash_out) == pytest.approx(0.45)
    for n in range(30):
        say.learn_one(collusion, n % 10 == 0)  # mostly legitimate
        say.learn_one(cash_out, n % 10 != 0)  # mostly fraud
    assert say.precision("collusion") < 0.15 < 0.85 < say.precision("cash_out")
    assert say.score(collusion) < 0.15 < 0.75 < say.score(cash_out)
    # Labels over-represent fraud: a labelled legitimate payment stands for more of them.
    assert say.precision("cash_out", -2.0) < say.precision("cash_out")
    assert say.score(ring_features(None)) == 0.0


def _labelled_rings(model: RiskModel) -> Scorer:
    """A scorer whose labels say collusion-ring payments are legitimate and cash-out-ring
    payments fraud (rings as the graph would report them), from the platform's label
    process: no review sample (its reviews teach the classifier alone)."""
    policy = default_policy()
    assert policy.budget is not None
    scorer = Scorer(
        decider=Decider(policy=replace(policy, budget=replace(policy.budget, review_share=0.0)))
    )
    scorer.decider.model = model
    rings = {"c": (0.9, ["ring:collusion"]), "k": (0.9, ["ring:cash_out"])}
    for n in range(40):
        for kind, ring in rings.items():
            user = f"{kind}{n}"
            scorer.apply(parse_signup(signup(user, T0 - 30 * DAY, device_id=user)), 0)
            event = parse_transaction(tx(f"{user}-t", T0 + n, user_id=user, device_id=user))
            scorer.decider.decide(event, scorer.features.vector(event), decided_at=0, ring=ring)
            verdict = "fraud" if kind == "k" else "legit"
            scorer.apply(parse_label(label(f"{user}-t", T0 + DAY + n, label=verdict)), 0)
    return scorer


def test_labels_of_ring_members_move_the_weight_of_the_next_ring_payment() -> None:
    """The kind whose members' labels are legitimate stops lowering the weight; the kind
    whose members' labels are fraud keeps it low; the reasons still name the ring."""
    model = RiskModel(trust_after_fraud_labels=10**9)  # the prior's part: the ring's say
    scorer = _labelled_rings(model)
    (say,) = (s.detector for s in model.signals if isinstance(s.detector, RingSay))
    assert say.legit == {"collusion": 40} and say.fraud == {"cash_out": 40}

    def probe(user: str, ring: tuple[float, list[str]] | None) -> tuple[float, list[str]]:
        scorer.apply(parse_signup(signup(user, T0 - 30 * DAY, device_id=user)), 0)
        event = parse_transaction(tx(f"{user}-p", T0 + 2 * DAY, user_id=user, device_id=user))
        decision, _ = scorer.decider.decide(
            event, scorer.features.vector(event), decided_at=0, ring=ring
        )
        return decision.trust_weight, decision.reasons

    clean, _ = probe("nobody", None)
    collusion, reasons_c = probe("c-new", (0.9, ["ring:collusion"]))
    cash_out, reasons_k = probe("k-new", (0.9, ["ring:cash_out"]))
    assert cash_out < 0.3 < clean - 0.05 < collusion <= clean
    assert "ring:collusion" in reasons_c and "ring:cash_out" in reasons_k


def test_ring_features_are_in_the_vector_a_label_trains_on() -> None:
    assert ALL_FEATURE_NAMES[-len(RING_FEATURES) :] == RING_FEATURES
    assert "ring_score" in RING_FEATURES and "ring_collusion" in RING_FEATURES
    scorer = Scorer()
    scorer.apply(parse_signup(signup("u1", T0 - 30 * DAY)), 0)
    event = parse_transaction(tx("t", T0))
    decision, x = scorer.decider.decide(
        event, scorer.features.vector(event), decided_at=0, ring=(0.7, ["ring:brushing"])
    )
    assert x["ring_score"] == 0.7 and x["ring_brushing"] == 1.0
    assert all(x[f] == 0.0 for f in RING_FEATURES if f not in ("ring_score", "ring_brushing"))
    assert "ring:brushing" in decision.reasons
    assert scorer.decider.remembered["t"][1]["ring_brushing"] == 1.0  # what a label learns
    other = parse_transaction(tx("t2", T0 + 1))
    _, plain = scorer.decider.decide(other, scorer.features.vector(other), decided_at=0)
    assert all(plain[f] == 0.0 for f in RING_FEATURES)
