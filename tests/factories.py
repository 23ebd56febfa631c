"""Small builders for contract events used across tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rebate_guard.contract.records import Decision, build
from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.core.policy import Policy, default_policy

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z in epoch ms
MINUTE, HOUR, DAY = MINUTE_MS, HOUR_MS, DAY_MS


def tx(tx_id: str = "t1", ts: int = T0, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "tx_id": tx_id,
        "ts": ts,
        "user_id": "u1",
        "merchant_id": "m1",
        "amount_cents": 10_000,
        "rebate_rate": 0.1,
        "kind": "payment",
        "ref_tx_id": None,
        "device_id": "d1",
        "ip": "10.0.0.1",
        "card_id": "c1",
        "merchant_category": "restaurant",
    }
    event.update(overrides)
    return event


def signup(user_id: str = "u1", ts: int = T0 - DAY, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "user_id": user_id,
        "ts": ts,
        "referrer_id": None,
        "device_id": "d1",
        "ip": "10.0.0.1",
        "phone_hash": "ph1",
    }
    event.update(overrides)
    return event


def label(tx_id: str | None = "t1", ts: int = T0 + 3 * DAY, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": ts,
        "tx_id": tx_id,
        "user_id": None,
        "label": "fraud",
        "source": "review",
    }
    event.update(overrides)
    return event


def decision(
    tx_id: str = "t1",
    action: str = "allow",
    requested: int = 1_000,
    granted: int | None = None,
    **overrides: Any,
) -> Decision:
    """A decision as the worker stores it; `granted` defaults to what `action` pays in full
    (allow), half (scale) or nothing (hold, block)."""
    if granted is None:
        granted = {"allow": requested, "scale": requested // 2}.get(action, 0)
    fields: dict[str, Any] = {
        "tx_id": tx_id,
        "ts": T0,
        "user_id": "u1",
        "merchant_id": "m1",
        "risk": 0.5,
        "trust_weight": 0.5,
        "action": action,
        "rebate_requested_cents": requested,
        "rebate_granted_cents": granted,
        "reasons": [],
        "model_version": "m",
        "decided_at": 0,
        "policy_version": "p1",
        "commission_tiers": 0,
        "threshold_version": "fixed",
    }
    fields.update(overrides)
    return build(Decision, **fields)


def fixed_policy() -> Policy:
    """The shipped policy without its `[budget]`: the fixed thresholds alone decide (for
    tests whose expectations follow those thresholds, e.g. a weight under `hold_at` blocks
    whether or not the classifier is trusted yet)."""
    return replace(default_policy(), budget=None)
