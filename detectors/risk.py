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
    risk  = c * p + (1 - c) * prior.

risk is monotone in r, a and p (c is fixed between labels). The `Decider` calls `enrich` once
per transaction and keeps the enriched vector, so a label arriving days later trains the
classifier on exactly the inputs it was scored with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectors.anomaly import GaussianAnomaly
from detectors.base import Features
from detectors.online import OnlineClassifier
from detectors.rules import RuleScore

RULE_RISK = "rule_risk"
ANOMALY_SCORE = "anomaly_score"


@dataclass
class RiskModel:
    rules: RuleScore = field(default_factory=RuleScore)
    anomaly: GaussianAnomaly = field(default_factory=GaussianAnomaly)
    classifier: OnlineClassifier = field(default_factory=OnlineClassifier)
    trust_after_fraud_labels: int = 50
    anomaly_weight: float = 0.5
    name: str = "risk"

    @property
    def version(self) -> str:
        """Which state scores: the labels and transactions learned so far."""
        return f"{self.name}.l{self.classifier.n_learned}.t{self.anomaly.n_learned}"

    def enrich(self, x: Features) -> Features:
        """`x` plus the rule and anomaly scores, as of now (a new dict)."""
        return {**x, RULE_RISK: self.rules.score_one(x), ANOMALY_SCORE: self.anomaly.score_one(x)}

    def confidence(self) -> float:
        return min(1.0, self.classifier.n_fraud / self.trust_after_fraud_labels)

    def score_one(self, x: Features) -> float:
        enriched = x if ANOMALY_SCORE in x else self.enrich(x)
        rule, anomaly = enriched[RULE_RISK] or 0.0, enriched[ANOMALY_SCORE] or 0.0
        prior = 1.0 - (1.0 - rule) * (1.0 - self.anomaly_weight * anomaly)
        c = self.confidence()
        if c == 0.0:
            return prior
        return c * self.classifier.predict_proba_one(enriched) + (1.0 - c) * prior

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """y None: a transaction just scored (the anomaly detector learns it); y a label:
        the classifier learns the vector (enriched when it was scored)."""
        if y is None:
            self.anomaly.learn_one(x)
        else:
            self.classifier.learn_one(x if ANOMALY_SCORE in x else self.enrich(x), y)

    def explain_one(self, x: Features) -> list[str]:
        enriched = x if ANOMALY_SCORE in x else self.enrich(x)
        reasons = self.rules.explain_one(enriched)
        if self.confidence() >= 0.5:
            reasons += self.classifier.explain_one(enriched)
        if (enriched[ANOMALY_SCORE] or 0.0) > 0.5:
            reasons += self.anomaly.explain_one(enriched)
        return reasons
