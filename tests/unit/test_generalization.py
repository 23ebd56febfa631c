"""The held-out evaluation in small: a world of the simulator family, replayed with the shipped
policy, evaluated against its truth, summarised against issue #17's targets."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rebate_guard.core.policy import default_policy
from rebate_guard.tools.generalization import (
    HELDOUT_SEEDS,
    TUNING_SEEDS,
    Targets,
    WorldResult,
    breakdown_rows,
    points_figures,
    run_world,
    summarise,
    table,
    weekly_ap,
)

#: Seeds outside both splits: a test tunes nothing and must not spend the held-out worlds.
TEST_SEED = 900


def test_the_splits_never_overlap() -> None:
    assert not set(TUNING_SEEDS) & set(HELDOUT_SEEDS)
    assert TEST_SEED not in set(TUNING_SEEDS) | set(HELDOUT_SEEDS)
    assert len(HELDOUT_SEEDS) >= 20


def test_a_random_world_is_replayed_and_its_money_measured(tmp_path: Path) -> None:
    result = run_world(TEST_SEED, profile="random", transactions=20_000, workdir=tmp_path)
    assert result.transactions > 12_000 and 0 < result.fraud_tx_share < 0.2
    decided = pl.read_parquet(tmp_path / "replay" / "decisions.parquet")
    truth = pl.read_parquet(tmp_path / "world" / "truth" / "tx_truth.parquet")
    legit = (
        decided.join(truth, on="tx_id")
        .filter(~pl.col("is_fraud") & (pl.col("rebate_requested_cents") > 0))
        .select(pl.col("rebate_requested_cents").sum(), pl.col("rebate_granted_cents").sum())
    )
    asked, granted = legit.row(0)
    assert abs(result.legit_withheld - (1 - granted / asked)) < 1e-12
    assert result.capture_at_friction is not None and 0 <= result.capture_at_friction <= 1
    assert result.true_rings > 0
    # The shipped friction budget holds on a world no one tuned on, within the factor the
    # held-out targets allow the worst world: fails when friction overshoots the budget.
    budget = default_policy().budget
    assert budget is not None
    assert result.legit_withheld <= budget.legit_friction * Targets().worst_factor
    assert result.fraud_withheld > budget.legit_friction
    assert len(result.weekly_ap) == 6  # 45 days: six full weeks


def test_summary_takes_the_mean_and_the_worst_world_against_the_targets() -> None:
    def world(seed: int, legit: float) -> WorldResult:
        return WorldResult("random", seed, 1, 0.02, 0.1, 0.9, 0.9, 0.95, legit, 0.9)

    rows = {row.label: row for row in summarise([world(1, 0.004), world(2, 0.014)])}
    friction = rows["legit money withheld at decision"]
    assert abs(friction.mean - 0.009) < 1e-12  # type: ignore[operator]
    assert (friction.worst, friction.worst_seed) == (0.014, 2)
    assert friction.met is True  # mean 0.9% <= 1%, worst 1.4% <= 1.5 x 1%
    worse = summarise([world(1, 0.004), world(2, 0.016)])[0]
    assert worse.met is False  # the worst world past 1.5x the budget
    assert Targets().worst_factor == 1.5


def test_breakdowns_take_the_most_friction_and_the_least_fraud_withheld_as_worst() -> None:
    def world(seed: int, family: float, brushing: float) -> WorldResult:
        return WorldResult(
            "random", seed, 1, 0.02, 0.1, 0.9, 0.9, 0.95, 0.01, 0.9,
            lookalike_friction={"family_device": family},
            scenario_withheld={"brushing": brushing},
        )  # fmt: skip

    results = [world(1, 0.02, 0.9), world(2, 0.04, 0.5)]
    assert breakdown_rows(results) == [("family_device", 0.03, 0.04, 2, 2)]
    assert breakdown_rows(results, scenarios=True) == [("brushing", 0.7, 0.5, 2, 2)]
    assert "| brushing | 70.00% | 50.00% (2) | 2 |" in table(results)


def test_weekly_ap_ranks_each_full_week_apart(tmp_path: Path) -> None:
    week = 7 * 86_400_000
    # Week 0: the fraud ranked first (AP 1); week 1: ranked last of two (AP 0.5); week 2: no
    # fraud; a last partial week is left out.
    rows = [
        ("a", 0, 0.9, True),
        ("b", 1, 0.1, False),
        ("c", week, 0.2, True),
        ("d", week + 1, 0.8, False),
        ("e", 2 * week, 0.5, False),
        ("f", 3 * week + 5, 0.5, True),
    ]
    pl.DataFrame(
        {"tx_id": [r[0] for r in rows], "ts": [r[1] for r in rows], "risk": [r[2] for r in rows]}
    ).write_parquet(tmp_path / "decisions.parquet")
    pl.DataFrame({"tx_id": [r[0] for r in rows], "is_fraud": [r[3] for r in rows]}).write_parquet(
        tmp_path / "tx_truth.parquet"
    )
    assert weekly_ap(tmp_path / "decisions.parquet", tmp_path) == [1.0, 0.5, None]


def test_points_figures_of_a_world_and_their_breakdowns() -> None:
    requests = pl.DataFrame(
        {
            "tx_id": ["p1", "p2", "p3", "p4", "p5"],
            "rebate_requested_cents": [1_000, 3_000, 20_000, 500, 30_000],
            "rebate_granted_cents": [0, 3_000, 19_000, 0, 30_000],
            "trust_weight": [0.5, 0.97, 0.97, 0.73, 0.97],
            "reasons": [
                ["points_collector"],
                [],
                ["policy:over_redeemable_share"],
                ["young_account"],
                [],
            ],
            "is_fraud": [True, True, False, False, False],
            "scenario": ["points_collector", "coupon_farm", None, None, None],
            "group": [None, None, "family_device", "office_ip", None],
        }
    )
    got = points_figures(requests, allow_at=0.85)
    assert got["points_fraud_withheld"] == pytest.approx(1_000 / 4_000)
    assert got["points_legit_withheld"] == pytest.approx(1_500 / 50_500)
    # p3 was cut to the user's book, which rules that weigh 0.97 let through: of the legit
    # points withheld, its 1,000 are the book's, p4's 500 the rules'.
    assert got["points_legit_past_book"] == pytest.approx(1_000 / 50_500)
    # Every scenario; a look-alike group only with MIN_GROUP_CENTS asked (office_ip: 500).
    assert got["points_scenario_withheld"] == {"coupon_farm": 0.0, "points_collector": 1.0}
    assert got["points_lookalike_withheld"] == {"family_device": pytest.approx(0.05)}
    assert points_figures(None, allow_at=0.85) == {}
    assert points_figures(requests.clear(), allow_at=0.85) == {}

    def world(seed: int, collector: float, family: float) -> WorldResult:
        return WorldResult(
            "random", seed, 1, 0.02, 0.1, 0.9, 0.9, 0.95, 0.01, 0.9,
            points_fraud_withheld=collector, points_legit_withheld=family / 10,
            points_scenario_withheld={"points_collector": collector},
            points_lookalike_withheld={"family_device": family},
        )  # fmt: skip

    results = [world(1, 0.9, 0.02), world(2, 0.5, 0.04)]
    assert breakdown_rows(results, scenarios=True, points=True) == [
        ("points_collector", 0.7, 0.5, 2, 2)
    ]
    assert breakdown_rows(results, points=True) == [("family_device", 0.03, 0.04, 2, 2)]
    rows = {row.label: row for row in summarise(results)}
    assert rows["fraud points withheld on requests"].worst == 0.5
    assert rows["legit points withheld on requests"].worst == pytest.approx(0.004)
    printed = table(results)
    assert "| points_collector | 70.00% | 50.00% (2) | 2 |" in printed
    assert "legit points withheld on requests" in printed
    # Worlds without the platform events' truth: no points rows.
    bare = [WorldResult("random", 3, 1, 0.02, 0.1, 0.9, 0.9, 0.95, 0.01, 0.9)]
    assert "points withheld on requests) |" not in table(bare)
