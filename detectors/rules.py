"""A transparent rules baseline: useful before any label exists, and the floor River models
must beat. Each rule adds log-odds when its feature crosses a threshold; the sum goes through
a logistic, so risk is monotone in every rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detectors.base import Features


@dataclass(frozen=True)
class Rule:
    code: str
    feature: str
    threshold: float
    log_odds: float
    #: "above": fires when x > threshold; "below": fires when x < threshold.
    direction: str = "above"

    def fires(self, x: Features) -> bool:
        value = x.get(self.feature)
        if value is None:
            return False
        return value > self.threshold if self.direction == "above" else value < self.threshold


DEFAULT_RULES = (
    Rule("velocity_user_24h", "user_tx_count_24h", 12, 1.6),
    Rule("burst_user", "seconds_since_prev_payment", 60, 1.2, "below"),
    Rule("young_account", "user_account_age_s", 24 * 3600, 1.5, "below"),
    Rule("device_shared_7d", "device_user_count_7d", 5, 3.0),
    Rule("ip_shared_24h", "ip_user_count_24h", 30, 0.8),
    Rule("refund", "is_refund", 0.5, 0.7),
)

BASE_LOG_ODDS = -3.5

#: Rule sets in evaluation form, by rule set (rules are frozen, so the tuple is the key).
_COMPILED: dict[tuple[Rule, ...], tuple[tuple[str, float, bool, float, str], ...]] = {}


@dataclass
class RuleScore:
    """Risk = logistic(base + sum of the log-odds of the rules that fire)."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    base_log_odds: float = BASE_LOG_ODDS
    name: str = "rules"

    def score_one(self, x: Features) -> float:
        return self.assess(x)[0]

    def assess(self, x: Features) -> tuple[float, list[str]]:
        """The score and the reason codes (strongest first), from one pass over the rules."""
        # `Rule.fires`, inlined: this runs for every transaction.
        z = self.base_log_odds
        codes = []
        for feature, threshold, above, log_odds, code in self._strongest_first():
            value = x.get(feature)
            if value is not None and (value > threshold if above else value < threshold):
                z += log_odds
                codes.append(code)
        return 1.0 / (1.0 + math.exp(-z)), codes

    def _strongest_first(self) -> tuple[tuple[str, float, bool, float, str], ...]:
        cached = _COMPILED.get(self.rules)
        if cached is None:
            ordered = sorted(self.rules, key=lambda r: -r.log_odds)  # stable: ties keep order
            cached = _COMPILED[self.rules] = tuple(
                (r.feature, r.threshold, r.direction == "above", r.log_odds, r.code)
                for r in ordered
            )
        return cached

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Rules do not learn; thresholds are tuned by risk teams."""

    def explain_one(self, x: Features) -> list[str]:
        return self.assess(x)[1]
