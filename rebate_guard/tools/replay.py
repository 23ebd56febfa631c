"""Replay: contract files through the same scoring code as the worker, without a broker.

Events are merged in event-time order (`rebate_guard.contract.order`), so each transaction is scored
before anything later is learned and a label takes effect only once its ts is reached. This is
the backtest engine: the input files stay Polars columns, turned into Python rows a batch at a
time, and the outputs (decisions, and the ledger's adjustments and the ring events taken from
the scorer as they are made) are kept as Polars columns too, so what grows with the history is
theirs in Arrow (tens of bytes a row), not Python objects.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import polars as pl

from features.engine import EngineConfig, FeatureEngine
from graph.layer import GraphLayer, RingEvent
from rebate_guard.contract.order import EVENT_KINDS, KIND_RANK, Event
from rebate_guard.contract.records import (
    LABELS,
    PLATFORM_EVENTS,
    SIGNUPS,
    TRANSACTIONS,
    Decision,
    Label,
    PlatformAlert,
    PlatformEvent,
    RebateAdjustment,
    Signup,
    SolvencyReading,
    Transaction,
)
from rebate_guard.contract.validation import (
    InvalidEvent,
)
from rebate_guard.core.decider import ALL_FEATURE_NAMES, Scorer
from rebate_guard.core.solvency import SolvencyMonitor
from rebate_guard.tools.io import Schema, read_frame, record_schema, write_frame

#: The output tables' columns, from the records they hold (`record_schema`).
DECISION_SCHEMA = record_schema(Decision)
ADJUSTMENT_SCHEMA = record_schema(RebateAdjustment)
#: Every version of every ring; `status` is active, or retired (superseded by another ring).
#: The evidence (a dict) is written as JSON text.
RING_JSON_FIELDS = ("evidence",)
RING_SCHEMA = record_schema(RingEvent, json_fields=RING_JSON_FIELDS)
DEAD_LETTER_SCHEMA: Schema = {"file": pl.String, "row": pl.Int64, "reason": pl.String}
#: The solvency monitor's readings and alerts (with platform events: issue #21).
SOLVENCY_SCHEMA = record_schema(SolvencyReading)
ALERT_SCHEMA = record_schema(PlatformAlert)
#: The cyclic GC's thresholds during replay's loop (Python's: 700, 10, 10): the scoring
#: state is millions of long-lived containers, and at the default a collection ran every few
#: events (~10% of replay's CPU on the 20k check world; benchmarks/README.md).
REPLAY_GC_THRESHOLDS = (50_000, 20, 10)
#: Past any event time: what closes the solvency monitor's last period at the end of replay.
END_OF_TIME = 2**62
#: Merged positions whose rows become Python values at a time: the files stay in Polars
#: columns, so replay's memory for its inputs does not grow with them.
ROWS_PER_BATCH = 65_536


class Feedback(Protocol):
    """Labels that answer replay's decisions: told each decision, it has labels due by an
    event time (the simulated risk team reviewing the sample of withheld payments,
    `rebate_guard.tools.simulator.ReviewDesk`; in production they come from the console's
    review queue)."""

    def decided(self, decision: Decision) -> None: ...

    def due(self, ts: int) -> list[Label]:
        """The labels with ts <= `ts` not handed out yet, in ts order."""
        ...


@dataclass(frozen=True)
class ReplaySummary:
    events: int
    decisions: int
    duplicates: int
    dead_letters: int
    seconds: float
    outputs: dict[str, Path]
    #: The friction budget at the end (`Decider.budget_report`); None for features.
    budget: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        files: EventFiles,
        rows: int,
        started: float,
        outputs: dict[str, Path],
        budget: dict[str, Any] | None = None,
    ) -> ReplaySummary:
        return cls(
            events=files.events,
            decisions=rows,
            duplicates=files.duplicates,
            dead_letters=len(files.dead["row"]),
            seconds=time.perf_counter() - started,
            outputs=outputs,
            budget=budget,
        )

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


@dataclass
class EventFiles:
    """Contract files merged into one event-time-ordered stream of parsed events.

    What cannot be read (unreadable ts, contract violations) is collected in `dead`; a repeated
    tx_id is counted in `duplicates` and skipped (idempotent by tx_id: the first stands).
    Shared by `replay` (decisions) and `compute_features` (feature vectors). The files are
    read whole into Polars; their rows become Python values `ROWS_PER_BATCH` merged positions
    at a time (~1 GB of Python lists for 1M transactions when every column was converted up
    front).
    """

    transactions: Path
    signups: Path | None = None
    labels: Path | None = None
    progress: TextIO | None = sys.stderr
    #: The platform's events (issue #21), when given.
    platform_events: Path | None = None
    events: int = 0
    duplicates: int = 0
    dead: dict[str, list[Any]] = field(
        default_factory=lambda: {"file": [], "row": [], "reason": []}
    )

    def __iter__(self) -> Iterator[Event]:
        paths = {
            SIGNUPS: self.signups,
            TRANSACTIONS: self.transactions,
            LABELS: self.labels,
            PLATFORM_EVENTS: self.platform_events,
        }
        frames: list[pl.DataFrame] = []
        orders: list[pl.DataFrame] = []
        # `order_key`'s order by columns: ts, the kind's rank, its id, then the input row.
        for rank, kind in enumerate(EVENT_KINDS):
            path = paths[kind.name]
            frame = (
                read_frame(path) if path is not None else pl.DataFrame({"ts": []}, {"ts": pl.Int64})
            )
            frames.append(frame)
            ids = [pl.col(c).cast(pl.String) for c in kind.id_fields if c in frame.columns]
            order = frame.select(
                pl.col("ts"),
                pl.lit(rank, pl.Int8).alias("rank"),
                pl.coalesce(*ids, pl.lit("")).alias("id"),
                pl.int_range(pl.len()).alias("row"),
            )
            for row in order.filter(pl.col("ts").is_null())["row"]:
                self._dead(path, row, "missing or unreadable 'ts'")
            orders.append(order.filter(pl.col("ts").is_not_null()))
        merged = pl.concat(orders).sort(["ts", "rank", "id", "row"], maintain_order=True)
        # Only an id that occurs more than once can be a duplicate: `seen` holds those alone
        # (a transaction's tx_id, a platform event's event_id: the first stands).
        keyed = (Transaction, PlatformEvent)
        repeated = {kind: set(_repeated_ids(orders[KIND_RANK[kind]])) for kind in keyed}
        merged = merged.select("rank", "row")
        del orders
        self.events = merged.height
        seen: dict[type, set[str]] = {kind: set() for kind in keyed}
        bar = Progress(merged.height, self.progress)
        done = 0
        for batch in merged.iter_slices(ROWS_PER_BATCH):
            ranks = batch["rank"].to_list()
            rows = batch["row"].to_list()
            records = [_records(frame, batch, rank) for rank, frame in enumerate(frames)]
            for rank, row in zip(ranks, rows, strict=True):
                kind = EVENT_KINDS[rank]
                if done % 4096 == 0:
                    bar.update(done)
                done += 1
                try:
                    event = kind.parse(next(records[rank]))
                except InvalidEvent as exc:
                    self._dead(paths[kind.name], row, str(exc))
                    continue
                if (
                    isinstance(event, keyed)
                    and (key := _idempotency_key(event)) in repeated[type(event)]
                ):
                    if key in seen[type(event)]:
                        self.duplicates += 1
                        continue
                    seen[type(event)].add(key)
                yield event
        bar.update(merged.height, force=True)

    def _dead(self, path: Path | None, row: int, reason: str) -> None:
        self.dead["file"].append(str(path))
        self.dead["row"].append(row)
        self.dead["reason"].append(reason)

    def write_dead_letters(self, out_dir: Path, outputs: dict[str, Path]) -> None:
        if self.dead["row"]:
            outputs["dead_letters"] = out_dir / "dead_letters.parquet"
            pl.DataFrame(self.dead, schema=DEAD_LETTER_SCHEMA).write_parquet(
                outputs["dead_letters"]
            )


class ChunkedRows:
    """The rows of one output table, kept as Polars columns: every `ROWS_PER_BATCH` rows
    leave their Python lists (a decision ~0.5 KB, a ring version with its evidence more)
    for a frame, so what grows with the history is Arrow (tens of bytes a row).

    A row is given as its values in the schema's order (`append`), or as a record whose
    attributes are the columns (`append_record`: decisions, adjustments, ring events), its
    `json_fields` written as JSON text."""

    def __init__(
        self,
        schema: Schema,
        *,
        json_fields: Collection[str] = (),
        spill_to: Path | None = None,
    ) -> None:
        self.schema = schema
        self.json_at = [i for i, name in enumerate(schema) if name in json_fields]
        #: Where full chunks go as Parquet parts instead of staying in memory (None: kept).
        self.spill_to = spill_to
        self.chunks: list[pl.DataFrame] = []
        self.parts: list[Path] = []
        self.chunked = 0
        self.pending = self._empty()

    def __len__(self) -> int:
        return self.chunked + self.held

    @property
    def held(self) -> int:
        """Rows still held as Python values (the rest are in `chunks`)."""
        return len(self.pending[0])

    def append(self, values: Iterable[Any]) -> None:
        for column, value in zip(self.pending, values, strict=True):
            column.append(value)
        if self.held >= ROWS_PER_BATCH:
            self._flush()

    def append_record(self, record: Any) -> None:
        values = [getattr(record, name) for name in self.schema]
        for i in self.json_at:
            values[i] = json.dumps(values[i], sort_keys=True)
        self.append(values)

    def take(self, records: list[Any]) -> None:
        """Move `records` (a caller's list of records: the scorer's adjustments or ring
        events) into the table, leaving the list empty."""
        for record in records:
            self.append_record(record)
        records.clear()

    def frame(self) -> pl.DataFrame:
        """Every row so far, in order, in one chunk."""
        return self._lazy().collect().rechunk()

    def write_parquet(self, path: Path) -> None:
        """Every row so far, in order, to `path`: spilled parts are streamed through, not
        read into memory together."""
        if self.parts:
            self._lazy().sink_parquet(path)
        else:
            self.frame().write_parquet(path)

    def _lazy(self) -> pl.LazyFrame:
        self._flush()
        pieces = [pl.scan_parquet(part) for part in self.parts]
        pieces += [chunk.lazy() for chunk in self.chunks]
        if not pieces:
            return pl.LazyFrame(schema=self.schema)
        return pl.concat(pieces, how="vertical", rechunk=True)

    def _flush(self) -> None:
        if self.held:
            columns = dict(zip(self.schema, self.pending, strict=True))
            chunk = pl.DataFrame(columns, schema=self.schema)
            if self.spill_to is None:
                self.chunks.append(chunk)
            else:
                part = self.spill_to / f"{len(self.parts):06d}.parquet"
                chunk.write_parquet(part)
                self.parts.append(part)
            self.chunked += self.held
            self.pending = self._empty()

    def _empty(self) -> list[list[Any]]:
        return [[] for _ in self.schema]


def ring_frame(events: Iterable[RingEvent]) -> pl.DataFrame:
    """Ring events as rows (`rings.parquet`): every version of every ring, in order."""
    rows = ChunkedRows(RING_SCHEMA, json_fields=RING_JSON_FIELDS)
    for event in events:
        rows.append_record(event)
    return rows.frame()


@dataclass
class ReplayOutputs:
    """What replay writes, as it goes: the decisions, and the ledger's adjustments and the
    ring events taken from the scorer's lists (`take`) before they grow as Python objects."""

    decisions: ChunkedRows = field(default_factory=lambda: ChunkedRows(DECISION_SCHEMA))
    adjustments: ChunkedRows = field(default_factory=lambda: ChunkedRows(ADJUSTMENT_SCHEMA))
    rings: ChunkedRows = field(
        default_factory=lambda: ChunkedRows(RING_SCHEMA, json_fields=RING_JSON_FIELDS)
    )
    solvency: ChunkedRows = field(default_factory=lambda: ChunkedRows(SOLVENCY_SCHEMA))
    alerts: ChunkedRows = field(default_factory=lambda: ChunkedRows(ALERT_SCHEMA))

    @classmethod
    def spilling_to(cls, directory: Path) -> ReplayOutputs:
        """Outputs whose full chunks go to Parquet parts under `directory`, so replay's
        memory does not grow with the rows it has written (~150 bytes a decision in Arrow:
        ~0.75 GB over 5M transactions)."""

        def table(name: str, schema: Schema, json_fields: Collection[str] = ()) -> ChunkedRows:
            (directory / name).mkdir()
            return ChunkedRows(schema, json_fields=json_fields, spill_to=directory / name)

        return cls(
            table("decisions", DECISION_SCHEMA),
            table("adjustments", ADJUSTMENT_SCHEMA),
            table("rings", RING_SCHEMA, RING_JSON_FIELDS),
            table("solvency", SOLVENCY_SCHEMA),
            table("alerts", ALERT_SCHEMA),
        )

    def collect(self, decision: Decision | None, scorer: Scorer) -> None:
        """After an event: its decision, and what the scorer made with it."""
        if decision is not None:
            self.decisions.append_record(decision)
        if scorer.adjustments or scorer.ring_events or scorer.solvency_outputs:
            self.take(scorer)

    def take(self, scorer: Scorer) -> None:
        """Move the adjustments, ring events and solvency readings and alerts the scorer
        made since the last take."""
        if scorer.adjustments:
            self.adjustments.take(scorer.adjustments)
        if scorer.ring_events:
            self.rings.take(scorer.ring_events)
        for output in scorer.solvency_outputs:
            table = self.solvency if isinstance(output, SolvencyReading) else self.alerts
            table.append_record(output)
        scorer.solvency_outputs.clear()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Replay's loop with the cyclic GC run less often (`REPLAY_GC_THRESHOLDS`), and what
    exists before it (modules, the scorer as built) never scanned again (`gc.freeze`)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*REPLAY_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _records(frame: pl.DataFrame, batch: pl.DataFrame, rank: int) -> Iterator[dict[str, Any]]:
    """The rows of `frame` (one kind's file) that `batch` (merged positions) names, as
    dicts in the batch's order: only these rows become Python values, a batch at a time."""
    rows = batch.filter(pl.col("rank") == rank)["row"]
    taken = frame.select(pl.all().gather(rows))
    names = taken.columns
    columns = [taken[name].to_list() for name in names]
    return (dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True))


def _idempotency_key(event: Transaction | PlatformEvent) -> str:
    return event.tx_id if isinstance(event, Transaction) else event.event_id


def _repeated_ids(order: pl.DataFrame) -> list[str]:
    """The ids that more than one row of `order` (one kind's merge columns) carries."""
    counts = order.group_by("id").len()
    return counts.filter(pl.col("len") > 1)["id"].to_list()


def replay(
    transactions: Path,
    out_dir: Path,
    signups: Path | None = None,
    labels: Path | None = None,
    scorer: Scorer | None = None,
    progress: TextIO | None = sys.stderr,
    platform_events: Path | None = None,
    reviews: Feedback | None = None,
) -> ReplaySummary:
    """Replays the contract files into `out_dir`: decisions (the points requests' among
    them), adjustments, rings, dead letters, the friction budget; with `platform_events`,
    the solvency monitor's readings and alerts too (`solvency.parquet`,
    `platform_alerts.parquet`), its last period closed at the end of the input. With
    `reviews`, every decision is told to it and the labels it has due are applied in
    event-time order with the files' events (those due after the last event never are)."""
    started = time.perf_counter()
    scorer = scorer or Scorer(graph=GraphLayer())
    if platform_events is not None and scorer.solvency is None:
        scorer.solvency = SolvencyMonitor(scorer.decider.policy.solvency)
    files = EventFiles(transactions, signups, labels, progress, platform_events)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "decisions": out_dir / "decisions.parquet",
        "adjustments": out_dir / "adjustments.parquet",
    }
    # The parts sit beside the outputs (the user's disk), not in /tmp (often memory).
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".replay-parts-") as parts:
        out = ReplayOutputs.spilling_to(Path(parts))
        last_ts = None
        with fewer_collections():
            for event in files:
                if reviews is not None:
                    _reviewed(reviews, event, scorer, out)
                decision = scorer.apply(event, decided_at=int(time.time() * 1000))
                last_ts = event.ts
                out.collect(decision, scorer)
                if reviews is not None and decision is not None:
                    reviews.decided(decision)
        if scorer.graph is not None and last_ts is not None:  # changed since the last scan
            scorer.ring_events += scorer.graph.scan(last_ts)
        if scorer.solvency is not None:  # the last period: closed, as the input ends
            scorer.solvency_outputs += scorer.solvency.advance(END_OF_TIME)
        out.take(scorer)
        out.decisions.write_parquet(outputs["decisions"])
        out.adjustments.write_parquet(outputs["adjustments"])
        if scorer.graph is not None:
            outputs["rings"] = out_dir / "rings.parquet"
            out.rings.write_parquet(outputs["rings"])
        if scorer.solvency is not None:
            outputs["solvency"] = out_dir / "solvency.parquet"
            out.solvency.write_parquet(outputs["solvency"])
            outputs["platform_alerts"] = out_dir / "platform_alerts.parquet"
            out.alerts.write_parquet(outputs["platform_alerts"])
    files.write_dead_letters(out_dir, outputs)
    outputs["inputs"] = out_dir / "inputs.json"  # where the events came from (`report`)
    inputs = {"transactions": transactions, "signups": signups, "labels": labels}
    if platform_events is not None:
        inputs["platform_events"] = platform_events
    named = {name: None if path is None else str(path.resolve()) for name, path in inputs.items()}
    outputs["inputs"].write_text(json.dumps(named, indent=2) + "\n")
    budget = scorer.decider.budget_report()
    outputs["budget"] = out_dir / "budget.json"
    outputs["budget"].write_text(json.dumps(budget, indent=2) + "\n")
    return ReplaySummary.of(files, len(out.decisions), started, outputs, budget)


def _reviewed(reviews: Feedback, event: Event, scorer: Scorer, out: ReplayOutputs) -> None:
    """Applies the review labels due before `event`: at an equal ts a label comes after a
    signup and before the other kinds (`contract.order.EVENT_KINDS`)."""
    due = reviews.due(event.ts - 1 if isinstance(event, Signup) else event.ts)
    for label in due:
        out.collect(scorer.apply(label, decided_at=int(time.time() * 1000)), scorer)


def compute_features(
    transactions: Path,
    out: Path,
    signups: Path | None = None,
    labels: Path | None = None,
    progress: TextIO | None = sys.stderr,
    config: EngineConfig | None = None,
    platform_events: Path | None = None,
) -> ReplaySummary:
    """One row per transaction: tx_id and every feature the detectors see, computed by the
    same `Scorer` as the worker and replay, in the same event-time order (decision-context
    features need the decisions, and the ring features the rings, so the scorer decides with
    the graph layer too; only the features are written). The platform's events, when given,
    are learned as the worker learns them (the binding, coupon and points features)."""
    started = time.perf_counter()
    scorer = Scorer(features=FeatureEngine(config), graph=GraphLayer())
    files = EventFiles(transactions, signups, labels, progress, platform_events=platform_events)
    schema: Schema = {"tx_id": pl.String, **{name: pl.Float64 for name in ALL_FEATURE_NAMES}}
    rows = ChunkedRows(schema)
    with fewer_collections():
        for event in files:
            if isinstance(event, Transaction):
                _, x = scorer.decide(event, decided_at=0)
                rows.append([event.tx_id, *(x[name] for name in ALL_FEATURE_NAMES)])
            else:
                scorer.apply(event, decided_at=0)
    frame = rows.frame()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_frame(frame, out)
    outputs = {"features": out}
    files.write_dead_letters(out.parent, outputs)
    return ReplaySummary.of(files, frame.height, started, outputs)
