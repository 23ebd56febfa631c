"""Detector throughput: scoring plus learning per transaction, features precomputed.

Reads a features parquet (`rebate-guard features`) and its world's labels, in event-time
order, and times two things (prints a table):

1. the detectors alone, the target of issue #4: `RiskModel.assess` (rules, anomaly score,
   classifier, reasons) and its unsupervised learning for each transaction, and the
   classifier learning each label from the vector its transaction was scored with;
2. the whole `Decider.decide` as the worker runs it: the detectors plus the decision context,
   trust weight, policy, the Decision record and the bookkeeping for delayed labels.

    .venv/bin/python benchmarks/detectors.py --features /tmp/f200k.parquet --world /tmp/w200k

Times are CPU seconds of this process (`time.process_time`), so a busy machine slows the
run but not the figures much. `--learner`: the classifier (`detectors.online`).
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

from detectors.base import LEARNERS, Features  # noqa: E402
from detectors.drift import DriftWatch  # noqa: E402
from detectors.online import make_classifier  # noqa: E402
from detectors.risk import RiskModel  # noqa: E402
from features.engine import FEATURE_NAMES  # noqa: E402
from rebate_guard.contract.records import FRAUD, Label, Transaction  # noqa: E402
from rebate_guard.contract.validation import parse_label, parse_transaction  # noqa: E402
from rebate_guard.core.decider import Decider  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--learner", choices=LEARNERS, default="logreg")
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
    decider = Decider(model=RiskModel(classifier=make_classifier(args.learner)))
    n_tx = n_labels = 0
    vectors: list[Features] = []  # what the detectors saw, for the second run
    started = time.process_time()
    for _, _, item in events:
        if isinstance(item, Label):
            decider.label(item)
            n_labels += 1
        else:
            tx, vector = item  # type: ignore[misc]
            assert isinstance(tx, Transaction)
            vectors.append(decider.decide(tx, list(vector), decided_at=0)[1])
            n_tx += 1
    decide_s = time.process_time() - started
    detectors_s, n_examples = _detectors_alone(events, vectors, args.learner)
    print(f"{n_tx:,} transactions, {n_labels:,} labels ({n_examples:,} examples learned)")
    print("| what | per transaction | transactions/s, one core |")
    print("|---|---|---|")
    for what, seconds in (
        ("detectors: score + learn (+ labels)", detectors_s),
        ("Decider.decide: detectors + decision", decide_s),
    ):
        print(f"| {what} | {seconds / n_tx * 1e6:.1f} µs | {n_tx / seconds:,.0f} |")


def _detectors_alone(
    events: list[tuple[int, int, object]], vectors: list[Features], learner: str
) -> tuple[float, int]:
    """Seconds for the detectors over the same stream: each transaction's vector is assessed
    and learned, and its risk fed to the drift watch; each label is learned from the enriched
    vector(s) its transaction (a user-level label: each of its user's) was scored with."""
    model, drift = RiskModel(classifier=make_classifier(learner)), DriftWatch()
    scored: dict[str, tuple[Features, float]] = {}
    by_user: dict[str, list[str]] = {}
    by_tx = iter(vectors)
    n_examples = 0
    started = time.process_time()
    for _, _, item in events:
        if isinstance(item, Label):
            if item.tx_id is not None:
                tx_ids: list[str] = [item.tx_id]
            else:
                tx_ids = by_user.get(item.user_id or "", [])
            fraud = item.label == FRAUD
            for tx_id in tx_ids:
                kept = scored.get(tx_id)
                if kept is not None:
                    drift.labelled(kept[1], fraud, ts=item.ts)
                    model.learn_one(kept[0], fraud)
                    n_examples += 1
        else:
            tx = item[0]  # type: ignore[index]
            assessment = model.assess(next(by_tx))
            model.learn_scored(assessment)
            drift.scored(assessment.risk, tx.ts)
            scored[tx.tx_id] = (assessment.enriched, assessment.risk)
            by_user.setdefault(tx.user_id, []).append(tx.tx_id)
    return time.process_time() - started, n_examples


if __name__ == "__main__":
    main()
