"""Trust weight and rebate policy: from risk signals to an action and exact granted money.

Trust weight w = (1 - model risk) x (1 - ring score): in [0, 1], monotone (non-increasing) in
each risk signal, 1 only when nothing is suspicious. Thresholds on w pick the action:
  w >= allow_at  -> allow  (full rebate)
  w >= scale_at  -> scale  (rebate x w, rounded down to whole cents)
  w >= hold_at   -> hold   (nothing granted now; escrowed until a label or timeout)
  otherwise      -> block  (nothing)
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.records import ALLOW, BLOCK, HOLD, SCALE, scale_cents


class PolicyError(ValueError):
    """A policy that cannot be used; the message says which value is wrong."""


@dataclass(frozen=True)
class Policy:
    version: str = "default-1"
    allow_at: float = 0.85
    scale_at: float = 0.5
    hold_at: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.hold_at <= self.scale_at <= self.allow_at <= 1.0:
            raise PolicyError(
                "thresholds must satisfy 0 <= hold_at <= scale_at <= allow_at <= 1, got "
                f"hold_at={self.hold_at}, scale_at={self.scale_at}, allow_at={self.allow_at}"
            )

    def decide(self, trust_weight: float, requested_cents: int) -> tuple[str, int]:
        """The action and the cents granted now for a rebate of `requested_cents`."""
        if trust_weight >= self.allow_at:
            return ALLOW, requested_cents
        if trust_weight >= self.scale_at:
            return SCALE, scale_cents(requested_cents, trust_weight)
        if trust_weight >= self.hold_at:
            return HOLD, 0
        return BLOCK, 0


def trust_weight(risk: float, ring_score: float) -> float:
    w = (1.0 - _clamp(risk)) * (1.0 - _clamp(ring_score))
    # Six decimals: the weight is recorded in decisions and used for money, so keep it exact.
    return round(w, 6)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
