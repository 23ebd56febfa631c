"""Replay with the platform's events (issue #21): the points requests decided among the
decisions, the solvency monitor's readings and alerts written, bad rows dead-lettered; and a
world without them replays as before (no solvency files)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rebate_guard.contract.records import PlatformEvent
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.core.policy import Lists
from rebate_guard.core.solvency import SolvencyMonitor
from rebate_guard.tools.evaluate import payment_decisions
from rebate_guard.tools.io import write_frame
from rebate_guard.tools.replay import replay
from tests.factories import DAY, HOUR, MINUTE, T0, fixed_policy, signup, tx


def platform(event_id: str, ts: int, kind: str, amount: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(PlatformEvent._fields)
    row.update(event_id=event_id, ts=ts, kind=kind, amount_cents=amount, **fields)
    return row


def scorer() -> Scorer:
    """Payments of u1 and u2 allowed in full: the books follow from the amounts alone."""
    policy = replace(fixed_policy(), lists=Lists(allow_users=frozenset({"u1", "u2"})))
    return Scorer(decider=Decider(policy=policy))


def write(tmp_path: Path, ext: str, with_platform: bool = True) -> dict[str, Path]:
    rate = 0.1
    frames: dict[str, list[dict[str, Any]]] = {
        "transactions": [
            tx("p1", T0 + 10 * MINUTE, user_id="u1", merchant_id="m1", rebate_rate=rate),
            tx(
                "p2",
                T0 + 20 * MINUTE,
                user_id="u2",
                merchant_id="m2",
                amount_cents=20_000,
                rebate_rate=rate,
            ),
        ],
        "signups": [signup("u1", T0 - DAY), signup("u2", T0 - DAY)],
    }
    if with_platform:
        frames["platform_events"] = [
            platform("s1", T0 + 5 * MINUTE, "merchant_settlement", 1_000, merchant_id="m1",
                     region="east"),
            platform("s1", T0 + 6 * MINUTE, "merchant_settlement", 1_000, merchant_id="m1",
                     region="east"),  # the same event_id again: the first stands
            platform("s2", T0 + 15 * MINUTE, "merchant_settlement", 500, merchant_id="m2",
                     region="west"),
            platform("r1", T0 + HOUR + 5 * MINUTE, "points_redeem", 400, user_id="u1",
                     merchant_id="m1", region="east"),
            platform("w1", T0 + HOUR + 6 * MINUTE, "points_withdraw", 100, user_id="u2"),
            platform("x1", T0 + HOUR + 7 * MINUTE, "points_transfer", 801, user_id="u2",
                     counterparty_id="u1"),
            platform("bad", T0 + HOUR, "points_cashout", 100, user_id="u2"),
        ]  # fmt: skip
    paths = {}
    for name, rows in frames.items():
        frame = pl.DataFrame(rows, infer_schema_length=None)
        paths[name] = write_frame(frame, tmp_path / f"{name}.{ext}")
    return paths


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_replay_decides_points_and_reads_the_books(tmp_path: Path, ext: str) -> None:
    summary = replay(
        out_dir=tmp_path / "out", progress=None, scorer=scorer(), **write(tmp_path, ext)
    )
    assert summary.duplicates == 1 and summary.dead_letters == 1
    dead = pl.read_parquet(summary.outputs["dead_letters"])
    assert dead["reason"][0].startswith("field 'kind' must be one of")
    assert dead["file"][0].endswith(f"platform_events.{ext}")

    decisions = pl.read_parquet(summary.outputs["decisions"])
    granted = dict(zip(decisions["tx_id"], decisions["rebate_granted_cents"], strict=True))
    reasons = dict(zip(decisions["tx_id"], decisions["reasons"].to_list(), strict=True))
    g1, g2 = 10_000 // 10, 20_000 // 10  # allowed in full: floor(amount x 0.1)
    assert (granted["p1"], granted["p2"]) == (g1, g2)
    # u1 may redeem 0.4 of what it earned; u2 may not withdraw, nor give past 0.4 x 2000.
    assert granted["r1"] == 400 == g1 * 2 // 5
    assert (granted["w1"], reasons["w1"]) == (0, ["policy:points_not_withdrawable"])
    assert granted["x1"] == 0
    assert reasons["x1"] == ["policy:over_redeemable_share", "points_transfer"]
    assert payment_decisions(decisions)["tx_id"].sort().to_list() == ["p1", "p2"]

    solvency = pl.read_parquet(summary.outputs["solvency"])
    read = {(r["scope"], r["period_start"]): r for r in solvency.iter_rows(named=True)}
    assert sorted(read) == sorted(
        [
            ("platform", T0),
            ("region:east", T0),
            ("region:west", T0),
            ("merchant:m1", T0),
            ("merchant:m2", T0),
            ("platform", T0 + HOUR),
            ("region:east", T0 + HOUR),
            ("region:west", T0 + HOUR),
            ("merchant:m1", T0 + HOUR),  # the redemption; m2 moved nothing in that hour
        ]
    )
    first = read["platform", T0]
    assert (first["liability_cents"], first["merchant_funding_cents"]) == (g1 + g2, 1_500)
    assert first["level"] == "ok"  # 3,000 : 1,500 is under 3:1
    west = read["region:west", T0]
    assert (west["liability_cents"], west["distributable_cents"]) == (g2, 500)
    assert west["ratio"] == g2 / 500 and west["level"] == "warning"
    later = read["platform", T0 + HOUR]
    assert later["liability_cents"] == g1 + g2 - 400
    assert later["payouts_cents"] == 400 and later["distributable_cents"] == 1_500 - 400
    east = read["region:east", T0 + HOUR]
    assert east["new_money_share"] == 1.0  # no funding came in that hour to cover it

    alerts = pl.read_parquet(summary.outputs["platform_alerts"])
    # m2 crossed too (its reading says warning), but merchants alert only when asked.
    assert read["merchant:m2", T0]["level"] == "warning"
    assert alerts["alert_id"].to_list() == [f"region:west:warning:{T0}"]
    assert (alerts["ts"] == T0 + HOUR).all()


def test_without_platform_events_no_solvency_is_written(tmp_path: Path) -> None:
    paths = write(tmp_path, "parquet", with_platform=False)
    summary = replay(out_dir=tmp_path / "out", progress=None, scorer=scorer(), **paths)
    assert "solvency" not in summary.outputs and "platform_alerts" not in summary.outputs
    assert not (tmp_path / "out" / "solvency.parquet").exists()
    assert pl.read_parquet(summary.outputs["decisions"])["tx_id"].to_list() == ["p1", "p2"]


def test_the_cli_replays_platform_events_with_the_policys_period(tmp_path: Path) -> None:
    from rebate_guard.cli import main

    paths = write(tmp_path, "jsonl")
    policy = tmp_path / "half-hourly.toml"
    policy.write_text('version = "h-1"\n[solvency]\nperiod_minutes = 30\n')
    out = tmp_path / "out"
    args = ["replay", "--transactions", str(paths["transactions"]), "--out", str(out)]
    args += ["--platform-events", str(paths["platform_events"]), "--policy", str(policy)]
    assert main([*args, "--quiet"]) == 0
    platform = pl.read_parquet(out / "solvency.parquet").filter(pl.col("scope") == "platform")
    # Movements at 5-20 min and 65-67 min: the half hours from T0 and from T0 + 1 h.
    assert platform["period_start"].to_list() == [T0, T0 + HOUR]
    assert (platform["period_end"] - platform["period_start"]).to_list() == [HOUR // 2] * 2
    decisions = pl.read_parquet(out / "decisions.parquet")
    assert set(decisions["policy_version"]) == {"h-1"}
    assert decisions.filter(pl.col("threshold_version") == "points").height == 3


def test_a_scorer_pickled_midway_decides_and_reads_the_same(tmp_path: Path) -> None:
    from rebate_guard.tools.replay import EventFiles

    paths = write(tmp_path, "parquet")
    files = EventFiles(
        paths["transactions"], paths["signups"], None, None, paths["platform_events"]
    )
    events = list(files)

    def run(cut: int | None) -> tuple[list[Any], list[Any]]:
        one = scorer()
        one.solvency = SolvencyMonitor(one.decider.policy.solvency)
        decided = []
        for i, event in enumerate(events):
            if i == cut:
                one = pickle.loads(pickle.dumps(one))
            decided.append(one.apply(event, decided_at=0))
        assert one.solvency is not None
        return decided, one.solvency_outputs + one.solvency.advance(2**62)

    whole = run(None)
    assert whole[1]  # something was read
    for cut in range(1, len(events)):
        assert run(cut) == whole


def test_offline_features_learn_the_platform_events_as_the_scorer_does(tmp_path: Path) -> None:
    # `rebate-guard features` serves training: its vectors are the worker's (the scorer's)
    # only if it learns the platform events too (the binding, coupon and points features).
    from graph.layer import GraphLayer
    from rebate_guard.contract.records import Transaction
    from rebate_guard.core.decider import ALL_FEATURE_NAMES
    from rebate_guard.tools.replay import EventFiles, compute_features
    from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
    from rebate_guard.tools.simulator.profiles import FLOW_ABUSE

    config = WorldConfig(
        seed=16, n_users=300, n_merchants=30, days=20, target_transactions=2_000, **FLOW_ABUSE
    )
    paths = write_world(simulate_world(config), tmp_path / "world")
    inputs = {"signups": paths["signups"], "labels": paths["labels"], "progress": None}
    scorer = Scorer(graph=GraphLayer())
    want: dict[str, list[float | None]] = {}
    events = EventFiles(paths["transactions"], **inputs, platform_events=paths["platform_events"])
    for event in events:
        if isinstance(event, Transaction):
            x = scorer.decide(event, decided_at=0)[1]
            values = (x[name] for name in ALL_FEATURE_NAMES)
            want[event.tx_id] = [None if v is None else float(v) for v in values]
        else:
            scorer.apply(event, decided_at=0)

    def offline(**platform: Path) -> dict[str, list[float | None]]:
        out = tmp_path / f"features-{len(platform)}.parquet"
        compute_features(paths["transactions"], out, **inputs, **platform)  # type: ignore[arg-type]
        frame = pl.read_parquet(out)
        return {row[0]: list(row[1:]) for row in frame.select("tx_id", *ALL_FEATURE_NAMES).rows()}

    assert offline(platform_events=paths["platform_events"]) == want
    # Without them the platform features stand still: the skew the option closes.
    assert offline() != want
