"""The rebate ledger: holds, labels, refunds and timeouts move exact cents, once."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rebate_guard.contract.records import Decision, Label, RebateAdjustment, build
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.ledger import Ledger, LedgerMismatch, reconcile
from rebate_guard.core.policy import LedgerTerms
from rebate_guard.tools.replay import replay
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from tests.factories import DAY, HOUR, T0, decision, tx

TERMS = LedgerTerms(hold_timeout_hours=72, refund_voids_within_hours=24, clawback_within_days=30)


def _decision(
    tx_id: str,
    action: str,
    requested: int = 1_000,
    granted: int | None = None,
    user: str = "u1",
    ts: int = T0,
) -> Decision:
    return decision(tx_id, action, requested, granted, user_id=user, ts=ts)


def _label(ts: int, verdict: str, tx_id: str | None = None, user: str | None = None) -> Label:
    return Label(ts=ts, label=verdict, source="review", tx_id=tx_id, user_id=user)


def _refund(tx_id: str, ref: str, ts: int) -> Any:
    return parse_transaction(tx(tx_id, ts, kind="refund", ref_tx_id=ref))


def _balances(a: RebateAdjustment) -> tuple[str, int, int, int, int]:
    return a.kind, a.cents, a.granted_cents, a.held_cents, a.voided_cents


def test_labels_resolve_holds_and_claw_back_grants() -> None:
    ledger = Ledger()
    for d in (_decision("held", "hold"), _decision("paid", "allow"), _decision("cut", "scale")):
        ledger.record(d, TERMS)
    legit = ledger.label(_label(T0 + HOUR, "legit", tx_id="held"), TERMS, decided_at=7)
    assert [_balances(a) for a in legit] == [("release", 1_000, 1_000, 0, 0)]
    assert legit[0].adjustment_id == "held:hold" and legit[0].cause == "label:legit"
    fraud = ledger.label(_label(T0 + 2 * HOUR, "fraud", tx_id="cut"), TERMS, decided_at=7)
    # Scaled: 500 granted, 500 voided at decision; the fraud label takes the 500 back.
    assert [_balances(a) for a in fraud] == [("clawback", 500, 0, 0, 1_000)]
    assert fraud[0].adjustment_id == "cut:clawback"
    again = ledger.label(_label(T0 + 3 * HOUR, "fraud", tx_id="cut"), TERMS, decided_at=7)
    assert again == []  # nothing left to take back: never twice


def test_a_fraud_label_on_a_user_reaches_each_of_their_payments() -> None:
    ledger = Ledger()
    ledger.record(_decision("a", "allow", user="u1"), TERMS)
    ledger.record(_decision("b", "hold", user="u1", ts=T0 + 1), TERMS)
    ledger.record(_decision("c", "allow", user="u2"), TERMS)
    out = ledger.label(_label(T0 + DAY, "fraud", user="u1"), TERMS, decided_at=0)
    assert {(a.tx_id, a.kind, a.cents) for a in out} == {
        ("a", "clawback", 1_000),
        ("b", "void", 1_000),
    }


def test_a_quick_refund_voids_the_rebate_and_a_late_one_does_not() -> None:
    ledger = Ledger()
    ledger.record(_decision("p1", "allow"), TERMS)
    ledger.record(_decision("p2", "hold"), TERMS)
    ledger.record(_decision("p3", "allow"), TERMS)
    quick = ledger.refund(_refund("r1", "p1", T0 + 23 * HOUR), TERMS, decided_at=0)
    assert [(a.kind, a.cents, a.cause) for a in quick] == [("clawback", 1_000, "refund:r1")]
    held = ledger.refund(_refund("r2", "p2", T0 + HOUR), TERMS, decided_at=0)
    assert [(a.kind, a.cents) for a in held] == [("void", 1_000)]
    assert ledger.refund(_refund("r3", "p3", T0 + 25 * HOUR), TERMS, decided_at=0) == []
    assert ledger.refund(_refund("r4", "unknown", T0 + HOUR), TERMS, decided_at=0) == []


def test_holds_time_out_as_the_policy_says() -> None:
    for action, granted in (("release", 1_000), ("void", 0)):
        terms = LedgerTerms(hold_timeout_hours=72, hold_timeout_action=action)
        ledger = Ledger()
        ledger.record(_decision("h", "hold"), terms)
        assert ledger.due(T0 + 72 * HOUR - 1, terms, decided_at=0) == []
        out = ledger.due(T0 + 72 * HOUR, terms, decided_at=0)
        assert [(a.kind, a.granted_cents, a.cause, a.ts) for a in out] == [
            (action, granted, "hold_timeout", T0 + 72 * HOUR)
        ]
        assert ledger.due(T0 + 100 * HOUR, terms, decided_at=0) == []  # resolved once
        # A label after the timeout finds nothing held.
        assert ledger.label(_label(T0 + 80 * HOUR, "legit", tx_id="h"), terms, decided_at=0) == []


def test_settled_payments_are_forgotten_and_the_ledger_pickles() -> None:
    ledger = Ledger()
    for i in range(5):
        ledger.record(_decision(f"p{i}", "allow", ts=T0 + i * DAY), TERMS)
    ledger.due(
        T0 + 32 * DAY, TERMS, decided_at=0
    )  # payments of the first two days are past 30 days
    assert list(ledger.entries) == ["p2", "p3", "p4"]
    assert ledger.by_user["u1"] == ["p2", "p3", "p4"]
    copy = pickle.loads(pickle.dumps(ledger))
    assert copy.label(
        _label(T0 + 33 * DAY, "fraud", user="u1"), TERMS, decided_at=0
    ) == ledger.label(_label(T0 + 33 * DAY, "fraud", user="u1"), TERMS, decided_at=0)


actions = st.sampled_from(["allow", "scale", "hold", "block"])
steps = st.lists(
    st.tuples(
        st.sampled_from(["pay", "legit", "fraud", "user_fraud", "refund", "time"]),
        st.integers(0, 5),
        actions,
        st.integers(0, 50_000),
        st.integers(1, 80),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_every_transaction_reconciles_at_every_step(
    plan: list[tuple[str, int, str, int, int]],
) -> None:
    """granted + held + voided = requested after every adjustment; a hold is resolved and a
    grant clawed back at most once; no balance goes negative; replaying the adjustments on
    the decisions gives the ledger's balances."""
    ledger, now = Ledger(), T0
    decisions: dict[str, Decision] = {}
    seen: set[str] = set()
    for step, n, action, requested, hours in plan:
        now += hours * HOUR // 4
        tx_id = f"p{n}"
        if step == "pay" and tx_id not in decisions:
            granted = {"allow": requested, "scale": requested * 7 // 10}.get(action, 0)
            d = _decision(tx_id, action, requested, granted, user=f"u{n % 2}", ts=now)
            decisions[tx_id] = d
            ledger.record(d, TERMS)
            out = []
        elif step == "legit" or step == "fraud":
            out = ledger.label(_label(now, step, tx_id=tx_id), TERMS, decided_at=0)
        elif step == "user_fraud":
            out = ledger.label(_label(now, "fraud", user=f"u{n % 2}"), TERMS, decided_at=0)
        elif step == "refund":
            out = ledger.refund(_refund(f"r{now}", tx_id, now), TERMS, decided_at=0)
        else:
            out = ledger.due(now, TERMS, decided_at=0)
        for a in out:
            assert a.adjustment_id not in seen
            seen.add(a.adjustment_id)
            assert min(a.granted_cents, a.held_cents, a.voided_cents, a.cents) >= 0
            assert a.granted_cents + a.held_cents + a.voided_cents == a.requested_cents
            assert a.requested_cents == decisions[a.tx_id].rebate_requested_cents
    for tx_id, entry in ledger.entries.items():
        assert entry.granted + entry.held + entry.voided == decisions[tx_id].rebate_requested_cents


def test_reconcile_rebuilds_the_balances_and_names_what_does_not_add_up() -> None:
    ledger = Ledger()
    decisions = [_decision("a", "hold"), _decision("b", "scale"), _decision("r", "allow", 0)]
    for d in decisions:
        ledger.record(d, TERMS)
    made = ledger.label(_label(T0 + HOUR, "legit", tx_id="a"), TERMS, decided_at=0)
    made += ledger.label(_label(T0 + HOUR, "fraud", tx_id="a"), TERMS, decided_at=0)
    made += ledger.refund(_refund("r", "b", T0 + HOUR), TERMS, decided_at=0)
    assert reconcile(decisions, made) == {
        "a": (1_000, 0, 0, 1_000),  # released, then clawed back
        "b": (1_000, 0, 0, 1_000),
        "r": (0, 0, 0, 0),
    }
    with pytest.raises(LedgerMismatch, match="a:hold: applied twice"):
        reconcile(decisions, [*made, made[0]])
    wrong = build(RebateAdjustment, **{**made[-1].asdict(), "cents": 400})
    with pytest.raises(LedgerMismatch, match="b:clawback: moves 400 of 500"):
        reconcile(decisions, [*made[:-1], wrong])


def test_replay_writes_adjustments_that_reconcile_with_its_decisions(tmp_path: Path) -> None:
    config = WorldConfig(
        seed=5, n_users=1_500, n_merchants=60, days=10, target_transactions=8_000, fraud_scale=10
    )
    paths = write_world(simulate_world(config), tmp_path / "world")
    summary = replay(
        paths["transactions"], tmp_path / "out", paths["signups"], paths["labels"], progress=None
    )
    decisions = [
        build(Decision, **row)
        for row in pl.read_parquet(summary.outputs["decisions"]).iter_rows(named=True)
    ]
    adjustments = [
        build(RebateAdjustment, **row)
        for row in pl.read_parquet(summary.outputs["adjustments"]).iter_rows(named=True)
    ]
    books = reconcile(decisions, adjustments)
    assert len(books) == len(decisions)
    assert {a.kind for a in adjustments} >= {"void", "clawback"}
    assert any(a.cause.startswith("refund:") for a in adjustments)
    assert any(a.cause.startswith("label:") for a in adjustments)
