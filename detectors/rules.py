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


@dataclass
class RuleScore:
    """Risk = logistic(base + sum of the log-odds of the rules that fire)."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    base_log_odds: float = BASE_LOG_ODDS
    name: str = "rules"

    def score_one(self, x: Features) -> float:
        return self.assess(x)[0]

    def assess(self, x: Features) -> tuple[float, list[str]]:
        """The score and the reason codes, from one pass over the rules."""
        fired = [r for r in self.rules if r.fires(x)]
        z = self.base_log_odds + sum(r.log_odds for r in fired)
        fired.sort(key=lambda r: -r.log_odds)
        return 1.0 / (1.0 + math.exp(-z)), [r.code for r in fired]

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Rules do not learn; thresholds are tuned by risk teams."""

    def explain_one(self, x: Features) -> list[str]:
        return self.assess(x)[1]
