"""Detector throughput: scoring plus learning per transaction, features precomputed.

Reads a features parquet (`rebate-guard features`) and its world's labels, and runs the
`Decider` exactly as the scorer does (enrich, score, explain, learn unsupervised, remember;
labels learned when they arrive, in event-time order), timing only that. Prints a table.

    .venv/bin/python benchmarks/detectors.py --features /tmp/f200k.parquet --world /tmp/w200k
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.engine import FEATURE_NAMES  # noqa: E402
from rebate_guard.scoring import Decider  # noqa: E402
from streams.records import Label, Transaction  # noqa: E402
from streams.validation import parse_label, parse_transaction  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    args = parser.parse_args()
    gc.set_threshold(100_000, 50, 1_000)
    features = pl.read_parquet(args.features)
    txs = pl.read_parquet(args.world / "transactions.parquet")
    rows = features.join(txs, on="tx_id").sort("ts")
    events: list[tuple[int, int, object]] = []
    for row in rows.iter_rows(named=True):
        tx = parse_transaction(row)
        vector = [row[name] for name in FEATURE_NAMES]
        events.append((tx.ts, 1, (tx, vector)))
    for row in pl.read_parquet(args.world / "labels.parquet").iter_rows(named=True):
        label = parse_label(row)
        events.append((label.ts, 0, label))
    events.sort(key=lambda e: (e[0], e[1]))
    decider = Decider()
    n_tx = n_labels = 0
    started = time.perf_counter()
    for _, _, item in events:
        if isinstance(item, Label):
            decider.label(item)
            n_labels += 1
        else:
            tx, vector = item  # type: ignore[misc]
            assert isinstance(tx, Transaction)
            decider.decide(tx, list(vector), decided_at=0)
            n_tx += 1
    seconds = time.perf_counter() - started
    print(f"{n_tx:,} transactions, {n_labels:,} labels, model {decider.model_version}")
    print("| what | result |")
    print("|---|---|")
    print(f"| decide (detectors + policy), per transaction | {seconds / n_tx * 1e6:.1f} µs |")
    print(f"| transactions/s, one core | {n_tx / seconds:,.0f} |")


if __name__ == "__main__":
    main()
