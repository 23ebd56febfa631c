"""Each ring kind's say under the trusted classifier (`detectors.ring_say.RingKindSay`): a
kind whose payments' labels say fraud keeps saying so once the classifier has taken over
from the prior, in the risk and in what the friction budget counts as fraud; a kind that
flags legitimate users fades (issue #21)."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from detectors.base import Features
from detectors.ring_say import KIND_STATED, RingKindSay
from detectors.risk import RiskModel
from detectors.rule_say import RuleSay
from graph.evidence import ring_features

CASH_OUT = ring_features((0.9, ["ring:cash_out"]))
BATCH = ring_features((0.8, ["ring:signup_batch"]))
#: Regulars of a popular shop the graph took for a colluding ring: legitimate.
REGULARS = ring_features((0.7, ["ring:collusion"]))


def _world(rng: random.Random, n: int) -> list[tuple[Features, bool]]:
    """Log-odds linear in two features (about 5% fraud), a shop's sign-up drive (legitimate
    users the graph flags as a signup batch), and a popular shop's regulars it takes for a
    colluding ring."""
    out = []
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        fraud = rng.random() < 1 / (1 + math.exp(-(-3.6 + 1.5 * a - 1.0 * b)))
        x: Features = {"a": a, "b": b, **ring_features(None)}
        draw = rng.random()
        if not fraud and draw < 0.03:
            x.update(BATCH)
        elif not fraud and draw < 0.06:
            x.update(REGULARS)
        out.append((x, fraud))
    return out


def _trained(model: RiskModel, seed: int = 5, n: int = 6_000) -> RiskModel:
    """Every payment scored, then labelled if fraud or by a 5% chance (labels over-represent
    fraud)."""
    rng = random.Random(seed)
    for x, fraud in _world(rng, n):
        model.learn_scored(model.assess(x))
        if fraud or rng.random() < 0.05:
            model.learn_one(x, fraud)
    return model


def _kinds_say(model: RiskModel) -> RingKindSay:
    (say,) = [d for d in model.calibrated_signals or () if isinstance(d, RingKindSay)]
    return say


def _without_kinds(model: RiskModel) -> RiskModel:
    model.calibrated_signals = [
        d for d in model.calibrated_signals or () if not isinstance(d, RingKindSay)
    ]
    return model


def test_a_kind_the_classifier_does_not_see_keeps_its_say_in_risk_and_in_the_budget() -> None:
    """A cash-out ring found long after the classifier was trusted: its members look like
    model customers on every other feature, and the classifier, one weight per feature fitted
    to every label and calibrated to the traffic's prior, gives them a low q (on the random
    profile's tuning world 1, 20k, cash-out members' payments had q 0.07-0.27 for two
    weeks, all fraud). Once the kind's own labels say fraud, a member's risk is at least
    about the kind's precision among all payments, and so is the fraud probability the
    friction budget counts; the classifier alone stays where it was."""
    model = _trained(RiskModel())
    assert model.confidence() == 1.0 and model.prior_shift.fits > 0
    member = {"a": -1.5, "b": 1.5, **CASH_OUT}
    before = model.assess(member)
    assert before.q is not None and before.q < 0.01
    # Before a label of its kind a ring is as likely right as wrong (the ring's say's prior).
    assert before.risk == before.calibrated_risk == KIND_STATED
    say = _kinds_say(model)
    for _ in range(12):  # the kind's labels, as they arrive (the classifier's weights aside)
        say.learn_one(member, True)
    precision = say.precision("cash_out", model.prior_shift.shift)
    assert precision > 0.6
    after = model.assess(member)
    assert after.q == before.q and after.risk >= precision - 0.01
    assert after.calibrated_risk == after.risk  # what the budget counts as fraud
    # Outside a ring the kinds say nothing: the same classifier, the same risk.
    usual = {"a": 0.0, "b": 0.0, **ring_features(None)}
    assert (
        model.assess(usual).risk
        == _without_kinds(pickle.loads(pickle.dumps(model))).assess(usual).risk
    )


def test_a_kind_that_flags_legitimate_users_fades_and_a_batch_has_no_say() -> None:
    """The regulars taken for a colluding ring are all legitimate: the kind's precision falls
    far below the 1/2 it states before labels, and it lifts their risk by next to nothing. A
    signup batch (accounts made together: intent, not abuse yet) has no say at all: its
    members' risk is the classifier's."""
    model = _trained(RiskModel())
    plain = _trained(_without_kinds(RiskModel()))
    say = _kinds_say(model)
    assert say.legit["collusion"] > 5 and "collusion" not in say.fraud
    assert say.precision("collusion", model.prior_shift.shift) < KIND_STATED / 5
    regular = {"a": 0.0, "b": 0.0, **REGULARS}
    assert model.assess(regular).risk < plain.assess(regular).risk + 0.05
    assert "signup_batch" not in say.legit and say.codes(BATCH) == []
    drive = {"a": 0.0, "b": 0.0, **BATCH}
    assert model.assess(drive).risk == plain.assess(drive).risk


def test_the_kinds_say_pickles_with_the_model() -> None:
    model = _trained(RiskModel(), n=2_000)
    again = pickle.loads(pickle.dumps(model))
    member = {"a": -1.5, "b": 1.5, **CASH_OUT}
    assert again.assess(member).risk == model.assess(member).risk


def _scored(model: RiskModel, x: Features, n: int, *, withheld: float) -> None:
    """`n` payments of `x` scored, each with `withheld` of its rebate withheld at decision."""
    for _ in range(n):
        assessment = model.assess(x)
        model.learn_scored(assessment)
        model.learn_withheld(assessment, withheld)


def test_reviews_of_a_kinds_withheld_payments_prove_it_sooner_than_its_labels() -> None:
    """The review sample draws from what is withheld at random and labels it whatever its
    truth: a kind whose payments are all withheld and reviewed fraud says so at once (the
    label process, which seldom labels the legitimate, proves it only slowly); one whose
    withheld payments are reviewed legitimate fades. A review teaches the classifier too."""
    model = _trained(RiskModel())
    shift = model.prior_shift.shift
    member = {"a": -1.5, "b": 1.5, **CASH_OUT}
    _scored(model, member, 20, withheld=1.0)
    labelled = pickle.loads(pickle.dumps(model))
    for _ in range(12):
        _kinds_say(labelled).learn_one(member, True)
        model.learn_reviewed(member, True)
    by_labels = _kinds_say(labelled).precision("cash_out", shift)
    by_reviews = _kinds_say(model).precision("cash_out", shift)
    assert by_labels < 0.9 < by_reviews
    assert model.assess(member).risk >= by_reviews - 0.01
    assert model.reviewed_fraud == 12
    # A kind no label has spoken of yet (its say the stated 1/2), withheld and reviewed
    # legitimate: a shop's customers the graph took for brushers.
    customers = {"a": 0.0, "b": 0.0, **ring_features((0.7, ["ring:brushing"]))}
    fresh = _trained(RiskModel())
    _scored(fresh, customers, 20, withheld=1.0)
    assert _kinds_say(fresh).precision("brushing", shift) == KIND_STATED
    for _ in range(12):
        fresh.learn_reviewed(customers, False)
    assert _kinds_say(fresh).precision("brushing", shift) < 0.1


def test_reviews_speak_only_for_the_share_of_a_kinds_money_withheld() -> None:
    """A kind's withheld payments may be one ring's and its paid ones another's (a popular
    shop's regulars beside a real collusion ring): reviews that prove the withheld quarter
    fraud lift the kind's precision by a quarter of the way, not to theirs; with nothing
    withheld they say nothing, and a rule learns no review at all."""
    model = _trained(RiskModel())
    shift = model.prior_shift.shift
    member = {"a": -1.5, "b": 1.5, **CASH_OUT}
    _scored(model, member, 12, withheld=0.0)
    _scored(model, member, 4, withheld=1.0)
    say = _kinds_say(model)
    labelled = say.precision("cash_out", shift)
    for _ in range(30):
        model.learn_reviewed(member, True)
    reviewed = (30 + say.prior_labels * KIND_STATED) / (30 + say.prior_labels)
    expected = 0.25 * reviewed + 0.75 * labelled
    assert say.precision("cash_out", shift) == pytest.approx(expected, rel=1e-9)
    paid = _trained(RiskModel())
    _scored(paid, member, 16, withheld=0.0)
    for _ in range(30):
        paid.learn_reviewed(member, True)
    assert _kinds_say(paid).precision("cash_out", shift) == labelled
    rules = [d for d in model.calibrated_signals or () if isinstance(d, RuleSay)]
    assert rules and all(not rule.reviewed_fraud and not rule.withheld for rule in rules)


def test_a_kinds_say_checkpointed_before_reviews_restores_and_learns_them() -> None:
    say = RingKindSay()
    state = say.__getstate__()
    for name in ("reviewed_fraud", "reviewed_legit", "withheld"):
        del state[name]
    old = RingKindSay.__new__(RingKindSay)
    old.__setstate__(state)
    assert old.precision("cash_out") == KIND_STATED
    old.learn_beside(["cash_out"], 0.1, rebate_cents=10.0)
    old.learn_withheld(["cash_out"], 1.0, rebate_cents=10.0)
    old.learn_reviewed(CASH_OUT, True)
    assert old.reviewed_fraud == {"cash_out": 1.0} and old.precision("cash_out") > KIND_STATED
