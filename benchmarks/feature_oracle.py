"""`rebate-guard features` on a large simulated world against the independent Polars oracle.

The oracle is `oracle/features.py`, the one `tests/unit/test_feature_oracle.py` runs on a small
world.

    .venv/bin/python benchmarks/feature_oracle.py --world /tmp/w1m \
        --features /tmp/f1m/features.parquet

The world comes from `rebate-guard simulate --out DIR`; the features file from
`rebate-guard features` on it (both timed separately; see benchmarks/README.md). Prints one row
per named feature: how many transactions it is defined for, and how many disagree (must be 0).
Exit status 1 if any does.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle.features import NAMED, named_features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    args = parser.parse_args()
    tx = pl.read_parquet(args.world / "transactions.parquet")
    signups = pl.read_parquet(args.world / "signups.parquet")
    labels = pl.read_parquet(args.world / "labels.parquet")
    started = time.perf_counter()
    oracle = named_features(tx, signups, labels).select("tx_id", *NAMED)
    seconds = time.perf_counter() - started
    engine = pl.read_parquet(args.features).select("tx_id", *NAMED)
    joined = engine.join(oracle, on="tx_id", suffix="_oracle", how="full", coalesce=True)
    print(f"{tx.height:,} transactions; oracle computed in {seconds:.1f}s")
    print(f"rows: engine {engine.height:,}, oracle {oracle.height:,}, joined {joined.height:,}")
    print(f"| {'feature':<26} | {'defined':>9} | {'mismatched':>10} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 12}|")
    bad = joined.height != tx.height
    for name in NAMED:
        wrong = joined.filter(~pl.col(name).eq_missing(pl.col(f"{name}_oracle"))).height
        defined = joined[name].drop_nulls().len()
        bad |= wrong > 0
        print(f"| {name:<26} | {defined:>9,} | {wrong:>10,} |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:,.0f} MB; {'MISMATCH' if bad else 'all equal'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
