"""The simulated risk team reviewing the sample of withheld payments (`ReviewDesk`), and
replay applying its labels (issue #21)."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from detectors.base import Features
from detectors.risk import Assessment, RiskModel
from rebate_guard.contract.records import Decision, Label
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.budget import sampled_for_review
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.core.points import POINTS_THRESHOLDS
from rebate_guard.core.policy import (
    BELOW_CUT,
    DEFAULT_POLICY,
    REVIEW_SAMPLE,
    Policy,
    default_policy,
)
from rebate_guard.tools.generalization import run_world
from rebate_guard.tools.replay import replay
from rebate_guard.tools.simulator import ReviewDesk, WorldConfig
from tests.factories import HOUR, T0, decision, signup, tx

END = 2**62
#: Seeds outside both splits (`tools.generalization`): a test tunes nothing.
TEST_SEED = 900


def _desk(truth: dict[str, bool], **config: float) -> ReviewDesk:
    return ReviewDesk(truth, config=WorldConfig(**config))  # type: ignore[arg-type]


def _sampled(tx_id: str, **overrides: Any) -> Decision:
    """A hold of the budget's review sample, as the policy decides it (`REVIEW_SAMPLE`)."""
    return decision(tx_id, "hold", reasons=[BELOW_CUT, REVIEW_SAMPLE], **overrides)


def _decided(policy: Policy, tx_id: str) -> Decision:
    """`tx_id`'s decision by `policy`'s fixed thresholds at a weight they block."""
    action, granted, reasons, version = policy.rule(
        parse_transaction(tx(tx_id)), 0.05, requested_cents=1_000, cut=None, trusted=True
    )
    return decision(tx_id, action, granted=granted, reasons=reasons, threshold_version=version)


def test_the_desk_labels_exactly_the_holds_whose_decision_says_they_are_in_the_sample() -> None:
    ids = [f"t{i}" for i in range(60)]
    desk = _desk(dict.fromkeys(ids, False))
    sampled = set()
    for i, tx_id in enumerate(ids):
        kind = i % 6
        if kind == 0:
            desk.decided(_sampled(tx_id))
            sampled.add(tx_id)
        elif kind == 1:  # held by the cut, not drawn
            desk.decided(decision(tx_id, "hold", reasons=[BELOW_CUT]))
        elif kind == 2:
            desk.decided(decision(tx_id, "allow"))
        elif kind == 3:  # a block that names the sample is no hold: nobody reviews it
            desk.decided(decision(tx_id, "block", reasons=[REVIEW_SAMPLE]))
        elif kind == 4:  # a points request, withheld by the points policy
            desk.decided(decision(tx_id, "hold", threshold_version=POINTS_THRESHOLDS))
        else:  # a refund: no rebate asked, none withheld
            desk.decided(_sampled(tx_id, requested=0))
    desk.decided(_sampled("not-in-truth"))
    assert {label.tx_id for label in desk.due(END)} == sampled
    assert desk.delivered == len(sampled) == 10 and desk.due(END) == []


def test_the_desk_reviews_what_the_policy_draws_at_its_review_share() -> None:
    """The policy's sample is the desk's: at share 0.3 the holds `sampled_for_review`
    draws are reviewed, the others not; at share 0 the weight blocks and nobody reviews."""
    ids = [f"t{i}" for i in range(300)]
    desk = _desk(dict.fromkeys(ids, False))
    for tx_id in ids:
        desk.decided(_decided(_reviewing_policy(0.3), tx_id))
    labelled = {label.tx_id for label in desk.due(END)}
    assert labelled == {tx_id for tx_id in ids if sampled_for_review(tx_id, 0.3)}
    assert 60 < len(labelled) < 120
    nobody = _desk({"t1": True})
    unsampled = _decided(_reviewing_policy(0.0), "t1")
    nobody.decided(unsampled)
    assert unsampled.action == "block" and nobody.due(END) == []


@pytest.mark.parametrize(
    ("legit_rate", "fraud_rate", "legit_says", "fraud_says"),
    [
        (0.0, 0.0, "legit", "fraud"),
        (1.0, 0.0, "fraud", "fraud"),
        (0.0, 1.0, "legit", "legit"),
        (1.0, 1.0, "fraud", "legit"),
    ],
)
def test_reviews_say_the_truth_but_at_the_worlds_mislabel_rates(
    legit_rate: float, fraud_rate: float, legit_says: str, fraud_says: str
) -> None:
    truth = {f"t{i}": i % 2 == 1 for i in range(40)}
    desk = _desk(truth, legit_mislabel_rate=legit_rate, fraud_mislabel_rate=fraud_rate)
    for tx_id in truth:
        desk.decided(_sampled(tx_id, user_id=f"u-{tx_id}"))
    labels = desk.due(END)
    assert len(labels) == 40
    for label in labels:
        assert label.tx_id is not None
        assert label.label == (fraud_says if truth[label.tx_id] else legit_says)
        assert (label.source, label.user_id, label.reviewer) == ("review", f"u-{label.tx_id}", None)


def test_a_mislabel_rate_between_errs_on_about_that_share() -> None:
    truth = {f"t{i}": False for i in range(2000)}
    desk = _desk(truth, legit_mislabel_rate=0.25)
    for tx_id in truth:
        desk.decided(_sampled(tx_id))
    wrong = sum(label.label == "fraud" for label in desk.due(END))
    assert 400 < wrong < 600


def test_reviews_land_within_the_configured_hours_after_the_payment() -> None:
    desk = _desk(
        {f"t{i}": False for i in range(300)},
        hold_review_delay_min_hours=2.0,
        hold_review_delay_max_hours=5.0,
    )
    paid = {f"t{i}": T0 + i * 7 * HOUR for i in range(300)}
    for tx_id, ts in paid.items():
        desk.decided(_sampled(tx_id, ts=ts))
    delays = [label.ts - paid[label.tx_id or ""] for label in desk.due(END)]
    assert len(delays) == 300
    assert all(2 * HOUR <= d <= 5 * HOUR for d in delays)
    assert max(delays) - min(delays) > 2 * HOUR  # spread over the range, not one delay


def test_due_hands_out_what_is_due_once_in_ts_order() -> None:
    desk = _desk({f"t{i}": False for i in range(50)})
    for i in reversed(range(50)):  # told out of order
        desk.decided(_sampled(f"t{i}", ts=T0 + (i % 10) * HOUR))
    cutoff = T0 + 30 * HOUR
    first = desk.due(cutoff)
    assert first and all(label.ts <= cutoff for label in first)
    assert [label.ts for label in first] == sorted(label.ts for label in first)
    assert desk.due(cutoff) == []
    rest = desk.due(END)
    assert all(label.ts > cutoff for label in rest)
    assert len(first) + len(rest) == 50 == desk.delivered


def test_the_labels_depend_on_the_seed_not_on_the_order_decisions_come_in() -> None:
    truth = {f"t{i}": i % 3 == 0 for i in range(100)}
    decisions = [_sampled(tx_id) for tx_id in truth]

    def labels(order: list[Decision], seed: int) -> list[Label]:
        desk = ReviewDesk(truth, config=WorldConfig(seed=seed, legit_mislabel_rate=0.3))
        for d in order:
            desk.decided(d)
        return desk.due(END)

    assert labels(decisions, 1) == labels(decisions[::-1], 1)
    assert labels(decisions, 1) != labels(decisions, 2)


def test_the_hold_review_delays_are_validated() -> None:
    with pytest.raises(ValueError, match="hold review delays"):
        WorldConfig(hold_review_delay_min_hours=10, hold_review_delay_max_hours=5)
    with pytest.raises(ValueError, match="hold review delays"):
        WorldConfig(hold_review_delay_min_hours=0)


def test_the_desk_of_a_world_reads_its_truth_frame() -> None:
    frame = pl.DataFrame({"tx_id": ["a", "b"], "is_fraud": [True, False]})
    desk = ReviewDesk.of(frame, config=WorldConfig())
    desk.decided(_sampled("a"))
    desk.decided(_sampled("b"))
    assert {(label.tx_id, label.label) for label in desk.due(END)} == {
        ("a", "fraud"),
        ("b", "legit"),
    }


# --- in replay ------------------------------------------------------------------------------


class _Risky(RiskModel):
    """Scores every transaction at risk 0.9, never trusted: held in the cold start."""

    def assess(self, x: Features) -> Assessment:
        assessment = super().assess(x)
        assessment.risk = 0.9
        return assessment

    def confidence(self) -> float:
        return 0.0


def _reviewing_policy(share: float) -> Policy:
    policy = default_policy()
    assert policy.budget is not None
    return replace(policy, budget=replace(policy.budget, review_share=share))


def _world(tmp_path: Path) -> dict[str, Path]:
    """u0 pays at T0 (held), then nothing until u1 pays 60 h later (before the 72 h
    timeout, after any review: 4-48 h)."""
    rows = [tx("t0", T0, user_id="u0", device_id="d0")]
    rows.append(tx("t1", T0 + 60 * HOUR, user_id="u1", device_id="d1"))
    sig = [signup(f"u{i}", T0 - 30 * 24 * HOUR, device_id=f"d{i}") for i in range(2)]
    paths = {"transactions": tmp_path / "tx.parquet", "signups": tmp_path / "sg.parquet"}
    pl.DataFrame(rows).write_parquet(paths["transactions"])
    pl.DataFrame(sig).write_parquet(paths["signups"])
    return paths


def _replay(tmp_path: Path, reviews: ReviewDesk | None, name: str) -> pl.DataFrame:
    scorer = Scorer(decider=Decider(model=_Risky(), policy=_reviewing_policy(1.0)))
    summary = replay(
        out_dir=tmp_path / name, progress=None, scorer=scorer, reviews=reviews, **_world(tmp_path)
    )
    decisions = pl.read_parquet(summary.outputs["decisions"])
    assert decisions["action"].to_list() == ["hold", "hold"]
    return pl.read_parquet(summary.outputs["adjustments"])


def test_replay_applies_the_review_of_a_held_legit_payment_and_the_ledger_releases_it(
    tmp_path: Path,
) -> None:
    desk = _desk({"t0": False, "t1": False})
    adjustments = _replay(tmp_path, desk, "reviewed")
    released = adjustments.filter(pl.col("tx_id") == "t0")
    assert released["kind"].to_list() == ["release"]
    assert released["cause"].to_list() == ["label:legit"]
    assert T0 + 4 * HOUR <= released["ts"][0] <= T0 + 48 * HOUR
    assert desk.delivered == 1  # t1's review would land after the input ends
    assert _replay(tmp_path, None, "unreviewed").is_empty()  # nobody reviews: still held


class _Recording:
    """A `Feedback` that answers nothing and records what replay asked of it."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.told: list[str] = []

    def decided(self, decision: Decision) -> None:
        self.told.append(decision.tx_id)

    def due(self, ts: int) -> list[Label]:
        self.asked.append(ts)
        return []


def test_replay_asks_for_labels_before_each_event_and_a_signup_keeps_its_ts_first(
    tmp_path: Path,
) -> None:
    recording = _Recording()
    paths = _world(tmp_path)
    replay(
        paths["transactions"],
        tmp_path / "out",
        signups=paths["signups"],
        progress=None,
        reviews=recording,
    )
    # Two signups (asked up to just before their ts: at an equal ts a signup goes first),
    # then the payments (up to their ts: a label goes before a payment at its ts).
    signed = T0 - 30 * 24 * HOUR
    assert recording.asked == [signed - 1, signed - 1, T0, T0 + 60 * HOUR]
    assert recording.told == ["t0", "t1"]


def test_a_world_run_with_a_review_share_counts_the_labels_its_desk_delivered(
    tmp_path: Path,
) -> None:
    shipped = DEFAULT_POLICY.read_text()
    assert "\nreview_share = 0.5\n" in shipped
    text = shipped.replace("\nreview_share = 0.5\n", "\nreview_share = 0.3\n")
    policy = tmp_path / "review.toml"
    policy.write_text(text)
    result = run_world(
        TEST_SEED, profile="default", transactions=4_000, policy=policy, workdir=tmp_path
    )
    decided = pl.read_parquet(tmp_path / "replay" / "decisions.parquet")
    truth = pl.read_parquet(tmp_path / "world" / "truth" / "tx_truth.parquet")
    withheld = decided.join(truth, on="tx_id").filter(
        pl.col("action").is_in(["hold", "block"]) & (pl.col("rebate_requested_cents") > 0)
    )
    sampled = withheld.filter(
        pl.col("tx_id").map_elements(lambda t: sampled_for_review(t, 0.3), pl.Boolean)
    )
    last = int(pl.read_parquet(tmp_path / "world" / "transactions.parquet")["ts"].max())  # type: ignore[arg-type]
    surely_due = sampled.filter(pl.col("ts") + 48 * HOUR <= last)
    assert 0 < surely_due.height <= result.review_labels <= sampled.height
    reviewed = pl.read_parquet(tmp_path / "replay" / "adjustments.parquet").filter(
        pl.col("tx_id").is_in(surely_due["tx_id"].to_list())
        & pl.col("cause").str.starts_with("label:")
    )
    assert reviewed.height > 0  # the reviewed holds were settled by their labels
