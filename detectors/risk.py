"""`risk` in [0, 1]: the detectors combined, from the first minute to a well-trained model.

Three signals, each in [0, 1]:
- r, the rules (`detectors.rules`): transparent thresholds the risk team sets;
- a, the anomaly score (`detectors.anomaly.GaussianAnomaly`): learns from every transaction,
  so it is useful before any label exists;
- p, the online classifier's calibrated fraud probability (`detectors.online`), trained on
  delayed labels. r and a are inputs to it as well, so it learns how far to trust them.

Before labels the classifier knows nothing, so its say grows with the fraud labels it has
learned (n): with c = min(1, n / trust_after_fraud_labels),

    prior = 1 - (1 - r) * (1 - anomaly_weight * a)      (noisy-OR: either can raise it)
    risk  = c * q + (1 - c) * prior,   q = logistic(logit(p) + label_bias_log_odds).

q puts the classifier on the prior's scale. Labels over-represent fraud: a platform labels
most of the fraud it finds (chargebacks, reports, reviews of the suspicious) and very few
legitimate payments (in the simulated worlds 73% of labels are fraud against ~3% of
payments), so p is the fraud probability *among labelled payments*, far above the rate among
all payments. The textbook prior-shift correction adds log P(labelled | legit) / P(labelled |
fraud) to the log-odds (about -5.4 in those worlds); `label_bias_log_odds` defaults to -3,
the value that with the shipped thresholds withholds >= 90% of fraudulent and <= 1% of
legitimate rebate money on two simulated worlds (benchmarks/money.py, benchmarks/README.md),
while the rules keep their own scale for the time before labels.

risk is monotone in r, a and p (c is fixed between labels). The `Decider` calls `assess` once
per transaction (each detector's work done once) and keeps the enriched vector, so a label
arriving days later trains the classifier on exactly the inputs it was scored with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from detectors.anomaly import GaussianAnomaly, View
from detectors.base import Features
from detectors.online import OnlineClassifier
from detectors.rules import RuleScore

RULE_RISK = "rule_risk"
ANOMALY_SCORE = "anomaly_score"
#: The classifier's probability from which its reasons are given.
EXPLAIN_FROM = 0.05


@dataclass
class Assessment:
    risk: float
    reasons: list[str]
    #: The vector plus the rule and anomaly scores: what a later label trains on.
    enriched: Features
    anomaly_view: View


@dataclass
class RiskModel:
    rules: RuleScore = field(default_factory=RuleScore)
    anomaly: GaussianAnomaly = field(default_factory=GaussianAnomaly)
    classifier: OnlineClassifier = field(default_factory=OnlineClassifier)
    trust_after_fraud_labels: int = 50
    anomaly_weight: float = 0.5
    #: Added to the classifier's log-odds (see the module docstring); 0: p as learnt.
    label_bias_log_odds: float = -3.0
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
        risk = 1.0 - (1.0 - rule) * (1.0 - self.anomaly_weight * anomaly)  # the prior
        c = self.confidence()
        if c > 0.0:
            p = self.classifier.predict_proba_one(enriched)
            risk = c * _shift_log_odds(p, self.label_bias_log_odds) + (1.0 - c) * risk
            # The model's reasons once it is trusted, and only where it sees some risk: most
            # transactions are plainly fine, and naming contributors costs a pass over all.
            if c >= 0.5 and p >= EXPLAIN_FROM:
                reasons += self.classifier.explain_one(enriched)
        if anomaly > 0.5:
            reasons += self.anomaly.explain_z(z)
        return Assessment(risk, reasons, enriched, view)

    def enrich(self, x: Features) -> Features:
        """`x` plus the rule and anomaly scores, as of now (a new dict)."""
        return self.assess(x).enriched

    def score_one(self, x: Features) -> float:
        return self.assess(x).risk

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """y None: a transaction just scored (the anomaly detector learns it); y a label:
        the classifier learns the vector (enriched when it was scored)."""
        if y is None:
            self.anomaly.learn_one(x)
        else:
            self.classifier.learn_one(x if ANOMALY_SCORE in x else self.enrich(x), y)

    def learn_scored(self, assessment: Assessment) -> None:
        """The unsupervised update after scoring, from the view `assess` already made."""
        self.anomaly.learn_view(assessment.anomaly_view)

    def explain_one(self, x: Features) -> list[str]:
        return self.assess(x).reasons


def _shift_log_odds(p: float, by: float) -> float:
    if by == 0.0:
        return p
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return 1.0 / (1.0 + math.exp(-(math.log(p / (1.0 - p)) + by)))
