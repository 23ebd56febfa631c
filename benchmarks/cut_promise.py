"""Did the friction budget's cut keep its promise? Per hour of a replay in budget mode: the
share of the last window's money below the cut that decided the hour (what the cut was
chosen by, all money counted), against the share of the hour's own money below it.

Reads each decision's `threshold_version` (`budget:<group>:<epoch>:<cut>:<block cut>`) and
trust weight; the weights do not depend on the cut (the models never see actions), so the
figures are exact for the replay. With `--truth`, the legitimate money withheld at decision
as well, over the hours before the first fraud payment (no fraud, no label: the label-free
bound alone) and over all of them.

    .venv/bin/python benchmarks/cut_promise.py --decisions R/decisions.parquet \\
        --truth W/truth [--window-days 7]

Issue #21 (session 21) measured the label-free cut on tuning worlds 0 and 5 (random profile,
20k): promised 1.38% and 0.67% of the window's money, achieved 2.20% and 1.43% in the next
hours, because a few big payments make the money below a cut (docs/detectors.md, "Short
worlds").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

HOUR_MS = 3_600_000


def hours(decisions: pl.DataFrame, window_ms: int) -> pl.DataFrame:
    """One row per epoch decided by a cut: its cut, the window's money share below it and
    the epoch's own."""
    budget = decisions.filter(pl.col("threshold_version").str.starts_with("budget:"))
    cuts = (
        budget.select(
            pl.col("threshold_version").str.split(":").list.get(2).cast(pl.Int64).alias("epoch"),
            pl.col("threshold_version").str.split(":").list.get(3).cast(pl.Float64).alias("cut"),
        )
        .unique("epoch")
        .sort("epoch")
    )
    recorded = decisions.filter(
        pl.col("threshold_version").str.starts_with("budget:")
        | (pl.col("threshold_version") == "fixed")
    ).sort("ts")
    ts = recorded["ts"].to_numpy()
    weight = recorded["trust_weight"].to_numpy()
    money = recorded["rebate_requested_cents"].to_numpy().astype(float)
    rows = []
    for epoch, cut in cuts.iter_rows():
        start, end = np.searchsorted(ts, [epoch - window_ms, epoch])
        stop = np.searchsorted(ts, epoch + HOUR_MS)
        window, hour = slice(start, end), slice(end, stop)
        if money[window].sum() <= 0 or money[hour].sum() <= 0:
            continue
        rows.append(
            {
                "epoch": epoch,
                "cut": cut,
                "window_below": float((money[window] * (weight[window] < cut)).sum()),
                "window_money": float(money[window].sum()),
                "hour_below": float((money[hour] * (weight[hour] < cut)).sum()),
                "hour_money": float(money[hour].sum()),
            }
        )
    return pl.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=Path, required=True)
    parser.add_argument("--truth", type=Path, help="the world's truth directory")
    parser.add_argument("--window-days", type=float, default=7.0, help="the policy's window")
    args = parser.parse_args()
    decisions = pl.read_parquet(args.decisions)
    table = hours(decisions, round(args.window_days * 24 * HOUR_MS))
    if table.is_empty():
        print("no hour was decided by a budget cut")
        return
    first_fraud = None
    if args.truth is not None:
        truth = pl.read_parquet(args.truth / "tx_truth.parquet", columns=["tx_id", "is_fraud"])
        decisions = decisions.join(truth, on="tx_id")  # payments (requests have no truth row)
        fraud_ts = decisions.filter(pl.col("is_fraud"))["ts"]
        first_fraud = fraud_ts.min() if len(fraud_ts) else None
    spans = [("all hours", table)]
    if first_fraud is not None:
        spans.append(("before the first fraud", table.filter(pl.col("epoch") < first_fraud)))
    print("| hours | n | promised (window below the cut) | achieved (the hour below it) |")
    print("|---|---|---|---|")
    for name, part in spans:
        if part.is_empty():
            continue
        promised = (part["window_below"] / part["window_money"]).mean()
        achieved = part["hour_below"].sum() / part["hour_money"].sum()
        print(f"| {name} | {part.height} | {100 * promised:.2f}% | {100 * achieved:.2f}% |")
    if args.truth is not None:
        legit = decisions.filter(~pl.col("is_fraud"))
        lost = (legit["rebate_requested_cents"] - legit["rebate_granted_cents"]).sum()
        share = lost / max(1, legit["rebate_requested_cents"].sum())
        print(f"\nlegitimate rebate money withheld at decision: {100 * share:.2f}%")


if __name__ == "__main__":
    main()
