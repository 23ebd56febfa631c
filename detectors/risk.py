"""`risk` in [0, 1]: the detectors combined, from the first minute to a well-trained model.

Four signals, each in [0, 1]:
- r, the rules (`detectors.rules`): transparent thresholds the risk team sets;
- a, the anomaly score (`detectors.anomaly.GaussianAnomaly`): learns from every transaction,
  so it is useful before any label exists;
- g, the ring's say (`detectors.ring_say`): the score of the ring the transaction was scored
  with times its kind's precision, learned from the labels of payments scored with that kind;
- p, the online classifier's calibrated fraud probability (`detectors.online`), trained on
  delayed labels. r, a and the ring features (`graph.evidence`) are inputs to it as well, so
  it learns how far to trust them.

Before labels the classifier knows nothing, so its say grows with the fraud labels it has
learned (n): with c = min(1, n / trust_after_fraud_labels),

    prior = 1 - (1 - r) * (1 - anomaly_weight * a) * (1 - g)   (noisy-OR: any can raise it)
    risk  = c * q + (1 - c) * prior,   q = logistic(alpha * logit(p) + beta + shift).

The ring counts once: through g while the classifier is not trusted, through the ring
features the classifier sees as it takes over.

q puts the classifier on the traffic's scale. Labels over-represent fraud: a platform labels
most of the fraud it finds (chargebacks, reports, reviews of the suspicious) and very few
legitimate payments (in the simulated worlds 60-73% of labels are fraud against ~3% of
payments), so p is the fraud probability *among labelled payments*, far above the rate among
all payments. alpha and beta calibrate the classifier on the labels (Platt scaling of its
out-of-sample log-odds), and `shift` = logit(pi) - logit(pi_L) is the prior-shift
correction, with pi_L the labels' fraud share and pi the traffic's, estimated by EM from the
calibrated scores of the recent scored traffic (`detectors.prior_shift`): alpha = 1, beta = 0,
shift = 0 until the first estimate, then whatever the data say; no number in it is fitted
to a world. The ring's say uses the same shift (a labelled legitimate payment stands for
exp(-shift) of them).

risk is monotone in r, a, g and p (c, the calibration and the shift are fixed between
updates, and the calibration never reverses the classifier's order). The `Decider`
calls `assess` once per transaction (each detector's work done once) and keeps the enriched
vector, so a label arriving days later trains the classifier and the ring kinds' says on
exactly the inputs it was scored with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from detectors.anomaly import GaussianAnomaly, View
from detectors.base import Features
from detectors.online import Classifier, OnlineClassifier
from detectors.prior_shift import PriorShift
from detectors.ring_say import RingSay
from detectors.rules import RuleScore

RULE_RISK = "rule_risk"
ANOMALY_SCORE = "anomaly_score"
#: The classifier's probability from which its reasons are given.
EXPLAIN_FROM = 0.05
#: Probabilities are kept this far from 0 and 1 before taking log-odds.
_EDGE = 1e-12


@dataclass
class Assessment:
    risk: float
    reasons: list[str]
    #: The vector plus the rule and anomaly scores: what a later label trains on.
    enriched: Features
    anomaly_view: View
    #: The classifier's log-odds (labels' scale) on it; None when it was not consulted.
    log_odds: float | None = None
    #: q, the classifier's fraud probability calibrated on the labels and moved to the
    #: traffic's prior (`detectors.prior_shift`), once that has been fitted; 0 before. What
    #: the friction budget may count as fraud: the rest of risk (rules, anomaly, ring's say)
    #: is not calibrated.
    calibrated_risk: float = 0.0


@dataclass
class RiskModel:
    rules: RuleScore = field(default_factory=RuleScore)
    anomaly: GaussianAnomaly = field(default_factory=GaussianAnomaly)
    classifier: Classifier = field(default_factory=OnlineClassifier)
    ring_say: RingSay = field(default_factory=RingSay)
    #: The labels' prior shift, estimated from the scored traffic (module docstring).
    prior_shift: PriorShift = field(default_factory=PriorShift)
    trust_after_fraud_labels: int = 50
    anomaly_weight: float = 0.5
    name: str = "risk"

    @property
    def version(self) -> str:
        """Which state scores: the labels and transactions learned so far."""
        return f"{self.name}.l{self.classifier.n_learned}.t{self.anomaly.n_learned}"

    def confidence(self) -> float:
        return min(1.0, self.classifier.n_fraud / self.trust_after_fraud_labels)

    def assess(self, x: Features) -> Assessment:
        """Everything about one transaction in one pass (each detector's work done once):
        its risk, reasons, the enriched vector to remember for labels, and the anomaly
        detector's view of it to learn."""
        rule, reasons = self.rules.assess(x)
        view = self.anomaly.view(x)
        anomaly, z = self.anomaly.score_view(view)
        enriched = {**x, RULE_RISK: rule, ANOMALY_SCORE: anomaly}
        shift = self.prior_shift.shift
        ring = self.ring_say.score(x, shift)
        # The prior: a noisy-OR of the rules, the anomaly score and the ring's say.
        risk = 1.0 - (1.0 - rule) * (1.0 - self.anomaly_weight * anomaly) * (1.0 - ring)
        c = self.confidence()
        log_odds = None
        calibrated = 0.0
        if c > 0.0:
            p = self.classifier.predict_proba_one(enriched)
            log_odds = _log_odds(p)
            q = _logistic(self.prior_shift.adjusted(log_odds))
            risk = c * q + (1.0 - c) * risk
            calibrated = q if self.prior_shift.fits else 0.0
            # The model's reasons once it is trusted, and only where it sees some risk: most
            # transactions are plainly fine, and naming contributors costs a pass over all.
            if c >= 0.5 and p >= EXPLAIN_FROM:
                reasons += self.classifier.explain_one(enriched)
        if anomaly > 0.5:
            reasons += self.anomaly.explain_z(z)
        return Assessment(risk, reasons, enriched, view, log_odds, calibrated)

    def enrich(self, x: Features) -> Features:
        """`x` plus the rule and anomaly scores, as of now (a new dict)."""
        return self.assess(x).enriched

    def score_one(self, x: Features) -> float:
        return self.assess(x).risk

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """y None: a transaction just scored (`learn_scored`); y a label: the classifier
        and the ring kinds' says learn the vector (enriched when it was scored)."""
        if y is None:
            self.learn_scored(self.assess(x))
        else:
            enriched = x if ANOMALY_SCORE in x else self.enrich(x)
            # Scored before it learns it: an out-of-sample log-odds for the calibration.
            before = _log_odds(self.classifier.predict_proba_one(enriched))
            self.prior_shift.labelled(before, bool(y))
            self.classifier.learn_one(enriched, y)
            self.ring_say.learn_one(x, y)

    def learn_scored(self, assessment: Assessment) -> None:
        """The unsupervised update after scoring, from what `assess` already computed: the
        anomaly detector learns the transaction, the prior-shift estimate its log-odds."""
        self.anomaly.learn_view(assessment.anomaly_view)
        if assessment.log_odds is not None:
            self.prior_shift.observe(assessment.log_odds)

    def explain_one(self, x: Features) -> list[str]:
        return self.assess(x).reasons


def _log_odds(p: float) -> float:
    p = min(max(p, _EDGE), 1.0 - _EDGE)
    return math.log(p / (1.0 - p))


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
