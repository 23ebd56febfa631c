"""Replay: contract files through the same scoring code as the worker, without a broker.

Events are merged in event-time order (`scoring.order_key`), so each transaction is scored
before anything later is learned and a label takes effect only once its ts is reached. This is
the backtest engine: it streams row by row and keeps only the outputs in memory.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from rebate_guard.io import read_frame
from rebate_guard.scoring import Scorer
from streams.records import Decision, Label, Signup, Transaction
from streams.validation import InvalidEvent, parse_label, parse_signup, parse_transaction

Parser = Callable[[Mapping[str, Any]], Signup | Transaction | Label]
# Rank = position in this tuple: the tie order at equal ts (see scoring.order_key).
KINDS: tuple[tuple[str, Parser], ...] = (
    ("signups", parse_signup),
    ("labels", parse_label),
    ("transactions", parse_transaction),
)

Schema = dict[str, pl.DataType | type[pl.DataType]]

DECISION_SCHEMA: Schema = {
    "tx_id": pl.String,
    "ts": pl.Int64,
    "user_id": pl.String,
    "merchant_id": pl.String,
    "risk": pl.Float64,
    "trust_weight": pl.Float64,
    "action": pl.String,
    "rebate_requested_cents": pl.Int64,
    "rebate_granted_cents": pl.Int64,
    "reasons": pl.List(pl.String),
    "model_version": pl.String,
    "decided_at": pl.Int64,
    "policy_version": pl.String,
}
DEAD_LETTER_SCHEMA: Schema = {"file": pl.String, "row": pl.Int64, "reason": pl.String}


@dataclass(frozen=True)
class ReplaySummary:
    events: int
    decisions: int
    duplicates: int
    dead_letters: int
    seconds: float
    outputs: dict[str, Path]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A progress line on stderr, redrawn at most twice a second."""

    def __init__(self, total: int, stream: TextIO | None = sys.stderr) -> None:
        self.total, self.stream = total, stream
        self.started = self.last = time.perf_counter()

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if self.stream is None or (not force and now - self.last < 0.5):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        pct = 100.0 * done / max(self.total, 1)
        end = "\n" if force else "\r"
        self.stream.write(f"replay {done:>12,}/{self.total:,} events {pct:5.1f}% {rate:>9,.0f}/s")
        self.stream.write(end)
        self.stream.flush()


def replay(
    transactions: Path,
    out_dir: Path,
    signups: Path | None = None,
    labels: Path | None = None,
    scorer: Scorer | None = None,
    progress: TextIO | None = sys.stderr,
) -> ReplaySummary:
    started = time.perf_counter()
    scorer = scorer or Scorer()
    paths = {"signups": signups, "transactions": transactions, "labels": labels}
    frames: list[pl.DataFrame] = []
    columns: list[dict[str, list[Any]]] = []
    dead: dict[str, list[Any]] = {"file": [], "row": [], "reason": []}
    for rank, (kind, _) in enumerate(KINDS):
        path = paths[kind]
        frame = read_frame(path) if path is not None else pl.DataFrame({"ts": []}, {"ts": pl.Int64})
        columns.append({c: frame[c].to_list() for c in frame.columns})
        order = frame.select(
            pl.col("ts"), pl.lit(rank, pl.Int8).alias("rank"), pl.int_range(pl.len()).alias("row")
        )
        for row in order.filter(pl.col("ts").is_null())["row"]:
            _dead(dead, path, row, "missing or unreadable 'ts'")
        frames.append(order.filter(pl.col("ts").is_not_null()))
    merged = pl.concat(frames).sort(["ts", "rank", "row"], maintain_order=True)

    out: dict[str, list[Any]] = {name: [] for name in DECISION_SCHEMA}
    seen: set[str] = set()
    duplicates = 0
    bar = Progress(merged.height, progress)
    for done, (rank, row) in enumerate(zip(merged["rank"], merged["row"], strict=True)):
        kind, parser = KINDS[rank]
        cols = columns[rank]
        try:
            event = parser({name: values[row] for name, values in cols.items()})
        except InvalidEvent as exc:
            _dead(dead, paths[kind], row, str(exc))
            continue
        if isinstance(event, Transaction):
            if event.tx_id in seen:
                duplicates += 1  # idempotent by tx_id: the first decision stands
                continue
            seen.add(event.tx_id)
        decision = scorer.apply(event, decided_at=int(time.time() * 1000))
        if decision is not None:
            _append_decision(out, decision)
        if done % 4096 == 0:
            bar.update(done)
    bar.update(merged.height, force=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"decisions": out_dir / "decisions.parquet"}
    pl.DataFrame(out, schema=DECISION_SCHEMA).write_parquet(outputs["decisions"])
    if dead["row"]:
        outputs["dead_letters"] = out_dir / "dead_letters.parquet"
        pl.DataFrame(dead, schema=DEAD_LETTER_SCHEMA).write_parquet(outputs["dead_letters"])
    return ReplaySummary(
        events=merged.height,
        decisions=len(out["tx_id"]),
        duplicates=duplicates,
        dead_letters=len(dead["row"]),
        seconds=time.perf_counter() - started,
        outputs=outputs,
    )


def _dead(dead: dict[str, list[Any]], path: Path | None, row: int, reason: str) -> None:
    dead["file"].append(str(path))
    dead["row"].append(row)
    dead["reason"].append(reason)


def _append_decision(out: dict[str, list[Any]], decision: Decision) -> None:
    for name in DECISION_SCHEMA:
        out[name].append(getattr(decision, name))
