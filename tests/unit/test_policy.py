import pickle
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.policy import (
    EXPECTED_LOSS,
    Policy,
    PolicyError,
    Thresholds,
    default_policy,
    trust_weight,
)
from tests.factories import DAY, T0, tx

unit = st.floats(0, 1)


@given(unit, unit)
def test_trust_weight_is_one_minus_risk_and_monotone(risk: float, bump: float) -> None:
    """Every signal, rings included, is in the risk (detectors/risk.py): w = 1 - risk."""
    w = trust_weight(risk)
    assert 0.0 <= w <= 1.0 and w == round(1.0 - risk, 6)
    assert trust_weight(min(1.0, risk + bump)) <= w


def test_actions_follow_thresholds_and_money_is_whole_cents() -> None:
    t = Thresholds(allow_at=0.8, scale_at=0.5, hold_at=0.2)
    assert t.decide(0.9, 1000) == ("allow", 1000, [])
    assert t.decide(0.6667, 1000) == ("scale", 666, [])
    assert t.decide(0.3, 1000) == ("hold", 0, [])
    assert t.decide(0.1, 1000) == ("block", 0, [])


def test_the_larger_the_rebate_the_more_trust_it_needs() -> None:
    t = Thresholds(allow_at=0.8, scale_at=0.5, hold_at=0.2, max_expected_loss_cents=100)
    # w = 0.9: a 1,000-cent rebate risks 100 (allowed); 1,001 risks 100.1: scaled to 900.
    assert t.decide(0.9, 1000) == ("allow", 1000, [])
    assert t.decide(0.9, 1001) == ("scale", 900, [EXPECTED_LOSS])
    # 1,200 x 0.9 = 1,080 still risks 108: held, nothing paid; a weak weight is not helped.
    assert t.decide(0.9, 1200) == ("hold", 0, [EXPECTED_LOSS])
    assert t.decide(0.6, 200) == ("scale", 120, [])
    assert t.decide(0.6, 500) == ("hold", 0, [EXPECTED_LOSS])
    assert t.decide(0.1, 10) == ("block", 0, [])


ORDER = {"block": 0, "hold": 1, "scale": 2, "allow": 3}


@given(unit, unit, st.integers(0, 200_000), st.integers(0, 200_000))
def test_decisions_are_monotone_in_trust_and_in_money(
    w1: float, w2: float, r1: int, r2: int
) -> None:
    t = Thresholds(max_expected_loss_cents=3_000)
    lo_w, hi_w = sorted((round(w1, 6), round(w2, 6)))
    small, large = sorted((r1, r2))
    # More trust never gets a stricter action; a larger rebate never a more generous one.
    assert ORDER[t.decide(lo_w, small)[0]] <= ORDER[t.decide(hi_w, small)[0]]
    assert ORDER[t.decide(lo_w, large)[0]] <= ORDER[t.decide(lo_w, small)[0]]
    action, granted, _ = t.decide(hi_w, large)
    # Only allow and scale pay (a scale of a few cents may round down to nothing).
    assert 0 <= granted <= large and (granted == 0 or action in ("allow", "scale"))
    assert action != "allow" or granted == large


def _payment(**fields: Any) -> Any:
    fields.setdefault("merchant_category", "restaurant")
    return parse_transaction(tx("p1", T0, **fields))


def test_campaigns_come_before_categories_and_categories_before_the_default() -> None:
    policy = Policy.from_document(
        {
            "version": "v7",
            "thresholds": {"allow_at": 0.8},
            "categories": {"beauty": {"allow_at": 0.95}},
            "campaigns": [
                {
                    "name": "double-11",
                    "merchants": ["m9"],
                    "starts_ms": T0,
                    "ends_ms": T0 + DAY,
                    "allow_at": 0.99,
                }
            ],
        }
    )
    at = policy.thresholds_for
    assert at(_payment()).allow_at == 0.8  # restaurants: no override
    assert at(_payment(merchant_category="beauty")).allow_at == 0.95
    assert at(_payment(merchant_id="m9", merchant_category="beauty")).allow_at == 0.99
    after = parse_transaction(tx("p2", T0 + DAY, merchant_id="m9", merchant_category="beauty"))
    assert at(after).allow_at == 0.95  # the campaign ended
    inherited = Thresholds().scale_at  # nothing in the document sets it
    assert at(_payment(merchant_category="beauty")).scale_at == inherited


def test_block_lists_win_over_allow_lists_and_the_weight() -> None:
    policy = Policy.from_document(
        {
            "version": "v1",
            "lists": {"block_devices": ["d-bad"], "allow_users": ["vip", "u1"]},
        }
    )
    vip = _payment(user_id="vip", device_id="d-ok")
    assert policy.decide(vip, 0.0, requested_cents=500) == ("allow", 500, ["allowlist:user"])
    on_bad_device = _payment(user_id="vip", device_id="d-bad")
    assert policy.decide(on_bad_device, 1.0, requested_cents=500) == (
        "block",
        0,
        ["blocklist:device"],
    )
    assert (
        policy.decide(_payment(user_id="u2", device_id="d-ok"), 0.9, requested_cents=500)[0]
        == "allow"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"thresholds": {}}, "version: missing"),
        ({"version": ""}, "version: expected a non-empty string"),
        ({"version": "v", "tresholds": {}}, "unknown key 'tresholds'"),
        ({"version": "v", "thresholds": {"alow_at": 0.9}}, "thresholds: unknown key 'alow_at'"),
        ({"version": "v", "thresholds": {"allow_at": "high"}}, "allow_at: expected a number"),
        ({"version": "v", "thresholds": {"hold_at": 1.5}}, r"hold_at: must be within \[0, 1\]"),
        (
            {"version": "v", "categories": {"beauty": {"scale_at": 0.9}}},
            "categories.beauty: thresholds must satisfy hold_at <= scale_at <= allow_at",
        ),
        (
            {"version": "v", "thresholds": {"max_expected_loss_cents": 12.5}},
            "max_expected_loss_cents: expected whole cents",
        ),
        ({"version": "v", "campaigns": [{"name": "c", "merchants": []}]}, "at least one merchant"),
        (
            {"version": "v", "campaigns": [{"name": "c", "merchants": ["m"], "starts": "soon"}]},
            "campaigns.c.starts: not an ISO-8601 time",
        ),
        (
            {
                "version": "v",
                "campaigns": [
                    {
                        "name": "c",
                        "merchants": ["m"],
                        "starts": "2026-11-12T00:00:00Z",
                        "ends": "2026-11-11T00:00:00Z",
                    }
                ],
            },
            "campaigns.c: ends must be after starts",
        ),
        ({"version": "v", "lists": {"block_users": "u1"}}, "lists.block_users: expected a list"),
        ({"version": "v", "lists": {"block_phones": []}}, "lists: unknown key 'block_phones'"),
        (
            {"version": "v", "limits": {"max_commission_tiers": 4}},
            "never paid more than 3 tiers deep",
        ),
        (
            {"version": "v", "limits": {"user_daily_rebate_cents": -1}},
            "limits.user_daily_rebate_cents: expected whole cents",
        ),
        (
            {"version": "v", "ledger": {"hold_timeout_action": "keep"}},
            "ledger.hold_timeout_action: expected 'release' or 'void'",
        ),
        (
            {"version": "v", "ledger": {"hold_timeout_hours": 800}},
            "hold_timeout_hours must not exceed clawback_within_days",
        ),
        (
            {"version": "v", "solvency": {"warning_ratio": 5, "critical_ratio": 5}},
            "solvency: critical_ratio must be above warning_ratio",
        ),
        (
            {"version": "v", "solvency": {"warning_ratio": -1}},
            "solvency.warning_ratio: expected a positive number",
        ),
        ({"version": "v", "solvency": {"period": 60}}, "solvency: unknown key 'period'"),
        (
            {"version": "v", "points": {"redeemable_share": 1.5}},
            r"points.redeemable_share: expected a share in \(0, 1\]",
        ),
        (
            {"version": "v", "points": {"redeemable_share": 0}},
            r"points.redeemable_share: expected a share in \(0, 1\]",
        ),
    ],
)
def test_invalid_policies_are_rejected_naming_the_key(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_document(document)


def test_policy_files_load_as_toml_or_json_and_round_trip(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        'version = "v2"\n[thresholds]\nallow_at = 0.9\n'
        '[[campaigns]]\nname = "c"\nmerchants = ["m1"]\nstarts = 2026-11-11T00:00:00Z\n'
    )
    policy = Policy.load(toml)
    assert policy.version == "v2" and policy.thresholds.allow_at == 0.9
    assert policy.campaigns[0].starts_ms == datetime(2026, 11, 11, tzinfo=UTC).timestamp() * 1000
    as_json = tmp_path / "p.json"
    as_json.write_text(policy.to_json())
    assert Policy.load(as_json) == policy
    broken = tmp_path / "broken.toml"
    broken.write_text("version = \n")
    with pytest.raises(PolicyError, match=r"broken.toml: not valid TOML"):
        Policy.load(broken)


def test_the_solvency_and_points_sections_read_as_exact_lines_and_round_trip() -> None:
    policy = Policy.from_document(
        {
            "version": "v",
            "solvency": {"period_minutes": 15, "warning_ratio": 3.5, "critical_ratio": 5.1},
            "points": {"redeemable_share": 0.25},
        }
    )
    assert policy.solvency.period_ms == 15 * 60_000
    assert policy.solvency.warning_line == Fraction(7, 2)
    assert policy.solvency.critical_line == Fraction(51, 10)
    assert policy.points.share == Fraction(1, 4)
    assert Policy.from_document(policy.document()) == policy
    # Left out, they take the shipped defaults (3:1, 5:1, hourly; 40% redeemable).
    bare = Policy.from_document({"version": "v"})
    assert (bare.solvency.warning_line, bare.solvency.critical_line) == (3, 5)
    assert bare.solvency.period_ms == 3_600_000 and bare.points.share == Fraction(2, 5)
    assert default_policy().solvency == bare.solvency


def test_a_policy_pickled_before_the_sections_existed_takes_their_defaults() -> None:
    policy = Policy(version="old")
    state = {k: v for k, v in policy.__dict__.items() if k not in ("solvency", "points")}

    class Before:
        """Pickles as a Policy of the release before (its state without the sections)."""

        def __reduce__(self) -> tuple[Any, ...]:
            return (object.__new__, (Policy,), state)

    blob = pickle.dumps(Before())
    assert b"solvency" not in blob
    assert pickle.loads(blob) == policy


def test_the_shipped_default_policy_is_valid_and_withholds_only_within_its_budget() -> None:
    """Shipped in budget mode without an expected-loss limit: the limit's holds are outside
    the friction budget (the risk team sets one with a backtest of its own history)."""
    policy = default_policy()
    assert policy.version and policy.budget is not None
    assert policy.thresholds.max_expected_loss_cents is None
    assert Policy.from_text(policy.to_json()) == policy


def test_a_suppression_allows_its_user_until_it_ends_and_a_block_list_still_blocks() -> None:
    doc = default_policy().document() | {
        "version": "s1",
        "suppressions": [
            {"user_id": "u1", "until": "2026-01-10T00:00:00Z", "reason": "fp", "by": "ann"}
        ],
    }
    policy = Policy.from_document(doc)
    until = int(datetime(2026, 1, 10, tzinfo=UTC).timestamp() * 1000)
    before = parse_transaction(tx(ts=until - 1))
    after = parse_transaction(tx(ts=until))
    other = parse_transaction(tx(ts=until - 1, user_id="u2"))
    assert policy.rule(before, 0.0, requested_cents=500) == (
        "allow",
        500,
        ["suppressed"],
        "suppressed",
    )
    assert policy.rule(after, 0.0, requested_cents=500)[0] == "block"
    assert policy.rule(other, 0.0, requested_cents=500)[0] == "block"
    blocked = Policy.from_document(doc | {"lists": {"block_users": ["u1"]}})
    assert blocked.rule(before, 0.0, requested_cents=500)[0] == "block"
    # The document round-trips, and a policy without suppressions writes none.
    assert Policy.from_document(policy.document()) == policy
    assert "suppressions" not in default_policy().document()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"until": "2026-01-10T00:00:00Z"}, "user_id"),
        ({"user_id": "u1"}, "needs `until`"),
        ({"user_id": "u1", "until_ms": 5, "colour": "red"}, "colour"),
    ],
)
def test_bad_suppressions_are_refused(entry: dict[str, Any], message: str) -> None:
    doc = default_policy().document() | {"suppressions": [entry]}
    with pytest.raises(PolicyError, match=message):
        Policy.from_document(doc)
