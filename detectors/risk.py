"""`risk` in [0, 1]: the detectors combined, from the first minute to a well-trained model.

The prior is a list of signals (`RiskModel.signals`, each a `Signal`: a detector following
`detectors.base.PriorDetector`, and its weight), each s_k in [0, 1] with a weight w_k in
[0, 1]. By default (`default_signals`):
- r, the rules (`detectors.rules`), w = 1: transparent thresholds the risk team sets;
- a, the anomaly score (`detectors.anomaly.GaussianAnomaly`), w = `ANOMALY_WEIGHT` (1/2):
  learns from every transaction, so it is useful before any label exists;
- g, the ring's say (`detectors.ring_say`), w = 1: the score of the ring the transaction was
  scored with times its kind's precision, learned from the labels of payments scored with
  that kind.
Adding a detector to the prior is adding it to that list. Beside the prior, p is the online
classifier's calibrated fraud probability (`detectors.online`), trained on delayed labels.
The signals with a `feature` (r and a) and the ring features (`graph.evidence`) are inputs to
it as well, so it learns how far to trust them.

Before labels the classifier knows nothing, so its say grows with the fraud labels it has
learned (n): with c = min(1, n / trust_after_fraud_labels),

    prior = 1 - prod_k (1 - w_k * s_k)              (noisy-OR: any can raise it)
          = 1 - (1 - r) * (1 - a / 2) * (1 - g)       (the default signals)
    blend = c * q + (1 - c) * prior,   q = logistic(alpha * logit(p) + beta + shift)
    risk  = max(blend, u_1, ..., u_m)                 (once the shift is estimated)

The product is taken in list order, left to right: in floating point the order is part of
the number, and the decisions depend on it bit for bit.

The ring counts once: through g while the classifier is not trusted, through the ring
features the classifier sees as it takes over.

The u_j are the calibrated signals (`RiskModel.calibrated_signals`): detectors whose score is
a fraud probability among all payments learned from labels, a precision at the labels' prior
shift. By default (`default_calibrated`) there are two. The rules' say
(`detectors.rule_say`): the precision of the most precise rule that fires, learned from the
labels of the payments each rule fired on, starting from what the rule states. The ring
kinds' say (`detectors.ring_say.RingKindSay`), the same for the kind of the ring a payment
was scored with, starting from 1/2: the trusted classifier sees a ring only through its
features and drowns a kind found late as it drowns a rare rule. They count
whatever c is, because the classifier learns the rules only through one input, r: a rare
rule (a few dozen payments a world) whose firings are nearly all fraud moves its fit little,
so once c = 1 its firings were drowned (issue #21: on tuning worlds 0-1 of the random
profile, 40k transactions, `binding_hijack` payments the rule `binding_before_big_payment`
fired on had a median q of 0.05-0.08 and 0-12% of their money withheld). A rule proven
precise is never drowned; one whose firings turn out legitimate fades to its precision, which
the classifier's q then exceeds. And a rule's say is not its whole precision under every
payment it fires on but the floor that lifts q's mean over its recent firings to that
precision (`RuleSay.floor`): none for a rule the classifier has learnt, so that a broad rule
(`young_account`) does not put every new user's payments at its precision when q tells its
fraud apart (and the friction budget, counting max(q, u) as fraud, does not count their money
as fraud). Max and not noisy-OR: q and u_j estimate the same probability
(q may have learnt the rule too), and neither should add to the other. Before the first
estimate of the shift (`PriorShift.fits` = 0) a precision is one among the fraud-heavy labels,
not the traffic's, so the u_j do not count yet. What the friction budget counts as fraud
(`Assessment.calibrated_risk`) is max(q, u_1, ..., u_m): each a probability among all
payments, where the prior's scores are not.

q puts the classifier on the traffic's scale. Labels over-represent fraud: a platform labels
most of the fraud it finds (chargebacks, reports, reviews of the suspicious) and very few
legitimate payments (in the simulated worlds 60-73% of labels are fraud against ~3% of
payments), so p is the fraud probability *among labelled payments*, far above the rate among
all payments. alpha and beta calibrate the classifier on the labels (Platt scaling of its
out-of-sample log-odds), and `shift` = logit(pi) - logit(pi_L) is the prior-shift
correction, with pi_L the labels' fraud share and pi the traffic's, estimated by EM from the
calibrated scores of the recent scored traffic (`detectors.prior_shift`): alpha = 1, beta = 0,
shift = 0 until the first estimate, then whatever the data say; no number in it is fitted
to a world. Every signal reads the transaction at the same shift; the ring's say uses it (a
labelled legitimate payment stands for exp(-shift) of them).

risk is monotone in every s_k, in every u_j and in p (the weights, c, the calibration and
the shift are fixed between updates, and the calibration never reverses the classifier's
order). The
reasons are the signals' marked `reasons_first` (the rules' codes), then the classifier's
(once it is trusted), then the other signals' (the anomaly detector's unusual features). The
`Decider` calls `assess` once per transaction (each detector's work done once) and keeps the
enriched vector, so a label arriving days later trains the classifier and the signals on
exactly the inputs it was scored with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from detectors.anomaly import GaussianAnomaly
from detectors.base import Features, PriorDetector, Reading, signed_up_at_till
from detectors.online import Classifier, ForestClassifier, OnlineClassifier
from detectors.prior_shift import PriorShift
from detectors.ring_say import RingKindSay, RingSay
from detectors.rule_say import FiringSay, RuleSay
from detectors.rules import RuleScore

RULE_RISK = "rule_risk"
ANOMALY_SCORE = "anomaly_score"
#: The anomaly score's weight in the prior: half, as it is not a probability.
ANOMALY_WEIGHT = 0.5
#: The classifier's probability from which its reasons are given.
EXPLAIN_FROM = 0.05
#: Probabilities are kept this far from 0 and 1 before taking log-odds.
_EDGE = 1e-12


@dataclass
class Signal:
    """One detector's part in the prior: the noisy-OR term 1 - weight x its score.

    Parameters
    ----------
    detector : PriorDetector
        The detector (`detectors.base.PriorDetector`).
    weight : float
        How much its score counts, in [0, 1] (so the prior stays a probability-like score).
    feature : str, optional
        The name its score gets in the enriched vector, an input to the classifier (which
        then learns how far to trust it); None: not an input.
    reasons_first : bool
        Its reasons come before the classifier's (the rules: the thresholds the risk team
        set are named first); otherwise after them.

    Examples
    --------
    >>> from detectors.rules import RuleScore
    >>> Signal(RuleScore(), weight=1.5)
    Traceback (most recent call last):
    ...
    ValueError: a signal's weight is in [0, 1], not 1.5
    """

    detector: PriorDetector
    _: KW_ONLY
    weight: float = 1.0
    feature: str | None = None
    reasons_first: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"a signal's weight is in [0, 1], not {self.weight}")


def default_signals() -> list[Signal]:
    """The prior's signals (module docstring): the rules, the anomaly score, the ring's say.

    Returns
    -------
    list of Signal
        New detectors, in the order the noisy-OR multiplies them.

    Examples
    --------
    >>> [(s.detector.name, s.weight, s.feature) for s in default_signals()]
    [('rules', 1.0, 'rule_risk'), ('gaussian', 0.5, 'anomaly_score'), ('ring_say', 1.0, None)]
    """
    return _signals(RuleScore(), GaussianAnomaly(), RingSay(), anomaly_weight=ANOMALY_WEIGHT)


def default_calibrated(signals: list[Signal]) -> list[PriorDetector]:
    """The calibrated signals (`RiskModel.calibrated_signals`): the say of the rules among
    `signals` (`detectors.rule_say`), sharing their rule set, and of the ring kinds when the
    ring's say is among them (`detectors.ring_say.RingKindSay`); none without either.

    Examples
    --------
    >>> [d.name for d in default_calibrated(default_signals())], default_calibrated([])
    (['rule_say', 'ring_kind_say'], [])
    """
    says: list[PriorDetector] = []
    for signal in signals:
        if isinstance(signal.detector, RuleScore):
            says.append(RuleSay(rules=signal.detector))
        elif isinstance(signal.detector, RingSay):
            says.append(RingKindSay())
    return says


def _signals(
    rules: RuleScore, anomaly: GaussianAnomaly, ring_say: RingSay, *, anomaly_weight: float
) -> list[Signal]:
    return [
        Signal(rules, feature=RULE_RISK, reasons_first=True),
        Signal(anomaly, weight=anomaly_weight, feature=ANOMALY_SCORE),
        Signal(ring_say),
    ]


@dataclass(kw_only=True)
class Assessment:
    risk: float
    reasons: list[str]
    #: The vector plus the signals' scores that are classifier inputs: what a later label
    #: trains on.
    enriched: Features
    #: Each signal's reading, in `RiskModel.signals` order, then each calibrated signal's:
    #: what `learn_scored` learns.
    readings: list[Reading]
    #: The classifier's log-odds (labels' scale) on it; None when it was not consulted.
    log_odds: float | None = None
    #: max(q, the calibrated signals' scores), q the classifier's fraud probability
    #: calibrated on the labels and moved to the traffic's prior (`detectors.prior_shift`),
    #: once that has been fitted; 0 before. What the friction budget may count as fraud:
    #: the rest of risk (the prior's signals) is not calibrated.
    calibrated_risk: float = 0.0
    #: q alone, once the prior shift has been fitted (None before, or when the classifier
    #: was not consulted): what the rules' say learns to add to (`RuleSay.learn_beside`).
    q: float | None = None


@dataclass(kw_only=True)
class RiskModel:
    """The prior's signals and the online classifier combined into one risk (module
    docstring).

    Parameters
    ----------
    signals : list of Signal
        The prior (`default_signals`: the rules, the anomaly score, the ring's say).
    classifier : OnlineClassifier or ForestClassifier
        The classifier that learns from labels.
    prior_shift : PriorShift
        The labels' prior shift, estimated from the scored traffic.
    trust_after_fraud_labels : int
        The fraud labels after which the classifier alone decides the blend.
    calibrated_signals : list of PriorDetector, optional
        Detectors whose score is a fraud probability among all payments (module docstring):
        risk is never below one of them. None: `default_calibrated(signals)`, the rules'
        say; [] none (a checkpoint from before them loads so: it scores as it did).
    name : str
        The first part of `version`.

    Examples
    --------
    Fraud here comes from users referred by someone who brought nine new users today: no
    rule knows it, so before labels the risk is the rules' base rate. As the labels come in
    (every transaction scored and learnt, then labelled) the classifier takes over and
    names it.

    >>> import random
    >>> model = RiskModel(trust_after_fraud_labels=20)
    >>> probe = {"referrer_signups_24h": 9.0, "amount_cents": 2_000.0}
    >>> round(model.score_one(probe), 3), model.version
    (0.029, 'risk.l0.t0')
    >>> rng = random.Random(0)
    >>> for _ in range(400):
    ...     fraud = rng.random() < 0.1
    ...     referrals = rng.randint(6, 12) if fraud else rng.randint(0, 2)
    ...     x = {"referrer_signups_24h": float(referrals), "amount_cents": rng.uniform(500, 5_000)}
    ...     model.learn_one(x)  # scored: the unsupervised update
    ...     model.learn_one(x, fraud)  # then its label
    >>> assessment = model.assess(probe)
    >>> round(assessment.risk, 3), assessment.reasons, model.version
    (0.749, ['model:referrer_signups_24h', 'model:anomaly_score'], 'risk.l400.t400')
    >>> round(model.score_one({"referrer_signups_24h": 1.0, "amount_cents": 2_000.0}), 3)
    0.048
    """

    signals: list[Signal] = field(default_factory=default_signals)
    classifier: Classifier = field(default_factory=OnlineClassifier)
    prior_shift: PriorShift = field(default_factory=PriorShift)
    trust_after_fraud_labels: int = 50
    #: Detectors whose score is a fraud probability among all payments learned from labels
    #: (a precision at the labels' prior shift): risk is never below one of them, trusted
    #: classifier or not. None: `default_calibrated` for `signals`.
    calibrated_signals: list[PriorDetector] | None = None
    name: str = "risk"
    #: Transactions learnt after scoring (`learn_scored`).
    n_scored: int = 0
    #: Fraud labels of the review sample the classifier learned (`learn_reviewed`): not
    #: counted towards its trust.
    reviewed_fraud: int = 0

    def __post_init__(self) -> None:
        if self.calibrated_signals is None:
            self.calibrated_signals = default_calibrated(self.signals)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"trust_after_fraud_labels": 5}
        yield {"trust_after_fraud_labels": 5, "classifier": ForestClassifier()}
        # The prior shift refitted often enough to move within a stream.
        yield {"trust_after_fraud_labels": 5, "prior_shift": PriorShift(refit_every=50)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "signals" not in state:  # pickled before the prior was a list (issue #19)
            state = dict(state)
            anomaly = state.pop("anomaly")
            state["signals"] = _signals(
                state.pop("rules"),
                anomaly,
                state.pop("ring_say"),
                anomaly_weight=state.pop("anomaly_weight"),
            )
            state["n_scored"] = anomaly.n_learned  # it learnt every scored transaction
        state.setdefault("reviewed_fraud", 0)  # pickled before the review sample
        if "calibrated_signals" not in state:  # pickled before the rules' say (issue #21)
            # It scores and learns as it did: a say learnt from now on would move its
            # scores at once (a rule's stated score counts before its labels do).
            state = {**state, "calibrated_signals": []}
        self.__dict__.update(state)

    @property
    def version(self) -> str:
        """Which state scores: the labels and transactions learned so far."""
        return f"{self.name}.l{self.classifier.n_learned}.t{self.n_scored}"

    def confidence(self) -> float:
        learned = self.classifier.n_fraud - self.reviewed_fraud
        return min(1.0, learned / self.trust_after_fraud_labels)

    def assess(self, x: Features) -> Assessment:
        """Everything about one transaction in one pass (each detector's work done once).

        Parameters
        ----------
        x : dict
            The transaction's feature vector (None or NaN: missing); not changed.

        Returns
        -------
        Assessment
            Its risk and reasons, the enriched vector to remember for labels, each signal's
            reading to learn from (`learn_scored`), and the classifier's log-odds and
            calibrated probability when it was consulted.

        Examples
        --------
        A new model: only the rules know anything yet. A device shared by eight users and
        twenty payments in a day fire two rules; the anomaly detector has learnt nothing.

        >>> model = RiskModel()
        >>> assessment = model.assess({"user_tx_count_24h": 20.0, "device_user_count_7d": 8.0})
        >>> round(assessment.risk, 3), assessment.reasons, assessment.log_odds
        (0.75, ['device_shared_7d', 'velocity_user_24h'], None)
        >>> {name: round(assessment.enriched[name], 3) for name in (RULE_RISK, ANOMALY_SCORE)}
        {'rule_risk': 0.75, 'anomaly_score': 0.0}
        """
        shift = self.prior_shift.shift
        enriched = dict(x)
        reasons: list[str] = []
        reasons_after: list[str] = []
        readings = []
        unflagged = 1.0  # the noisy-OR: the chance no signal flags it
        for signal in self.signals:
            reading = signal.detector.read(x, log_odds_shift=shift)
            readings.append(reading)
            unflagged *= 1.0 - signal.weight * reading.score
            if signal.feature is not None:
                enriched[signal.feature] = reading.score
            (reasons if signal.reasons_first else reasons_after).extend(reading.reasons)
        risk = 1.0 - unflagged
        c = self.confidence()
        log_odds = None
        calibrated = 0.0
        q_fitted = None
        if c > 0.0:
            view = classifier_view(enriched)
            p = self.classifier.predict_proba_one(view)
            log_odds = _log_odds(p)
            q = _logistic(self.prior_shift.adjusted(log_odds))
            risk = c * q + (1.0 - c) * risk
            calibrated = q if self.prior_shift.fits else 0.0
            q_fitted = q if self.prior_shift.fits else None
            # The model's reasons once it is trusted, and only where it sees some risk: most
            # transactions are plainly fine, and naming contributors costs a pass over all.
            if c >= 0.5 and p >= EXPLAIN_FROM:
                reasons += self.classifier.explain_one(view)
        reasons += reasons_after
        for detector in self.calibrated_signals or ():
            reading = detector.read(x, log_odds_shift=shift)
            readings.append(reading)
            # A probability among all payments only once the shift is estimated: before, a
            # precision among the fraud-heavy labels.
            if self.prior_shift.fits and reading.score > risk:
                risk = reading.score
            if self.prior_shift.fits and reading.score > calibrated:
                calibrated = reading.score
        return Assessment(
            risk=risk,
            reasons=reasons,
            enriched=enriched,
            readings=readings,
            log_odds=log_odds,
            calibrated_risk=calibrated,
            q=q_fitted,
        )

    def enrich(self, x: Features) -> Features:
        """`x` plus the signals' scores that are classifier inputs, as of now (a new dict)."""
        return self.assess(x).enriched

    def score_one(self, x: Features) -> float:
        """The risk of `x` (`assess`)."""
        return self.assess(x).risk

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """y None: a transaction just scored (`learn_scored`); y a label: the classifier and
        the signals learn the vector (enriched when it was scored).

        Parameters
        ----------
        x : dict
            The vector, as scored (`Assessment.enriched`) or plain (then enriched now).
        y : bool, optional
            True: fraud; False: legitimate; None: not a label but a transaction just scored.

        Examples
        --------
        >>> model = RiskModel()
        >>> x = {"user_tx_count_24h": 3.0}
        >>> model.learn_one(x)
        >>> model.learn_one(x, True)
        >>> model.version, model.confidence()
        ('risk.l1.t1', 0.02)
        """
        if y is None:
            self.learn_scored(self.assess(x))
        else:
            enriched = x if self._enriched(x) else self.enrich(x)
            # Scored before it learns it: an out-of-sample log-odds for the calibration.
            view = classifier_view(enriched)
            before = _log_odds(self.classifier.predict_proba_one(view))
            self.prior_shift.labelled(before, bool(y))
            self.classifier.learn_one(view, y)
            for detector in self._detectors():
                detector.learn_label(x, bool(y))

    def learn_reviewed(self, x: Features, y: bool) -> None:
        """A label of the review sample (`rebate_guard.core.budget.sampled_for_review`): the
        classifier learns it, and the ring kinds' say as a review (`FiringSay.learn_reviewed`:
        a draw of a kind's precision, not of the label process), but it counts neither
        towards the classifier's trust nor in the estimates that read the labels as the
        platform's label process (the prior shift's labelled share, the precisions' labels).
        Its payments were drawn from what the weights already withheld, at `review_share`:
        a fraud label among them is fraud the prior found, not evidence that the classifier
        has seen enough fraud to take over from it (counted, they handed the decision to the
        classifier early: AP on the random profile's worlds 10-29, docs/policy.md); and a
        legitimate one stands for withheld payments like it, not for exp(-shift) of all
        payments, as the precisions weigh legitimate labels."""
        enriched = x if self._enriched(x) else self.enrich(x)
        self.classifier.learn_one(classifier_view(enriched), y)
        self.reviewed_fraud += bool(y)
        for detector in self.calibrated_signals or ():
            if isinstance(detector, FiringSay):
                detector.learn_reviewed(x, y)

    def learn_withheld(self, assessment: Assessment, share: float) -> None:
        """`share` of the assessed payment's rebate was withheld at decision: each say
        beside q that counted its firing (`learn_scored`) learns how much of its money the
        review sample, drawn from what is withheld, speaks for (`FiringSay.learn_withheld`)."""
        if assessment.q is None or share <= 0.0:
            return
        for detector, reading in zip(self._detectors(), assessment.readings, strict=True):
            if isinstance(detector, FiringSay) and reading.learnable:
                codes, cents = reading.learnable
                detector.learn_withheld(codes, share, rebate_cents=cents)

    def _detectors(self) -> list[PriorDetector]:
        """The prior's detectors, then the calibrated signals: the readings' order."""
        return [s.detector for s in self.signals] + list(self.calibrated_signals or ())

    def _enriched(self, x: Features) -> bool:
        return all(s.feature in x for s in self.signals if s.feature is not None)

    def learn_scored(self, assessment: Assessment) -> None:
        """The unsupervised update after scoring, from what `assess` already computed: each
        signal learns from its reading (the anomaly detector the transaction), the
        prior-shift estimate the classifier's log-odds."""
        for detector, reading in zip(self._detectors(), assessment.readings, strict=True):
            detector.learn_scored(reading)
            # A say beside q (rules', ring kinds') learns what q already says where it fires.
            if assessment.q is not None and isinstance(detector, FiringSay) and reading.learnable:
                codes, cents = reading.learnable
                detector.learn_beside(codes, assessment.q, rebate_cents=cents)
        self.n_scored += 1
        if assessment.log_odds is not None:
            self.prior_shift.observe(assessment.log_odds)

    def explain_one(self, x: Features) -> list[str]:
        return self.assess(x).reasons


#: The features that say how young a user's account is: for a user who signed up at a
#: merchant's till (`features.user`, `signed_up_at_till`) the classifier sees them under
#: their own names (`<name>_at_till`), with weights of their own. Its age weights are
#: learnt from fraud labels, mostly young farm accounts, and almost no legit young payment
#: is ever labelled, so on the shared feature a minutes-old till account read as a farm's
#: (issue #21); apart, the till accounts' age weighs what their own labels say.
TILL_SPLIT_FEATURES = ("user_account_age_s", "signup_to_first_payment_s")


def classifier_view(x: Features) -> Features:
    """`x` as the classifier reads it: the age features of a till sign-up
    (`detectors.base.signed_up_at_till`) renamed (`TILL_SPLIT_FEATURES`); `x` itself for
    anyone else (not copied).

    Examples
    --------
    >>> classifier_view({"user_account_age_s": 300.0, "signed_up_at_till": 1.0})
    {'signed_up_at_till': 1.0, 'user_account_age_s_at_till': 300.0}
    >>> classifier_view({"user_account_age_s": 300.0, "signed_up_at_till": 0.0})
    {'user_account_age_s': 300.0, 'signed_up_at_till': 0.0}
    """
    if not signed_up_at_till(x):
        return x
    view = dict(x)
    for name in TILL_SPLIT_FEATURES:
        if name in view:
            view[f"{name}_at_till"] = view.pop(name)
    return view


def _log_odds(p: float) -> float:
    p = min(max(p, _EDGE), 1.0 - _EDGE)
    return math.log(p / (1.0 - p))


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
