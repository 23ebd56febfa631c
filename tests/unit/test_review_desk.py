"""The simulated risk team reviewing the sample of withheld payments (`ReviewDesk`) (issue
#21)."""

import polars as pl
import pytest

from rebate_guard.contract.records import Decision, Label
from rebate_guard.core.budget import sampled_for_review
from rebate_guard.core.points import POINTS_THRESHOLDS
from rebate_guard.tools.simulator import ReviewDesk, WorldConfig
from tests.factories import HOUR, T0, decision

END = 2**62


def _desk(truth: dict[str, bool], share: float = 1.0, **config: float) -> ReviewDesk:
    return ReviewDesk(truth, share=share, config=WorldConfig(**config))  # type: ignore[arg-type]


def test_the_desk_labels_exactly_the_sampled_withheld_payments() -> None:
    ids = [f"t{i}" for i in range(400)]
    desk = _desk(dict.fromkeys(ids, False), share=0.3)
    withheld = set()
    for i, tx_id in enumerate(ids):
        kind = i % 6
        if kind == 0:
            desk.decided(decision(tx_id, "hold"))
            withheld.add(tx_id)
        elif kind == 1:
            desk.decided(decision(tx_id, "block"))
            withheld.add(tx_id)
        elif kind == 2:
            desk.decided(decision(tx_id, "allow"))
        elif kind == 3:
            desk.decided(decision(tx_id, "scale"))
        elif kind == 4:  # a points request, withheld by the points policy
            desk.decided(decision(tx_id, "hold", threshold_version=POINTS_THRESHOLDS))
        else:  # a refund: no rebate asked, none withheld
            desk.decided(decision(tx_id, "hold", requested=0))
    desk.decided(decision("not-in-truth", "hold"))
    labelled = {label.tx_id for label in desk.due(END)}
    sampled = {tx_id for tx_id in withheld if sampled_for_review(tx_id, 0.3)}
    assert labelled == sampled
    assert 30 < len(sampled) < len(withheld) - 30  # some of the withheld are left out
    assert desk.delivered == len(sampled) and desk.due(END) == []


def test_nothing_is_reviewed_at_share_zero() -> None:
    desk = _desk({"t1": True}, share=0.0)
    desk.decided(decision("t1", "hold"))
    assert desk.due(END) == []


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
        desk.decided(decision(tx_id, "hold", user_id=f"u-{tx_id}"))
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
        desk.decided(decision(tx_id, "hold"))
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
        desk.decided(decision(tx_id, "hold", ts=ts))
    delays = [label.ts - paid[label.tx_id or ""] for label in desk.due(END)]
    assert len(delays) == 300
    assert all(2 * HOUR <= d <= 5 * HOUR for d in delays)
    assert max(delays) - min(delays) > 2 * HOUR  # spread over the range, not one delay


def test_due_hands_out_what_is_due_once_in_ts_order() -> None:
    desk = _desk({f"t{i}": False for i in range(50)})
    for i in reversed(range(50)):  # told out of order
        desk.decided(decision(f"t{i}", "hold", ts=T0 + (i % 10) * HOUR))
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
    decisions = [decision(tx_id, "hold") for tx_id in truth]

    def labels(order: list[Decision], seed: int) -> list[Label]:
        desk = ReviewDesk(truth, share=1.0, config=WorldConfig(seed=seed, legit_mislabel_rate=0.3))
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
    desk = ReviewDesk.of(frame, share=1.0, config=WorldConfig())
    desk.decided(decision("a", "block"))
    desk.decided(decision("b", "hold"))
    assert {(label.tx_id, label.label) for label in desk.due(END)} == {
        ("a", "fraud"),
        ("b", "legit"),
    }
