"""`rebate-guard evaluate`: the figures on hand-checkable inputs, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from rebate_guard.cli import main
from rebate_guard.tools.evaluate import calibration, capture_at_friction, evaluate, ranking
from tests.factories import DAY, T0


def test_auc_and_average_precision_by_hand() -> None:
    frame = pl.DataFrame({"risk": [0.9, 0.8, 0.3, 0.1], "fraud": [True, False, True, False]})
    r = ranking(frame)
    assert r.roc_auc == pytest.approx(3 / 4)  # 3 of the 4 (fraud, legit) pairs in order
    assert r.average_precision == pytest.approx((1 + 2 / 3) / 2)
    tied = ranking(pl.DataFrame({"risk": [0.5, 0.5], "fraud": [True, False]}))
    assert tied.roc_auc == pytest.approx(0.5)
    assert ranking(pl.DataFrame({"risk": [0.5], "fraud": [True]})).roc_auc is None


def test_calibration_of_a_calibrated_and_a_skewed_risk() -> None:
    """Risk that is the fraud rate in each bin has ECE ~0; the same ranking stated ten times
    too high has a large ECE."""
    risks, frauds = [], []
    for risk, n, fraud in ((0.05, 1000, 50), (0.35, 200, 70), (0.85, 100, 85)):
        risks += [risk] * n
        frauds += [True] * fraud + [False] * (n - fraud)
    calibrated = pl.DataFrame({"risk": risks, "fraud": frauds})
    table, ece = calibration(calibrated)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert [(b.low, b.transactions) for b in table] == [(0.0, 1000), (0.3, 200), (0.8, 100)]
    assert table[1].mean_risk == pytest.approx(0.35) and table[1].fraud_rate == pytest.approx(0.35)
    skewed = calibrated.with_columns(risk=pl.lit(1.0))  # says fraud for everything
    _, off = calibration(skewed)
    assert off == pytest.approx(1.0 - (50 + 70 + 85) / 1300)
    assert calibration(calibrated.clear()) == ([], None)


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    decisions = pl.DataFrame(
        {
            "tx_id": ["a", "b", "c", "d", "e", "f"],
            "ts": [T0, T0, T0, T0 + DAY, T0 + DAY, T0 + DAY],
            "user_id": ["u1", "u2", "u3", "u1", "u4", "u5"],
            "risk": [0.95, 0.2, 0.7, 0.9, 0.1, 0.05],
            "action": ["block", "allow", "hold", "block", "allow", "hold"],
            "rebate_requested_cents": [1000, 500, 300, 2000, 700, 0],
            "rebate_granted_cents": [0, 500, 0, 0, 350, 0],
        }
    )
    truth = pl.DataFrame(
        {
            "tx_id": ["a", "b", "c", "d", "e", "f"],
            "is_fraud": [True, False, False, True, False, False],
            "scenario": ["brushing", "legit", "legit", "cash_out", "legit", "legit"],
            "group": [None, None, "office_ip", None, None, "office_ip"],
        }
    )
    labels = pl.DataFrame(
        {
            "ts": [T0 + 3 * DAY, T0 + 3 * DAY, T0 + 4 * DAY],
            "tx_id": ["a", "c", "c"],
            "user_id": ["u1", "u3", "u3"],
            "label": ["fraud", "fraud", "legit"],  # c: a review reversed the first label
            "source": ["review"] * 3,
        }
    )
    paths = tmp_path / "decisions.parquet", tmp_path / "tx_truth.parquet", tmp_path / "l.parquet"
    for frame, path in zip((decisions, truth, labels), paths, strict=True):
        frame.write_parquet(path)
    return paths


def test_against_truth_per_scenario_top_k_and_lookalikes(tmp_path: Path) -> None:
    decisions, truth, _ = _files(tmp_path)
    result = evaluate(decisions, truth=truth, top_k=1)
    assert result.overall.roc_auc == 1.0 and result.overall.fraud == 2
    assert set(result.per_scenario) == {"brushing", "cash_out"}
    assert result.per_scenario["brushing"].transactions == 5  # its 1 fraud + 4 legit
    assert result.precision_top_k_users_per_day == 1.0 and result.days == 2
    assert result.lookalikes_withheld == {"office_ip": 1.0}  # c held, f held
    # Money: fraud a + d requested 3,000, none granted; legit b + c + e requested 1,500
    # (f requested nothing), 850 granted; office_ip's c held its 300.
    assert result.money_withheld == {
        "fraud": 1.0,
        "legit": pytest.approx(650 / 1500),
        "fraud:brushing": 1.0,
        "fraud:cash_out": 1.0,
        "legit:office_ip": 1.0,
    }


def test_against_labels_uses_the_latest_label_of_each_labelled_tx(tmp_path: Path) -> None:
    decisions, _, labels = _files(tmp_path)
    result = evaluate(decisions, labels=labels)
    assert result.overall.transactions == 2 and result.overall.fraud == 1  # a fraud, c legit
    assert result.overall.roc_auc == 1.0 and not result.per_scenario


def test_the_command_prints_a_table_and_writes_json(tmp_path: Path, capsys) -> None:
    decisions, truth, _ = _files(tmp_path)
    out = tmp_path / "eval.json"
    args = ["evaluate", "--decisions", str(decisions), "--truth", str(truth), "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| all transactions | 6 | 2 | 1.0000 |" in printed and "office_ip" in printed
    assert json.loads(out.read_text())["overall"]["roc_auc"] == 1.0
    wrong = ["evaluate", "--decisions", str(tmp_path / "none.parquet"), "--truth", str(truth)]
    assert main(wrong) == 2


def test_legit_money_withheld_is_compared_with_the_friction_budget(tmp_path: Path, capsys) -> None:
    decisions, truth, _ = _files(tmp_path)
    assert evaluate(decisions, truth=truth).budget is None  # not known: no line
    args = ["evaluate", "--decisions", str(decisions), "--truth", str(truth), "--budget", "0.01"]
    assert main(args) == 0
    assert "friction budget of 1.00%" in capsys.readouterr().out
    report = {"mode": "budget", "groups": {"*": {"legit_friction": 0.02}}}
    (decisions.parent / "budget.json").write_text(json.dumps(report))
    result = evaluate(decisions, truth=truth)
    assert result.budget == 0.02 and "friction budget of 2.00%" in result.table()


def _adjusted(tmp_path: Path, e_cause: str) -> Path:
    """c's hold released by a legit label at T0 + 1 d; e's grant taken back at T0 + 2 d
    (`e_cause`)."""
    path = tmp_path / "adjustments.parquet"
    pl.DataFrame(
        {
            "tx_id": ["c", "e"],
            "ts": [T0 + DAY, T0 + 2 * DAY],
            "granted_cents": [300, 0],
            "cause": ["label:legit", e_cause],
        }
    ).write_parquet(path)
    return path


def test_money_in_the_end_follows_the_ledgers_last_adjustment(tmp_path: Path) -> None:
    decisions, truth, _ = _files(tmp_path)
    result = evaluate(decisions, truth=truth, adjustments=_adjusted(tmp_path, "label:fraud"))
    assert result.money_withheld["legit"] == pytest.approx(650 / 1500)
    # Legit granted in the end: b 500 + c 300 + e 0 = 800 of 1,500.
    assert result.money_withheld_final["legit"] == pytest.approx(700 / 1500)
    # Had e been refunded instead, it would be owed nothing: 800 of 800 (b, c) paid.
    refunded = evaluate(decisions, truth=truth, adjustments=_adjusted(tmp_path, "refund:r9"))
    assert refunded.money_withheld_final["legit"] == pytest.approx(0.0)
    assert result.money_withheld_final["legit:office_ip"] == 0.0
    assert result.money_withheld_final["fraud"] == 1.0
    assert "in the end" in result.table()


def test_capture_at_friction_withholds_lowest_weights_first_within_the_friction() -> None:
    frame = pl.DataFrame(
        {
            "trust_weight": [0.1, 0.2, 0.3, 0.4, 0.9, 0.95],
            "rebate_requested_cents": [300, 100, 200, 600, 9_000, 400],
            "fraud": [True, False, True, True, False, False],
        }
    )
    # Legit money 9,500: 1% is 95 cents, less than the 100 legit cents at 0.2, so the cut
    # stops after 0.1 and captures 300 of the 1,100 fraud cents.
    assert capture_at_friction(frame, 0.01) == pytest.approx(300 / 1_100)
    # 2% (190 cents) admits the 100 at 0.2: the cut runs on to 0.4 (all fraud).
    assert capture_at_friction(frame, 0.02) == pytest.approx(1.0)
    # Payments with equal weights go together: a tie that would overshoot is left out.
    tied = frame.with_columns(pl.Series("trust_weight", [0.1, 0.1, 0.3, 0.4, 0.9, 0.95]))
    assert capture_at_friction(tied, 0.01) == pytest.approx(0.0)
    assert capture_at_friction(frame.filter(~pl.col("fraud")), 0.01) is None


def test_evaluate_reports_capture_at_friction_when_decisions_carry_weights(
    tmp_path: Path,
) -> None:
    decisions, truth, _ = _files(tmp_path)
    weighted = pl.read_parquet(decisions).with_columns(
        pl.Series("trust_weight", [0.05, 0.8, 0.3, 0.1, 0.9, 0.95])
    )
    weighted.write_parquet(decisions)
    result = evaluate(decisions, truth=truth)
    # Fraud a (1,000 cents at 0.05) and d (2,000 at 0.1) are the two lowest weights.
    assert result.fraud_capture_at_friction == pytest.approx(1.0)
    assert "legitimate friction: 100.00%" in result.table()


def _points_files(tmp_path: Path) -> tuple[Path, Path]:
    """Two payments and five points requests (threshold_version "points"): p1 and p2 a
    collector's (fraud), p3 an ordinary user's, p4 a family's (legit look-alike), p5 one the
    truth does not know."""
    ids = ["a", "b", "p1", "p2", "p3", "p4", "p5"]
    pl.DataFrame(
        {
            "tx_id": ids,
            "ts": [T0] * 7,
            "user_id": ["u1", "u2", "c", "c", "u3", "u4", "u5"],
            "risk": [0.9, 0.1, 0.27, 0.03, 0.03, 0.27, 0.5],
            "action": ["block", "allow", "hold", "allow", "allow", "hold", "block"],
            "rebate_requested_cents": [1000, 500, 1000, 500, 2000, 400, 900],
            "rebate_granted_cents": [0, 500, 0, 500, 2000, 0, 0],
            "threshold_version": ["fixed", "fixed", *["points"] * 5],
            "trust_weight": [0.1, 0.9, 0.73, 0.97, 0.97, 0.73, 0.5],
            "reasons": [["r"], [], ["points_collector"], [], [], ["points_collector"], ["x"]],
        }
    ).write_parquet(tmp_path / "decisions.parquet")
    pl.DataFrame(
        {
            "tx_id": ["a", "b"],
            "is_fraud": [True, False],
            "scenario": ["brushing", "legit"],
            "group": [None, None],
        }
    ).write_parquet(tmp_path / "tx_truth.parquet")
    pl.DataFrame(
        {
            "event_id": ["p1", "p2", "p3", "p4"],
            "is_fraud": [True, True, False, False],
            "scenario": ["points_collector", "points_collector", "", ""],
            "group": ["", "", "", "family_device"],
        }
    ).write_parquet(tmp_path / "platform_truth.parquet")
    return tmp_path / "decisions.parquet", tmp_path


def test_points_withheld_on_requests_per_scenario_and_lookalike(tmp_path: Path) -> None:
    decisions, truth = _points_files(tmp_path)
    result = evaluate(decisions, truth=truth)
    # Points asked: fraud p1 + p2 = 1,500, 1,000 held; legit p3 + p4 = 2,400, p4's 400 held.
    assert result.points_withheld == {
        "fraud": pytest.approx(1000 / 1500),
        "legit": pytest.approx(400 / 2400),
        "fraud:points_collector": pytest.approx(1000 / 1500),
        "legit:family_device": 1.0,
    }
    # The payments' figures are the payments' alone.
    assert result.overall.transactions == 2
    assert result.money_withheld["fraud"] == 1.0 and result.money_withheld["legit"] == 0.0
    assert "| fraud:points_collector | 66.67% |" in result.table()
    # Without the platform events' truth the figures are left out.
    (tmp_path / "platform_truth.parquet").unlink()
    quiet = evaluate(decisions, truth=truth)
    assert quiet.points_withheld == {} and "points requests" not in quiet.table()


def platform_truth_of(world: Path) -> pl.DataFrame:
    """The points requests' truth built from the world's user truth (until the simulator
    writes platform_truth.parquet): a request is fraud when its user plays an abuse
    scenario (scenario: the user's role), else legitimate (group: the user's look-alike
    role, if any)."""
    from rebate_guard.tools.simulator._common import ABUSE_SCENARIOS

    roles = pl.read_parquet(world / "truth" / "user_truth.parquet").select("user_id", "role")
    fraud = pl.col("role").is_in(list(ABUSE_SCENARIOS))
    return (
        pl.read_parquet(world / "platform_events.parquet")
        .filter(pl.col("kind").is_in(["points_redeem", "points_transfer", "points_withdraw"]))
        .join(roles, on="user_id", how="left")
        .select(
            "event_id",
            fraud.alias("is_fraud"),
            pl.when(fraud).then("role").otherwise(pl.lit("")).alias("scenario"),
            pl.when(~fraud & (pl.col("role") != "legit")).then("role").otherwise(pl.lit(""))
            .alias("group"),
        )
    )  # fmt: skip


def test_points_withheld_on_a_replayed_random_world(tmp_path: Path) -> None:
    """A random-profile world (seed 3, 20k payments, with more points collectors than the
    profile's 1.5 groups per 100k, which at this size rounds to none), replayed: the
    collectors' requests are withheld by the request rules, with their codes, and the
    evaluation's figures are those of the decisions and the truth."""
    from dataclasses import replace

    from rebate_guard.core.decider import Scorer
    from rebate_guard.tools.replay import replay
    from rebate_guard.tools.simulator import simulate_world, world_config, write_world

    config = replace(
        world_config("random", seed=3, transactions=20_000), points_collector_per_100k=10.0
    )
    world = tmp_path / "world"
    write_world(simulate_world(config), world)
    platform_truth_of(world).write_parquet(world / "truth" / "platform_truth.parquet")
    out = tmp_path / "replay"
    replay(
        world / "transactions.parquet",
        out,
        signups=world / "signups.parquet",
        labels=world / "labels.parquet",
        scorer=Scorer(),
        progress=None,
        platform_events=world / "platform_events.parquet",
    )
    result = evaluate(out / "decisions.parquet", truth=world / "truth")
    requests = (
        pl.read_parquet(out / "decisions.parquet")
        .filter(pl.col("threshold_version") == "points")
        .join(
            pl.read_parquet(world / "truth" / "platform_truth.parquet").rename(
                {"event_id": "tx_id"}
            ),
            on="tx_id",
        )
    )
    collector = requests.filter(pl.col("scenario") == "points_collector")
    asked, granted = (
        collector["rebate_requested_cents"].sum(),
        collector["rebate_granted_cents"].sum(),
    )
    assert result.points_withheld["fraud:points_collector"] == pytest.approx(1 - granted / asked)
    legit = requests.filter(~pl.col("is_fraud"))
    legit_share = 1 - legit["rebate_granted_cents"].sum() / legit["rebate_requested_cents"].sum()
    assert result.points_withheld["legit"] == pytest.approx(legit_share)
    # The rules withhold the collectors' points (beyond what the policy blocks), named.
    by_rules = collector.filter(pl.col("action") == "hold")
    assert by_rules.height and all(
        {"points_collector", "young_account"} & set(r) for r in by_rules["reasons"]
    )
    assert result.points_withheld["fraud:points_collector"] > 10 * result.points_withheld["legit"]
