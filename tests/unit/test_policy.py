import pytest
from hypothesis import given
from hypothesis import strategies as st

from rebate_guard.policy import Policy, PolicyError, trust_weight

unit = st.floats(0, 1)


@given(unit, unit, unit)
def test_trust_weight_is_monotone_in_each_signal(risk: float, ring: float, bump: float) -> None:
    w = trust_weight(risk, ring)
    assert 0.0 <= w <= 1.0
    assert trust_weight(min(1.0, risk + bump), ring) <= w
    assert trust_weight(risk, min(1.0, ring + bump)) <= w


def test_actions_follow_thresholds_and_money_is_whole_cents() -> None:
    policy = Policy(allow_at=0.8, scale_at=0.5, hold_at=0.2)
    assert policy.decide(0.9, 1000) == ("allow", 1000)
    assert policy.decide(0.6667, 1000) == ("scale", 666)
    assert policy.decide(0.3, 1000) == ("hold", 0)
    assert policy.decide(0.1, 1000) == ("block", 0)


def test_inconsistent_thresholds_are_rejected_with_a_clear_message() -> None:
    with pytest.raises(PolicyError, match="hold_at <= scale_at <= allow_at"):
        Policy(allow_at=0.4, scale_at=0.5, hold_at=0.2)
