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

The risk model alone, on the calls replay really makes (no features file needed):

    .venv/bin/python benchmarks/detectors.py --world WORLD --record-trace T.pickle
    .venv/bin/python benchmarks/detectors.py --trace T.pickle [--slice 25000]

`--record-trace` replays WORLD as `rebate-guard replay` does (default settings; its outputs go
to T.replay/) and records the model as it started, every call the decider made to it
(`assess`, `learn_scored`, a label's `learn_one`) and what each assessment gave. `--trace`
replays those calls on the checkout's detectors, checks every assessment against the
recorded one bit for bit (risk, reasons, log-odds, calibrated risk, the signals' features)
and prints CPU µs per call, per slice of assessed transactions: record once, then time any
commit on the same calls.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors.base import LEARNERS, Features  # noqa: E402
from detectors.drift import DriftWatch  # noqa: E402
from detectors.online import make_classifier  # noqa: E402
from detectors.risk import Assessment, RiskModel  # noqa: E402
from features.engine import FEATURE_NAMES  # noqa: E402
from rebate_guard.contract.records import FRAUD, Label, Transaction  # noqa: E402
from rebate_guard.contract.validation import parse_label, parse_transaction  # noqa: E402
from rebate_guard.core.decider import Decider  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path)
    parser.add_argument("--world", type=Path)
    parser.add_argument("--learner", choices=LEARNERS, default="logreg")
    parser.add_argument("--record-trace", type=Path, help="record the model's calls in a replay")
    parser.add_argument("--trace", type=Path, help="time the model on recorded calls")
    parser.add_argument("--slice", type=int, default=25_000, help="assessments per row")
    args = parser.parse_args()
    gc.set_threshold(100_000, 50, 1_000)
    if args.trace:
        _time_trace(args.trace, args.slice)
        return
    if args.world is None:
        parser.error("--world is required")
    if args.record_trace:
        _record_trace(args.world, args.record_trace)
        return
    if args.features is None:
        parser.error("--features is required")
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


class _Recorder:
    """The decider's risk model, recording each call and what each assessment gave."""

    def __init__(self, model: RiskModel) -> None:
        self.model = model
        self.start = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        self.key_sets: dict[tuple[str, ...], int] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.seen: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def assess(self, x: Features) -> Assessment:
        keys = self.key_sets.setdefault(tuple(x), len(self.key_sets))
        self.calls.append(("assess", keys, tuple(x.values())))
        assessment = self.model.assess(x)
        self.seen.append(_what(assessment))
        return assessment

    def learn_scored(self, assessment: Assessment) -> None:
        self.calls.append(("learn_scored",))
        self.model.learn_scored(assessment)

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        # The vector as the decider kept it (its remembered store rebuilds the dict, so it
        # is not the assessed object): the trace learns exactly what the replay learnt.
        if y is None:
            raise ValueError("the decider learns scored transactions through learn_scored")
        keys = self.key_sets.setdefault(tuple(x), len(self.key_sets))
        self.calls.append(("label", keys, tuple(x.values()), bool(y)))
        self.model.learn_one(x, y)


def _what(assessment: Assessment) -> tuple[Any, ...]:
    """What an assessment gave, compared bit for bit (the enriched vector's signal features
    are its last items)."""
    signals = tuple(assessment.enriched.items())[-2:]
    return (assessment.risk, tuple(assessment.reasons), assessment.log_odds,
            assessment.calibrated_risk, signals)  # fmt: skip


def _record_trace(world: Path, out: Path) -> None:
    from features.engine import FeatureEngine
    from graph.layer import GraphLayer
    from rebate_guard.core.decider import Scorer
    from rebate_guard.settings import Settings
    from rebate_guard.tools.replay import replay

    settings = Settings.from_env()
    recorder = _Recorder(settings.risk_model())
    decider = Decider(model=recorder, policy=settings.policy())  # type: ignore[arg-type]
    scorer = Scorer(
        features=FeatureEngine(settings.engine_config()), decider=decider, graph=GraphLayer()
    )
    files = {name: world / f"{name}.parquet" for name in ("transactions", "signups", "labels")}
    summary = replay(**files, out_dir=out.with_suffix(".replay"), progress=None, scorer=scorer)
    trace = {"start": recorder.start, "key_sets": list(recorder.key_sets),
             "calls": recorder.calls, "seen": recorder.seen}  # fmt: skip
    out.write_bytes(pickle.dumps(trace, protocol=pickle.HIGHEST_PROTOCOL))
    print(f"{summary.events:,} events, {len(recorder.calls):,} model calls -> {out}")


def _time_trace(path: Path, per_slice: int) -> None:
    """CPU µs per model call on a recorded trace, by slice; every assessment checked."""
    trace = pickle.loads(path.read_bytes())
    model: RiskModel = pickle.loads(trace["start"])
    key_sets, seen = trace["key_sets"], trace["seen"]
    clock = time.process_time
    rows: list[_Slice] = []
    row = _Slice()
    assessed = differ = 0
    last: Assessment | None = None
    for call in trace["calls"]:
        if call[0] == "assess":
            x = dict(zip(key_sets[call[1]], call[2], strict=True))
            started = clock()
            last = model.assess(x)
            spent = clock() - started
            differ += _what(last) != seen[assessed]
            assessed += 1
            row.assessed += 1
            row.assess_s += spent
            if any(reason.startswith("model:") for reason in last.reasons):
                row.explained += 1
                row.explained_s += spent
            if row.assessed == per_slice:
                rows.append(row)
                row = _Slice()
        elif call[0] == "learn_scored":
            assert last is not None
            started = clock()
            model.learn_scored(last)
            row.learn_scored_s += clock() - started
        else:
            x = dict(zip(key_sets[call[1]], call[2], strict=True))
            started = clock()
            model.learn_one(x, call[3])
            row.labels += 1
            row.labels_s += clock() - started
    if row.assessed:
        rows.append(row)
    print(f"{assessed:,} assessments: {'all as recorded' if not differ else f'{differ:,} DIFFER'}")
    print("| assessed | assess µs | explained: share, µs | learn_scored µs | labels, µs each "
          "| model µs per transaction |\n|---|---|---|---|---|---|")  # fmt: skip
    done = 0
    for row in rows:
        done += row.assessed
        print(row.line(f"{done:,}"))
    everything = _Slice()
    for row in rows:
        for name, value in vars(row).items():
            setattr(everything, name, getattr(everything, name) + value)
    print(everything.line("all"))


class _Slice:
    """CPU seconds and counts of one slice of a trace."""

    def __init__(self) -> None:
        self.assessed = self.explained = self.labels = 0
        self.assess_s = self.explained_s = self.learn_scored_s = self.labels_s = 0.0

    def line(self, label: str) -> str:
        n = max(1, self.assessed)
        total = self.assess_s + self.learn_scored_s + self.labels_s
        return (
            f"| {label} | {self.assess_s / n * 1e6:.1f} | {self.explained / n:.1%}, "
            f"{self.explained_s / max(1, self.explained) * 1e6:.1f} | "
            f"{self.learn_scored_s / n * 1e6:.1f} | "
            f"{self.labels:,}, {self.labels_s / max(1, self.labels) * 1e6:.1f} | "
            f"{total / n * 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
