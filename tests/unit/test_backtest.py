"""Backtesting a policy draft against the live policy (rebate_guard/core/backtest.py)."""

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rebate_guard.contract.order import order_key
from rebate_guard.contract.records import Label, Transaction
from rebate_guard.contract.validation import parse_label, parse_signup, parse_transaction
from rebate_guard.core.backtest import (
    NO_CATEGORY,
    HistoryRow,
    UserHit,
    backtest,
    history_row,
    label_rows,
)
from rebate_guard.core.decider import Decider, PolicyInputs, Scorer
from rebate_guard.core.policy import Policy
from tests.factories import DAY, HOUR, T0, decision, label, signup, tx

FIXED = {"allow_at": 0.85, "scale_at": 0.8, "hold_at": 0.5}


def policy(version: str = "live", **doc: Any) -> Policy:
    return Policy.from_document({"version": version, "thresholds": FIXED, **doc})


def row(
    tx_id: str,
    weight: float,
    *,
    ts: int = T0,
    user: str = "u1",
    requested: int = 1_000,
    action: str = "allow",
    granted: int | None = None,
    **fields: Any,
) -> HistoryRow:
    """A stored payment decision: `requested` cents of rebate at trust `weight`."""
    values: dict[str, Any] = {
        "tx_id": tx_id,
        "ts": ts,
        "user_id": user,
        "merchant_id": "m1",
        "amount_cents": requested * 10,
        "rebate_rate": 0.1,
        "merchant_category": "food",
        "device_id": f"d-{user}",
        "card_id": f"c-{user}",
        "ip": "10.0.0.1",
        "trust_weight": weight,
        "trusted": True,
        "calibrated_risk": 0.0,
        "user_granted_24h": 0,
        "device_rebate_requested_24h": None,
        "failed": False,
        "fail_closed_action": "hold",
        "partition": 0,
        "action": action,
        "requested_cents": requested,
        "granted_cents": requested if granted is None and action == "allow" else granted or 0,
        "threshold_version": "fixed",
        "policy_version": "live",
    }
    values.update(fields)
    return HistoryRow(**values)


# The live policy's decisions on five payments of 1,000 cents, each by another user.
FIVE = [
    row("a", 0.95, user="ua", label="legit", label_ts=T0 + DAY),
    row("b", 0.90, user="ub", label="legit", label_ts=T0 + DAY),
    row("c", 0.82, user="uc", action="scale", granted=820),
    row("d", 0.60, user="ud", action="hold"),
    row("e", 0.30, user="ue", action="block", label="fraud", label_ts=T0 + DAY),
]


# --- the row ----------------------------------------------------------------------------------
def test_a_history_row_round_trips_through_compact_json() -> None:
    r = row(
        "tx-é",
        0.123456,
        merchant_category=None,
        device_id=None,
        device_rebate_requested_24h=4_200,
        rebate_rate=0.29,
        calibrated_risk=0.1 + 0.2,
        label="fraud",
        label_ts=T0 + 5,
    )
    data = r.to_json()
    assert isinstance(data, bytes) and b" " not in data and data.startswith(b"[1,")
    assert HistoryRow.from_json(data) == r
    assert HistoryRow.from_json(FIVE[2].to_json()) == FIVE[2]
    # A row written before the label fields existed reads with their defaults.
    older = data.rsplit(b",", 2)[0] + b"]"
    assert HistoryRow.from_json(older) == replace(r, label=None, label_ts=None)
    with pytest.raises(ValueError, match="format"):
        HistoryRow.from_json(b'[2,"x"]')
    with pytest.raises(ValueError, match="too few"):
        HistoryRow.from_json(b'[1,"x",1]')
    with pytest.raises(ValueError, match="newer"):
        HistoryRow.from_json(data[:-1] + b',"more"]')


def test_a_row_keeps_the_payment_the_stored_decision_and_what_the_decider_knew() -> None:
    t = parse_transaction(tx("t9", T0, merchant_category="beauty", card_id="c7"))
    d = decision("t9", "hold", requested=1_000, trust_weight=0.61, policy_version="p3")
    r = history_row(
        t,
        d,
        trusted=False,
        calibrated_risk=0.25,
        user_granted_24h=300,
        device_rebate_requested_24h=None,
        fail_closed_action="hold",
        partition=3,
    )
    assert r.transaction() == t
    assert (r.trust_weight, r.action, r.requested_cents, r.granted_cents) == (0.61, "hold", 1000, 0)
    assert (r.policy_version, r.threshold_version, r.partition) == ("p3", "fixed", 3)
    assert (r.trusted, r.calibrated_risk, r.user_granted_24h, r.failed) == (False, 0.25, 300, False)
    failed = history_row(
        t,
        decision("t9", "hold", reasons=["fail_closed:graph"]),
        trusted=True,
        calibrated_risk=0.0,
        user_granted_24h=0,
        device_rebate_requested_24h=None,
        fail_closed_action="block",
    )
    assert failed.failed and failed.fail_closed_action == "block" and failed.partition == 0
    with pytest.raises(ValueError, match="only payments"):
        history_row(parse_transaction(tx("r", kind="refund", ref_tx_id="t9")), d, **_inputs())
    with pytest.raises(ValueError, match="not on transaction"):
        history_row(t, decision("other"), **_inputs())


def _inputs() -> PolicyInputs:
    return {
        "trusted": True,
        "calibrated_risk": 0.0,
        "user_granted_24h": 0,
        "device_rebate_requested_24h": None,
        "fail_closed_action": "hold",
    }


def test_labels_join_rows_as_the_decider_joins_them() -> None:
    rows = [row("p1", 0.9, ts=T0), row("p2", 0.9, ts=T0 + DAY), row("q1", 0.9, user="u2")]
    events = [
        Label(ts=T0 + HOUR, label="legit", source="review", tx_id="p1", user_id=None),
        # user-level, at p2's ts: it comes before p2 in event order, so p1 alone is the user's
        Label(ts=T0 + DAY, label="fraud", source="review", tx_id=None, user_id="u1"),
        Label(ts=T0 + 2 * DAY, label="legit", source="review", tx_id="q1", user_id=None),
        Label(ts=T0 + HOUR, label="legit", source="review", tx_id="q1", user_id=None),
        Label(ts=T0, label="fraud", source="review", tx_id="unknown", user_id=None),
    ]
    got = {r.tx_id: (r.label, r.label_ts) for r in label_rows(rows, events)}
    # A fraud label replaces a legitimate one; of two alike the earlier stands.
    assert got == {"p1": ("fraud", T0 + DAY), "p2": (None, None), "q1": ("legit", T0 + HOUR)}


# --- fixed thresholds, by hand -----------------------------------------------------------------
def test_raising_allow_at_moves_payments_from_allow_to_scale_with_exact_money() -> None:
    live = policy()
    draft = policy("draft", thresholds={**FIXED, "allow_at": 0.92})
    report = backtest(FIVE, live=live, draft=draft)
    # live: allow 1000, allow 1000, scale 820, hold 0, block 0
    # draft: allow 1000, scale 900 (0.90 < 0.92), scale 820, hold 0, block 0
    assert report.live.actions == {"allow": 2, "scale": 1, "hold": 1, "block": 1}
    assert report.draft.actions == {"allow": 1, "scale": 2, "hold": 1, "block": 1}
    lm, dm = report.live.money, report.draft.money
    assert (lm.requested_cents, lm.granted_cents, lm.withheld_cents) == (5000, 2820, 2180)
    assert (dm.requested_cents, dm.granted_cents, dm.withheld_cents) == (5000, 2720, 2280)
    assert lm.withheld_by_label == {"fraud": 1000, "legit": 0, "unlabelled": 1180}
    assert dm.withheld_by_label == {"fraud": 1000, "legit": 100, "unlabelled": 1180}
    assert (lm.legit_friction, dm.legit_friction) == (0.0, 100 / 2000)
    assert lm.fraud_withheld_share == dm.fraud_withheld_share == 1.0
    assert {a: m.withheld_cents for a, m in report.draft.by_action.items()} == {
        "allow": 0,
        "scale": 100 + 180,
        "hold": 1000,
        "block": 1000,
    }
    assert report.diff.changed == 1 and report.diff.transitions == {("allow", "scale"): 1}
    assert report.diff.granted_changed == 1 and report.diff.granted_delta_cents == -100
    assert report.diff.users_newly_hit == 1 and report.diff.users_no_longer_hit == 0
    assert report.diff.top_newly_hit == [UserHit("ub", 1, 100, 0, 100)]
    assert report.agreement == report.granted_agreement == 1.0
    assert report.labelled == {"fraud": 1, "legit": 2, "unlabelled": 2}
    # The same policy as draft changes nothing.
    same = backtest(FIVE, live=live, draft=live)
    assert same.diff.changed == same.diff.users_newly_hit == same.diff.granted_delta_cents == 0


def test_a_block_list_entry_blocks_whatever_the_weight_and_names_the_users_hit() -> None:
    rows = [
        row("a1", 0.99, user="ua", requested=700),
        row("a2", 0.99, user="ua", requested=500, card_id="stolen", label="fraud", label_ts=T0),
        row("b1", 0.99, user="ub", requested=2_000, card_id="stolen"),
        row("d1", 0.60, user="ud", action="hold", card_id="stolen"),  # held already
    ]
    draft = policy("draft", lists={"block_cards": ["stolen"]})
    report = backtest(rows, live=policy(), draft=draft)
    assert report.draft.actions == {"allow": 1, "scale": 0, "hold": 0, "block": 3}
    assert report.diff.transitions == {("allow", "block"): 2, ("hold", "block"): 1}
    assert report.draft.money.withheld_cents == 500 + 2000 + 1000
    assert report.draft.money.withheld_by_label == {"fraud": 500, "legit": 0, "unlabelled": 3000}
    # ud was withheld from under live already; ub lost the most.
    assert report.diff.top_newly_hit == [
        UserHit("ub", 1, 2000, 0, 0),
        UserHit("ua", 1, 500, 500, 0),
    ]
    assert report.diff.users_newly_hit == 2


def test_category_thresholds_change_only_their_category() -> None:
    rows = [
        row("f1", 0.9, merchant_category="food"),
        row("b1", 0.9, user="u2", merchant_category="beauty"),
        row("b2", 0.97, user="u3", merchant_category="beauty"),
        row("n1", 0.9, user="u4", merchant_category=None),
    ]
    draft = policy("draft", categories={"beauty": {"allow_at": 0.95, "scale_at": 0.93}})
    report = backtest(rows, live=policy(), draft=draft)
    assert report.diff.transitions == {("allow", "hold"): 1}
    by_category = {k: m.withheld_cents for k, m in report.draft.by_category.items()}
    assert by_category == {"food": 0, "beauty": 1000, NO_CATEGORY: 0}
    assert report.draft.by_category["beauty"].payments == 2
    assert {k: m.withheld_cents for k, m in report.live.by_category.items()} == {
        "food": 0,
        "beauty": 0,
        NO_CATEGORY: 0,
    }


def test_a_campaign_sets_the_thresholds_of_its_merchants_in_its_period_only() -> None:
    rows = [
        row("in", 0.6, merchant_id="m9", action="hold", ts=T0 + HOUR),
        row("before", 0.6, user="u2", merchant_id="m9", action="hold", ts=T0 - HOUR),
        row("elsewhere", 0.6, user="u3", merchant_id="m1", action="hold", ts=T0 + HOUR),
    ]
    campaign = {"name": "launch", "merchants": ["m9"], "starts_ms": T0, "ends_ms": T0 + DAY}
    draft = policy("draft", campaigns=[{**campaign, "allow_at": 0.55, "scale_at": 0.5}])
    report = backtest(rows, live=policy(), draft=draft)
    assert report.diff.transitions == {("hold", "allow"): 1}
    assert report.diff.granted_delta_cents == 1000
    assert report.diff.users_no_longer_hit == 1 and report.diff.users_newly_hit == 0


def test_daily_caps_are_recomputed_from_what_each_policy_grants() -> None:
    """Live caps the user at 500 a day: 300, then 200 (scaled), then nothing, and a day
    later 400 again. The draft also blocks the first payment's card: the 300 it no longer
    grants leaves room for the next ones (each row's stored cap input, corrected by what the
    draft granted otherwise in the 24 h before it)."""
    capped = {"user_daily_rebate_cents": 500}
    rows = [
        row("p1", 0.99, requested=300, card_id="x", user_granted_24h=0),
        row(
            "p2",
            0.99,
            ts=T0 + HOUR,
            requested=300,
            action="scale",
            granted=200,
            user_granted_24h=300,
        ),
        row("p3", 0.99, ts=T0 + 2 * HOUR, requested=300, action="block", user_granted_24h=500),
        row("p4", 0.99, ts=T0 + DAY + HOUR, requested=400, user_granted_24h=0),
    ]
    live = policy(limits=capped)
    draft = policy("draft", limits=capped, lists={"block_cards": ["x"]})
    report = backtest(rows, live=live, draft=draft)
    assert report.agreement == report.granted_agreement == 1.0
    # draft: p1 blocked (-300 on live's grants); p2 finds 0 used: 300 (+100); p3 finds
    # 500 - 300 + 100 = 300 used: 200 (+200); p4, a day after p1 and p2 (their
    # corrections have left its 24 h), finds p3's +200: 300 of its 400.
    assert [d for d in report.draft.actions.items() if d[1]] == [
        ("allow", 1),
        ("scale", 2),
        ("block", 1),
    ]
    assert report.draft.money.granted_cents == 0 + 300 + 200 + 300
    assert report.diff.transitions == {
        ("allow", "block"): 1,
        ("scale", "allow"): 1,
        ("block", "scale"): 1,
        ("allow", "scale"): 1,
    }


def test_a_payment_that_could_not_be_scored_fails_closed_unless_a_list_blocks_it() -> None:
    failed = row("f", 0.0, action="hold", failed=True, threshold_version="fail_closed")
    assert backtest([failed], live=policy(), draft=policy()).agreement == 1.0
    blocked = backtest([failed], live=policy(), draft=policy("d", lists={"block_users": ["u1"]}))
    assert blocked.diff.transitions == {("hold", "block"): 1}
    allowed = backtest([failed], live=policy(), draft=policy("d", lists={"allow_users": ["u1"]}))
    assert allowed.diff.changed == 0  # failing closed comes before an allow list


def test_the_order_of_the_rows_does_not_matter_and_repeats_count_once() -> None:
    rows = [*FIVE, *(row(f"x{i}", i / 20, ts=T0 + i * HOUR, user=f"v{i % 3}") for i in range(20))]
    draft = policy(
        "draft",
        thresholds={"allow_at": 0.95, "scale_at": 0.9, "hold_at": 0.4},
        limits={"user_daily_rebate_cents": 1_500},
    )
    first = backtest(rows, live=policy(), draft=draft).to_json()
    shuffled = [*rows[::-1], replace(rows[3], ts=rows[3].ts + 1)]  # a later repeat of a tx_id
    random.Random(4).shuffle(shuffled)
    again = backtest(shuffled, live=policy(), draft=draft).to_json()
    assert again.pop("duplicates") == 1 and first.pop("duplicates") == 0
    assert again == first
    assert first["draft"]["money"]["withheld_cents"] > first["live"]["money"]["withheld_cents"]


def test_rows_before_since_only_warm_up() -> None:
    capped = policy("d", limits={"user_daily_rebate_cents": 1_000})
    rows = [
        row("early", 0.99, ts=T0 - HOUR),
        row("late", 0.99, ts=T0 + HOUR, user_granted_24h=1_000),
    ]
    report = backtest(rows, live=policy(), draft=capped, since_ms=T0)
    assert (report.rows, report.warmup_rows) == (1, 1)
    # the early grant (1,000, in the draft too) fills the cap; only the late payment counts
    assert report.draft.actions == {"allow": 0, "scale": 0, "hold": 0, "block": 1}
    assert report.draft.money.requested_cents == 1000
    assert backtest(rows, live=policy(), draft=capped).draft.money.requested_cents == 2000


def test_the_report_is_json_ready() -> None:
    import json

    report = backtest(
        FIVE, live=policy(), draft=policy("draft", thresholds={**FIXED, "allow_at": 0.92})
    ).to_json()
    assert json.loads(json.dumps(report)) == report
    assert report["diff"]["transitions"] == {"allow->scale": 1}
    assert report["diff"]["top_newly_hit"][0] == {
        "user_id": "ub",
        "payments": 1,
        "withheld_cents": 100,
        "fraud_withheld_cents": 0,
        "legit_withheld_cents": 100,
    }
    assert report["live"]["by_action"]["hold"]["withheld_by_label"]["unlabelled"] == 1000
    assert report["draft"]["policy_version"] == "draft" and report["agreement"] == 1.0


# --- budget mode --------------------------------------------------------------------------------
def _budget(version: str, share: float) -> Policy:
    return policy(
        version,
        budget={
            "legit_friction": share,
            "window_days": 1,
            "update_minutes": 60,
            "min_payments": 50,
        },
    )


def test_a_larger_friction_budget_withholds_at_least_as_much_legit_money() -> None:
    rng = random.Random(7)
    rows = []
    for i in range(2_000):
        fraud = rng.random() < 0.05
        weight = round(rng.random() * 0.6 if fraud else 1 - 0.3 * rng.random() ** 3, 6)
        rows.append(
            row(
                f"t{i}",
                weight,
                ts=T0 + i * 2 * 60_000,
                user=f"u{i % 97}",
                requested=rng.randint(100, 3_000),
                label="fraud" if fraud else "legit",
                label_ts=T0 + i * 2 * 60_000 + 6 * HOUR,
            )
        )
    low, high = _budget("low", 0.01), _budget("high", 0.05)
    report = backtest(rows, live=low, draft=high)
    lo, hi = report.live.money, report.draft.money
    assert hi.withheld_by_label["legit"] > lo.withheld_by_label["legit"] > 0
    assert hi.withheld_by_label["fraud"] >= lo.withheld_by_label["fraud"]
    # The cuts follow the budgets: about 1% and 5% of the legitimate money withheld (a bit
    # less: the fraud of the last 6 h, not labelled yet, uses up some of the budget).
    assert lo.legit_friction is not None and hi.legit_friction is not None
    assert 0.003 < lo.legit_friction < 0.02 and 0.02 < hi.legit_friction < 0.08
    # A calibrated classifier's fraud probability, stored per row, counts too: the money it
    # calls fraud does not use up the budget either, so the cut withholds more.
    calibrated = [replace(r, calibrated_risk=1 - r.trust_weight) for r in rows]
    sure = backtest(calibrated, live=low, draft=high)
    assert sure.live.money.withheld_cents > lo.withheld_cents
    assert sure.draft.money.withheld_cents > hi.withheld_cents
    # Without the fraud labels all the fraud below the cut uses up the budget: less withheld.
    unlabelled = [replace(r, label=None, label_ts=None) for r in rows]
    blind = backtest(unlabelled, live=low, draft=high).draft.money
    assert blind.withheld_cents < hi.withheld_cents


# --- agreement with the real decider --------------------------------------------------------------
def _stream(seed: int) -> list[Any]:
    """40 users (9 on three shared devices, their payments mostly labelled fraud), 600
    payments 10 minutes apart at five merchants, labels 1-30 h later; in event order."""
    rng = random.Random(seed)
    events: list[Any] = []

    def device(u: int) -> str:
        return f"farm{u % 3}" if u < 9 else f"d{u}"

    for u in range(40):
        events.append(
            parse_signup(signup(f"u{u}", T0 - rng.randint(1, 20) * DAY, device_id=device(u)))
        )
    for i in range(600):
        u, ts = rng.randrange(40), T0 + i * 600_000
        events.append(
            parse_transaction(
                tx(
                    f"t{i:04d}",
                    ts,
                    user_id=f"u{u}",
                    device_id=device(u),
                    card_id=f"c{u}",
                    merchant_id=f"m{rng.randrange(5)}",
                    merchant_category=rng.choice(["food", "beauty", None]),
                    amount_cents=rng.randint(1_000, 60_000),
                )
            )
        )
        if (u < 9 and rng.random() < 0.7) or rng.random() < 0.1:
            verdict = "fraud" if u < 9 else "legit"
            events.append(
                parse_label(label(f"t{i:04d}", ts + rng.randint(1, 30) * HOUR, label=verdict))
            )
    keyed = sorted(((e, n) for n, e in enumerate(events)), key=lambda p: order_key(*p))
    return [e for e, _ in keyed]


def _decided(live: Policy, events: list[Any]) -> list[HistoryRow]:
    """The rows the worker would store: the real decider, a row per payment decision with
    what it fed the policy, labels joined."""
    scorer = Scorer(decider=Decider(policy=live))
    rows, labels = [], []
    for event in events:
        d = scorer.apply(event, 0)
        if isinstance(event, Transaction):
            assert d is not None
            rows.append(history_row(event, d, **scorer.decider.policy_inputs()))
        elif isinstance(event, Label):
            labels.append(event)
    return label_rows(rows, labels)


CAPPED = {"user_daily_rebate_cents": 5_000}


@pytest.mark.parametrize(
    "budget",
    [None, {"legit_friction": 0.1, "window_days": 2, "update_minutes": 60, "min_payments": 50}],
)
def test_re_deciding_the_real_deciders_rows_under_its_policy_reproduces_them(
    budget: dict[str, Any] | None,
) -> None:
    doc: dict[str, Any] = {"thresholds": {"allow_at": 0.9, "scale_at": 0.7, "hold_at": 0.5}}
    live = policy(limits=CAPPED, **doc, **({"budget": budget} if budget else {}))
    rows = _decided(live, _stream(0))
    assert len(rows) == 600
    report = backtest(rows, live=live, draft=live)
    assert report.agreement == report.granted_agreement == 1.0
    assert report.disagreements == {} and report.other_policy_versions == 0
    assert report.diff.changed == report.diff.granted_changed == report.diff.users_newly_hit == 0
    assert report.live.to_json() == report.draft.to_json()
    # The stored money is the re-decided money.
    assert report.live.money.granted_cents == sum(r.granted_cents for r in rows)
    # What made it so: the caps bit (so their inputs mattered), and in budget mode the cuts
    # decided and the fraud labels moved them, and the classifier became trusted midway.
    assert sum(r.user_granted_24h > 0 for r in rows) > 100
    assert (
        backtest([replace(r, user_granted_24h=0) for r in rows], live=live, draft=live).agreement
        < 0.9
    )
    if budget is not None:
        assert sum(r.threshold_version.startswith("budget:") for r in rows) > 500
        assert 0 < sum(r.trusted for r in rows) < 600
        blind = [replace(r, label=None, label_ts=None) for r in rows]
        assert backtest(blind, live=live, draft=live).agreement < 1.0
        merged = [replace(r, partition=int(r.user_id[1:]) % 2) for r in rows]
        assert backtest(merged, live=live, draft=live).agreement < 1.0
        # Reporting on the last days: the earlier rows warm up the budget's window; without
        # them its cuts start from nothing.
        since = T0 + 2 * DAY
        warm = backtest(rows, live=live, draft=live, since_ms=since)
        assert (warm.rows, warm.warmup_rows, warm.agreement) == (312, 288, 1.0)
        later = [r for r in rows if r.ts >= since]
        assert backtest(later, live=live, draft=live).agreement < 1.0


def test_agreement_falls_for_rows_decided_under_another_policy_version() -> None:
    old = policy("old", thresholds={"allow_at": 0.95, "scale_at": 0.9, "hold_at": 0.5})
    rows = _decided(old, _stream(1))
    live = policy("new")
    report = backtest(rows, live=live, draft=live)
    assert report.other_policy_versions == 600
    assert report.agreement is not None and report.agreement < 1.0
    assert sum(report.disagreements.values()) == round((1 - report.agreement) * 600)
    assert len(report.disagreeing_tx_ids) == 20


def test_the_decider_says_what_it_fed_the_policy_for_its_last_payment() -> None:
    import pickle

    scorer = Scorer(decider=Decider(policy=policy(limits=CAPPED), fail_closed_action="block"))
    with pytest.raises(LookupError):
        scorer.decider.policy_inputs()
    first = scorer.apply(parse_transaction(tx("p1", T0, amount_cents=30_000)), 0)
    assert first is not None and first.rebate_granted_cents == 3_000
    scorer.apply(parse_transaction(tx("p2", T0 + HOUR, amount_cents=30_000)), 0)
    inputs = scorer.decider.policy_inputs()
    assert inputs["user_granted_24h"] == 3_000  # p1's grant, not p2's own
    assert inputs["device_rebate_requested_24h"] == 3_000  # p1's request on device d1
    assert inputs["fail_closed_action"] == "block"
    assert inputs["trusted"] is False and inputs["calibrated_risk"] == 0.0
    # A checkpoint written before it existed restores without it.
    state = pickle.loads(pickle.dumps(scorer.decider)).__dict__
    del state["last_inputs"]
    restored = Decider.__new__(Decider)
    restored.__setstate__(state)
    assert restored.last_inputs is None


@given(
    weight=st.floats(0, 1),
    risk=st.floats(0, 1),
    granted_24h=st.integers(0, 10**9),
    device=st.one_of(st.none(), st.integers(0, 10**9)),
    trusted=st.booleans(),
    category=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    user=st.text(min_size=1, max_size=12),
    reasons=st.lists(st.sampled_from(["fail_closed:model", "fail_closed:graph", "rule:x"])),
)
def test_the_fast_row_encoder_writes_the_rows_bytes(
    weight: float, risk: float, granted_24h: int, device: int | None, trusted: bool,
    category: str | None, user: str, reasons: list[str],
) -> None:  # fmt: skip
    from rebate_guard.contract.records import Decision
    from rebate_guard.core.backtest import PAYMENT_FIELDS, history_row, history_row_json

    payment = Transaction(**tx(user_id=user, merchant_category=category))
    decision = Decision(
        tx_id=payment.tx_id, ts=payment.ts, user_id=user, merchant_id=payment.merchant_id,
        risk=1 - weight, trust_weight=weight, action="hold", rebate_requested_cents=100,
        rebate_granted_cents=0, reasons=reasons, model_version="m", decided_at=0,
        policy_version="p", threshold_version="fixed",
    )  # fmt: skip
    inputs = PolicyInputs(
        trusted=trusted, calibrated_risk=risk, user_granted_24h=granted_24h,
        device_rebate_requested_24h=device, fail_closed_action="block",
    )  # fmt: skip
    # The row built field by field, by name.
    expected = HistoryRow(
        **{name: getattr(payment, name) for name in PAYMENT_FIELDS}, trust_weight=weight,
        trusted=trusted, calibrated_risk=risk, user_granted_24h=granted_24h,
        device_rebate_requested_24h=device,
        failed="fail_closed:model" in reasons or "fail_closed:graph" in reasons,
        fail_closed_action="block", partition=3, action="hold", requested_cents=100,
        granted_cents=0, threshold_version="fixed", policy_version="p",
    )  # fmt: skip
    assert history_row(payment, decision, partition=3, **inputs) == expected
    assert history_row_json(payment, decision, partition=3, **inputs) == expected.to_json()
