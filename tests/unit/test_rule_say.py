"""Each rule's say (`detectors.rule_say`): its precision learned from the labels of payments
it fired on, counted beside the trusted classifier so that a rare precise rule is not drowned
(issue #21), and fading for a rule that fires on legitimate payments."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detectors import rule_say
from detectors.base import Features
from detectors.precision import label_precision, traffic_precision
from detectors.prior_shift import PriorShift
from detectors.risk import RiskModel
from detectors.rule_say import RuleSay
from detectors.rules import RuleScore
from rebate_guard.contract.records import Transaction
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from streams.shards import load_checkpoint

#: A rare abuse only a rule sees: points passed in from 6-8 users, where legitimate users get
#: points from up to five relatives (the rule `points_collector` fires above five).
COLLECTED = 7.0


def _world(rng: random.Random, n: int, *, rare: float = 0.006) -> list[tuple[Features, bool]]:
    """Log-odds linear in two features (about 5% fraud), and a rare abuse that only the rule
    `points_collector` tells apart: its payments look like the safest customers on every
    other feature, and its feature's values are next to the legitimate ones (0-5 against
    6-8)."""
    out = []
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        fraud = rng.random() < 1 / (1 + math.exp(-(-3.6 + 1.5 * a - 1.0 * b)))
        x: Features = {"a": a, "b": b, "points_givers_30d": float(rng.randint(0, 5))}
        if rng.random() < rare:  # an accomplice: on the other features, a model customer
            fraud = True
            x.update(a=rng.gauss(-1.5, 0.5), b=rng.gauss(1.5, 0.5))
            x["points_givers_30d"] = float(rng.randint(6, 8))
        out.append((x, fraud))
    return out


World = Callable[[random.Random, int], list[tuple[Features, bool]]]


def _rules_say(model: RiskModel) -> RuleSay:
    """The rules' say among the model's calibrated signals (beside the ring kinds')."""
    (say,) = [d for d in model.calibrated_signals or () if isinstance(d, RuleSay)]
    return say


def _trained(
    model: RiskModel, seed: int = 5, n: int = 6_000, world: World | None = None
) -> RiskModel:
    """Every payment of `world` (`_world`) scored, then labelled if fraud or by a 5% chance
    (labels over-represent fraud)."""
    rng = random.Random(seed)
    for x, fraud in (world or _world)(rng, n):
        model.learn_scored(model.assess(x))
        if fraud or rng.random() < 0.05:
            model.learn_one(x, fraud)
    return model


def test_a_rare_precise_rule_keeps_its_say_once_the_classifier_is_trusted() -> None:
    """Without the say the trusted classifier's q is all there is, and it has learnt the rare
    rule from its combined score only; with it the payment's risk is at least the rule's
    precision among all payments, which its labels (all fraud, and no legitimate one where a
    twentieth of legitimate payments is labelled) put well above q."""
    model, plain = _trained(RiskModel()), _trained(RiskModel(calibrated_signals=[]))
    assert model.confidence() == 1.0 and model.prior_shift.fits > 0
    say = _rules_say(model)
    assert isinstance(say, RuleSay) and say.legit == {} and say.fraud["points_collector"] > 20
    precision = say.precision("points_collector", model.prior_shift.shift)
    assert precision > 0.6
    probe = {"a": -1.5, "b": 1.5, "points_givers_30d": COLLECTED}
    assessment = model.assess(probe)
    assert assessment.risk == precision == assessment.calibrated_risk  # the friction budget's
    assert plain.assess(probe).risk < precision - 0.1
    # Where no rule fires the say changes nothing: the same classifier, the same risk.
    usual = {"a": 0.0, "b": 0.0, "points_givers_30d": 3.0}
    assert model.assess(usual).risk == plain.assess(usual).risk


def test_a_rule_firing_on_legitimate_payments_loses_its_say() -> None:
    """A young account is mostly legitimate here: the rule's say falls below what it states
    alone, and further once legitimate labels count for the unlabelled legitimate traffic."""
    say, rng = RuleSay(), random.Random(3)
    young = {"user_account_age_s": 600.0}
    stated = say.stated("young_account")
    frauds = 0
    for _ in range(200):
        fraud = rng.random() < 0.2
        frauds += fraud
        say.learn_one(young, fraud)
    labelled = say.precision("young_account")
    assert labelled == pytest.approx((frauds + 2 * stated) / 202, abs=1e-3)
    # Among the labels a fifth is fraud, above the stated 0.12; among all payments, with
    # each legitimate label standing for e^3 of them, far below it.
    assert say.precision("young_account", log_odds_shift=-3.0) < stated / 2 < labelled
    assert say.score(young, log_odds_shift=-3.0) == say.precision("young_account", -3.0)


def test_the_say_waits_for_the_prior_shift() -> None:
    """Before the shift is estimated a rule's precision is one among the fraud-heavy labels,
    not the traffic's: the risk is the model's without the say, bit for bit."""
    never = 10**9
    model = _trained(RiskModel(prior_shift=PriorShift(refit_every=never)), n=2_000)
    plain = _trained(
        RiskModel(prior_shift=PriorShift(refit_every=never), calibrated_signals=[]), n=2_000
    )
    assert model.prior_shift.fits == 0 and model.confidence() == 1.0
    probe = {"a": 0.0, "b": 0.0, "points_givers_30d": COLLECTED}
    assert model.assess(probe).risk == plain.assess(probe).risk
    assert model.assess(probe).calibrated_risk == 0.0


def test_the_say_is_the_strongest_firing_rules_and_never_lowers_risk() -> None:
    """Monotone: risk is the largest of the blend and the say, so a stronger say never
    lowers it; the say of a payment is its most precise firing rule's."""
    model = _trained(RiskModel())
    say = _rules_say(model)
    assert isinstance(say, RuleSay)
    both = {"a": 0.0, "b": 0.0, "points_givers_30d": COLLECTED, "user_account_age_s": 600.0}
    shift = model.prior_shift.shift
    assert say.score(both, shift) == max(
        say.precision("points_collector", shift), say.precision("young_account", shift)
    )
    before = model.assess(both).risk
    say.fraud["points_collector"] += 50
    assert model.assess(both).risk >= before


def test_the_say_shares_the_models_rules_and_pickles_with_them() -> None:
    model = _trained(RiskModel(), n=1_000)
    again = pickle.loads(pickle.dumps(model))
    say = _rules_say(again)
    assert isinstance(say, RuleSay) and isinstance(again.signals[0].detector, RuleScore)
    assert say.rules is again.signals[0].detector  # one rule set: the team's edits reach both
    probe = {"a": 0.0, "b": 0.0, "points_givers_30d": COLLECTED}
    assert again.assess(probe).risk == model.assess(probe).risk


@pytest.mark.parametrize("code", [rule.code for rule in RuleScore().rules])
def test_every_rule_states_its_score_alone(code: str) -> None:
    """Before any label of its payments a rule says exactly what it states, at any shift
    (the grid cut the prior's tail off: `refund`'s 0.0573 read 0.0580)."""
    rules = RuleScore()
    (rule,) = (r for r in rules.rules if r.code == code)
    stated = 1 / (1 + math.exp(-(rules.base_log_odds + rule.log_odds)))
    say = RuleSay(rules=rules)
    assert say.stated(code) == stated
    for shift in (0.0, -3.0, 2.0):
        assert say.precision(code, shift) == stated


def _reference_precision(fraud: int, legit: int, prior_mean: float, shift: float) -> float:
    """The posterior mean by brute force: a plain sum over log-odds from -1,500 to 1,500 in
    steps of 0.01, wide enough that no tail is cut for these counts (the prior's thinnest,
    e^(0.11 t), is 1e-72 at -1,500)."""
    t = np.linspace(-1_500.0, 1_500.0, 300_001)
    log_p, log_not_p = -np.logaddexp(0.0, -t), -np.logaddexp(0.0, t)
    log_weight = (
        2.0 * prior_mean * log_p
        + 2.0 * (1.0 - prior_mean) * log_not_p
        - fraud * np.logaddexp(0.0, shift - t)
        - legit * np.logaddexp(0.0, t - shift)
    )
    weight = np.exp(log_weight - log_weight.max())
    return float((weight * np.exp(log_p)).sum() / weight.sum())


REFUND_STATED = 1 / (1 + math.exp(3.5 - 0.7))


@pytest.mark.parametrize(("fraud", "legit"), [(0, 1), (0, 3), (0, 50), (0, 2_000), (1, 0), (7, 2)])
def test_the_precision_is_exact_where_the_prior_has_a_heavy_tail(fraud: int, legit: int) -> None:
    """A rule stating little (`refund`: a prior Beta(0.11, 1.89)) and no fraud label: the
    posterior's tail on the log-odds is e^(0.11 t), which no finite grid holds. Without a
    shift the posterior is the conjugate Beta's, whose mean is known; with one it is
    checked against a sum over a grid 37 times as wide."""
    exact = traffic_precision(
        fraud, legit, prior_mean=REFUND_STATED, prior_labels=2.0, log_odds_shift=0.0
    )
    assert exact == pytest.approx((fraud + 2 * REFUND_STATED) / (fraud + legit + 2), rel=1e-12)
    for shift in (-3.3, 1.5, -45.0):
        got = traffic_precision(
            fraud, legit, prior_mean=REFUND_STATED, prior_labels=2.0, log_odds_shift=shift
        )
        assert got == pytest.approx(
            _reference_precision(fraud, legit, REFUND_STATED, shift), rel=1e-8
        )


def test_a_rules_say_is_computed_once_per_shift_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The posterior (a sum over a grid) is computed again only when the shift or the rule's
    counts change, also counts changed from outside `learn_one`; what it says is what an
    uncached say says."""
    computed: list[tuple[int, int, float]] = []

    def counting(fraud: int, legit: int, **kwargs: float) -> float:
        computed.append((fraud, legit, kwargs["log_odds_shift"]))
        return traffic_precision.__wrapped__(fraud, legit, **kwargs)

    monkeypatch.setattr(rule_say, "traffic_precision", counting)
    say, young = RuleSay(), {"user_account_age_s": 600.0}
    say.learn_one(young, True)
    first = [say.score(young, -2.0) for _ in range(5)]
    assert computed == [(1, 0, -2.0)] and len(set(first)) == 1
    say.learn_one(young, False)
    say.score(young, -2.0)
    say.fraud["young_account"] += 3
    fresh = say.score(young, -2.0)
    say.score(young, -1.0)
    assert computed[1:] == [(1, 1, -2.0), (4, 1, -2.0), (4, 1, -1.0)]
    uncached = traffic_precision.__wrapped__(
        4, 1, prior_mean=say.stated("young_account"), prior_labels=2.0, log_odds_shift=-2.0
    )
    assert fresh == uncached
    # The cache is not part of its state: a pickled say is its counts and rules.
    again = pickle.loads(pickle.dumps(say))
    assert again == say and "_says" not in pickle.dumps(say).decode("latin-1")
    assert again.score(young, -2.0) == fresh


def test_no_legitimate_label_is_weak_evidence_where_few_are_labelled() -> None:
    """With no shift the posterior is the conjugate Beta's, the ring's say's formula. Where
    legitimate payments are labelled e^3.3 times less often than fraud, 33 fraud labels and
    no legitimate one leave the precision uncertain: the shortcut that counts a legitimate
    label as e^3.3 of them, and no label as none, says 0.95 (on tuning world 2 of the random
    profile the rule `young_account` so got a say of 0.95 on payments 66% fraud and withheld
    142 legitimate ones); the posterior says 0.61."""
    for fraud, legit in ((0, 0), (6, 1), (40, 160)):
        exact = traffic_precision(
            fraud, legit, prior_mean=0.3, prior_labels=2.0, log_odds_shift=0.0
        )
        shortcut = label_precision(
            fraud, legit, prior_fraud=0.6, prior_legit=1.4, log_odds_shift=0.0
        )
        assert exact == pytest.approx(shortcut, rel=1e-6)
    exact = traffic_precision(33, 0, prior_mean=0.119, prior_labels=2.0, log_odds_shift=-3.3)
    shortcut = label_precision(33, 0, prior_fraud=0.238, prior_legit=1.762, log_odds_shift=-3.3)
    assert shortcut > 0.94 and 0.55 < exact < 0.65
    # More fraud labels, or fewer legitimate ones, never lower it: the say is monotone.
    assert (
        traffic_precision(34, 0, prior_mean=0.119, prior_labels=2.0, log_odds_shift=-3.3)
        > exact
        > traffic_precision(33, 1, prior_mean=0.119, prior_labels=2.0, log_odds_shift=-3.3)
    )


def test_a_checkpointed_decider_decides_as_the_one_that_was_saved(tmp_path: Path) -> None:
    """A decider pickled mid-world (as a user shard's checkpoint holds it) and loaded as a
    worker loads a checkpoint keeps its rules' say, with its counts, and decides the rest of
    the world exactly as the one that went on: the say's cache, not pickled, is rebuilt to
    the same values."""
    config = WorldConfig(seed=3, n_users=200, n_merchants=20, days=10, target_transactions=2_000)
    paths = write_world(simulate_world(config), tmp_path)
    events = list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))
    cut = len(events) * 2 // 3
    # The prior shift refitted often enough, and from a label of each class on, to be fitted
    # in a small world (one legitimate label).
    shift = PriorShift(refit_every=200, min_class_labels=1)
    scorer = Scorer(decider=Decider(model=RiskModel(prior_shift=shift)))
    for event in events[:cut]:
        scorer.apply(event, decided_at=0)
    model = scorer.decider.model
    say = _rules_say(model)
    assert isinstance(say, RuleSay) and model.prior_shift.fits > 0 and say.fraud and say._says
    restored = load_checkpoint(pickle.dumps(scorer, protocol=pickle.HIGHEST_PROTOCOL))
    again = _rules_say(restored.decider.model)
    assert again == say and again.rules is restored.decider.model.signals[0].detector
    said = 0
    for event in events[cut:]:
        if isinstance(event, Transaction):
            (decision, x), again_decided = (
                s.decide(event, decided_at=0) for s in (scorer, restored)
            )
            assert again_decided == (decision, x)
            said += model.prior_shift.fits > 0 and say.score(x, model.prior_shift.shift) > 0
        else:
            assert restored.apply(event, decided_at=0) == scorer.apply(event, decided_at=0)
    assert said > 0  # the say had its part in what was decided after the checkpoint


def _young_world(rng: random.Random, n: int) -> list[tuple[Features, bool]]:
    """A broad rule the classifier can learn past: a tenth of payments are a young account's
    (the rule `young_account` fires), half of those fraud, and one more feature tells them
    apart (fake accounts sharing a few phones, say: `c` high); the rest as in `_world`."""
    out = []
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        fraud = rng.random() < 1 / (1 + math.exp(-(-3.6 + 1.5 * a - 1.0 * b)))
        x: Features = {"a": a, "b": b, "c": rng.gauss(-1.0, 0.5)}
        if rng.random() < 0.1:
            fraud = rng.random() < 0.5
            x["user_account_age_s"] = 600.0
            x["c"] = rng.gauss(2.0 if fraud else -1.0, 0.5)
        out.append((x, fraud))
    return out


def _trained_on_young(model: RiskModel) -> RiskModel:
    return _trained(model, seed=7, world=_young_world)


def test_a_rule_the_classifier_has_learnt_puts_no_floor_under_its_legitimate_firings() -> None:
    """`young_account` fires on payments half fraud, which the classifier tells apart by `c`:
    its q is near 1 on the fraud and near 0 on the new customers, so its mean over the
    rule's firings already reaches the rule's precision. The say adds no floor then: a new
    customer's risk is the classifier's, not the rule's precision (which it was, issue #21:
    new users' first-day payments withheld, and their money counted as fraud by the friction
    budget). Without the q seen on the rule's firings the say is the whole precision."""
    model = _trained_on_young(RiskModel())
    assert model.confidence() == 1.0 and model.prior_shift.fits > 0
    say = _rules_say(model)
    assert isinstance(say, RuleSay)
    shift = model.prior_shift.shift
    precision = say.precision("young_account", shift)
    assert precision > 0.2
    newcomer = {"a": 0.0, "b": 0.0, "c": -1.0, "user_account_age_s": 600.0}
    fake = {"a": 0.0, "b": 0.0, "c": 2.0, "user_account_age_s": 600.0}
    assessment = model.assess(newcomer)
    assert assessment.q is not None and assessment.q < precision - 0.1
    assert assessment.risk == assessment.q == assessment.calibrated_risk  # the budget's too
    assert model.assess(fake).risk > precision
    # The old say: the whole precision under every firing.
    forgetful = pickle.loads(pickle.dumps(model))
    blind = _rules_say(forgetful)
    assert isinstance(blind, RuleSay)
    blind.beside.clear()
    assert forgetful.assess(newcomer).risk == precision


def test_the_risk_over_a_rules_firings_averages_its_precision() -> None:
    """The floor lifts q's mean over the rule's recent firings to its precision, no further:
    on a fresh sample of the payments the rule fires on, the mean of max(q, say) is the
    precision to within a bin and the sampling; with the whole precision as the floor it
    was well above it."""
    model = _trained_on_young(RiskModel())
    say = _rules_say(model)
    assert isinstance(say, RuleSay)
    precision = say.precision("young_account", model.prior_shift.shift)
    firings = [x for x, _ in _young_world(random.Random(11), 6_000) if "user_account_age_s" in x]
    risks = [model.assess(x).calibrated_risk for x in firings]
    qs = [model.assess(x).q or 0.0 for x in firings]
    floored = sum(max(q, precision) for q in qs) / len(qs)
    assert abs(sum(risks) / len(risks) - max(precision, sum(qs) / len(qs))) < 0.03
    assert floored > sum(risks) / len(risks) + 0.05


def test_a_say_from_before_the_floor_loads_and_says_its_whole_precision() -> None:
    """A checkpoint pickled before `beside` existed: it loads, says what it said (the whole
    precision), and learns the floor from then on."""
    say = RuleSay()
    say.learn_one({"user_account_age_s": 600.0}, True)
    state = {k: v for k, v in say.__dict__.items() if k not in ("beside", "memory")}
    old = RuleSay.__new__(RuleSay)
    old.__setstate__(state)
    young = {"user_account_age_s": 600.0}
    assert old.beside == {} and old.score(young) == say.precision("young_account")
    for _ in range(20):
        old.learn_beside(["young_account"], 0.99, rebate_cents=40.0)
    assert old.score(young) == 0.0


def test_the_histogram_forgets_old_firings() -> None:
    """Past twice `memory` firings the counts halve: a classifier that has moved on is read
    from its recent q, at a bounded size."""
    say = RuleSay(memory=10)
    for _ in range(21):
        say.learn_beside(["young_account"], 0.05, rebate_cents=4.0)
    assert say.beside["young_account"][-1] == 10.5  # firings
    assert sum(say.beside["young_account"][:-1]) == 42.0  # their money


def test_a_rules_precision_is_one_in_money() -> None:
    """A rule firing on many small fraudulent payments and fewer big legitimate ones (tiny
    referral-farm purchases by young accounts, a new customer's first big basket): 60% of its
    firings are fraud, 13% of their rebate money. Its say is the money's share: the friction
    budget counts its firings' money as fraud in max(q, say), so a count's share would count
    the new customers' money as 60% fraud (on tuning world 1 of the random profile, 40k,
    `young_account` said 0.55 over payments 11% fraud in money: their money withheld, and
    most of it not counted against the budget)."""
    say = RuleSay()
    young = {"user_account_age_s": 600.0, "rebate_rate": 0.01}
    firings = [(True, 1_000.0)] * 60 + [(False, 10_000.0)] * 40
    for _, amount in firings:
        say.learn_beside(["young_account"], 0.01, rebate_cents=amount * 0.01)
    for fraud, amount in firings:
        say.learn_one({**young, "amount_cents": amount}, fraud)
    money = 60 * 10.0 / (60 * 10.0 + 40 * 100.0)
    assert sum(say.fraud.values()) + sum(say.legit.values()) == pytest.approx(100.0)
    assert say.precision("young_account") == pytest.approx(money, abs=0.02)
    # The floor under q, which is small on every firing: the whole (money) precision.
    assert say.score({**young, "amount_cents": 5_000.0}) == say.precision("young_account")


def test_the_cached_floor_is_the_floor_found_anew() -> None:
    """Each rule's floor is cached until its histogram learns or its precision moves: as
    firings and labels come, the say read through the caches is the one a copy without them
    (unpickled) finds, and a histogram cleared or replaced is read anew."""
    rng = random.Random(3)
    say = RuleSay()
    young = {"user_account_age_s": 600.0, "rebate_rate": 0.01}
    for _ in range(300):
        x = {**young, "amount_cents": rng.choice((500.0, 5_000.0))}
        if rng.random() < 0.7:
            say.learn_beside(
                ["young_account"], rng.random() ** 4, rebate_cents=x["amount_cents"] / 100
            )
        else:
            say.learn_one(x, rng.random() < 0.4)
        fresh = pickle.loads(pickle.dumps(say))
        assert not fresh._floors
        assert say.score(x) == fresh.score(x)
    assert 0.0 < say.score(young) < say.precision("young_account")
    fresh = pickle.loads(pickle.dumps(say))
    assert say.score(young, -2.0) == fresh.score(young, -2.0) != say.score(young)
    say.beside.clear()
    assert say.score(young) == say.precision("young_account")
    say.beside["young_account"] = [0.0] * 99 + [5.0, 1.0]  # every firing at q ~ 1
    assert say.score(young) == 0.0


def test_a_rules_say_learns_no_review() -> None:
    """The withheld among a rule's firings are those something else found risky: reviews of
    them do not say its precision among all it fires on, so a rule leaves them out."""
    say = RuleSay()
    shared = {"device_user_count_7d": 8.0}
    before = say.precision("device_shared_7d", -3.0)
    for _ in range(20):
        say.learn_reviewed(shared, True)
    assert say.reviewed_fraud == {} and say.precision("device_shared_7d", -3.0) == before
