"""Rebate money withheld, fraud against legitimate, over a grid of policy thresholds.

Re-decides every payment of a replay's decisions with other thresholds (the policy's own
`Thresholds.decide`, the code the worker runs: allow / scale / hold / block and the
expected-loss limit) on the trust weights the replay computed, and prints the share of the
rebate money requested that each setting withholds at decision time, fraud against
legitimate, best first among those meeting `--fraud-target`. Risk teams: pick a row, put it
in a policy file, replay with `--policy` and `rebate-guard evaluate --adjustments` for the
money in the end (after labels, refunds and hold timeouts).

    .venv/bin/rebate-guard simulate --out /tmp/w200k --transactions 200000 --seed 11
    .venv/bin/rebate-guard replay --transactions /tmp/w200k/transactions.parquet \\
        --signups /tmp/w200k/signups.parquet --labels /tmp/w200k/labels.parquet --out /tmp/r200k
    .venv/bin/python benchmarks/money.py --decisions /tmp/r200k/decisions.parquet \\
        --truth /tmp/w200k/truth

Caps and block/allow lists are left out (they do not depend on the thresholds); the
weights are the replay's, so a row is exact for decisions the thresholds do not feed back
into (they do not: the models never see actions).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rebate_guard.core.policy import Thresholds, default_policy  # noqa: E402

ALLOW_AT = (0.9, 0.85, 0.7, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15)
SCALE_AT = (0.5, 0.3, 0.25, 0.2, 0.15, 0.1)
HOLD_AT = (0.2, 0.1, 0.05)
LOSS_LIMIT = (3_000, 10_000, 20_000, 50_000, None)


def withheld(thresholds: Thresholds, payments: pl.DataFrame) -> tuple[float, float]:
    """Share of requested rebate money withheld at decision: (fraud, legitimate)."""
    kept = {True: 0, False: 0}
    asked = {True: 0, False: 0}
    for weight, requested, fraud in payments.iter_rows():
        _, granted, _ = thresholds.decide(weight, requested)
        kept[fraud] += requested - granted
        asked[fraud] += requested
    return kept[True] / max(asked[True], 1), kept[False] / max(asked[False], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=Path, required=True)
    parser.add_argument("--truth", type=Path, required=True, help="the world's truth dir")
    parser.add_argument("--fraud-target", type=float, default=0.90)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    truth = args.truth / "tx_truth.parquet" if args.truth.is_dir() else args.truth
    payments = (
        pl.read_parquet(args.decisions, columns=["tx_id", "trust_weight", "rebate_requested_cents"])
        .filter(pl.col("rebate_requested_cents") > 0)
        .join(pl.read_parquet(truth, columns=["tx_id", "is_fraud"]), on="tx_id")
        .select("trust_weight", "rebate_requested_cents", "is_fraud")
    )
    current = default_policy().thresholds
    rows = []
    grid = itertools.product(ALLOW_AT, SCALE_AT, HOLD_AT, LOSS_LIMIT)
    for allow_at, scale_at, hold_at, limit in grid:
        if not allow_at >= scale_at >= hold_at:
            continue
        thresholds = Thresholds(allow_at, scale_at, hold_at, limit)
        fraud, legit = withheld(thresholds, payments)
        rows.append((thresholds, fraud, legit))
    print(f"{payments.height:,} payments; shipped default: {current}")
    fraud, legit = withheld(current, payments)
    print(f"shipped default withholds {fraud:.2%} of fraud money, {legit:.2%} of legitimate\n")
    meeting = sorted((r for r in rows if r[1] >= args.fraud_target), key=lambda r: (r[2], -r[1]))
    print("| allow_at | scale_at | hold_at | max_expected_loss_cents | fraud | legit |")
    print("|---|---|---|---|---|---|")
    for t, fraud, legit in meeting[: args.rows]:
        limit = "none" if t.max_expected_loss_cents is None else f"{t.max_expected_loss_cents:,}"
        print(
            f"| {t.allow_at} | {t.scale_at} | {t.hold_at} | {limit} | {fraud:.2%} | {legit:.2%} |"
        )


if __name__ == "__main__":
    main()
