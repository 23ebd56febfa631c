from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from graph.layer import GraphLayer
from rebate_guard.contract.order import Event, event_id, order_key
from rebate_guard.contract.records import RebateAdjustment, Transaction
from rebate_guard.core.decider import Scorer
from rebate_guard.tools import replay as replay_module
from rebate_guard.tools.io import record_schema, write_frame
from rebate_guard.tools.replay import (
    ADJUSTMENT_SCHEMA,
    ChunkedRows,
    EventFiles,
    compute_features,
    replay,
)
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from tests.factories import DAY, HOUR, T0, label, signup, tx


def _files(tmp_path: Path, ext: str) -> dict[str, Path]:
    txs = [tx(f"t{i}", T0 + i * HOUR, user_id=f"u{i % 3}") for i in range(6)]
    txs.append(tx("t0", T0 + 7 * HOUR))  # a duplicate tx_id: the first decision stands
    txs.append(tx("bad", T0, amount_cents=-1))
    sig = [signup(f"u{i}", T0 - DAY) for i in range(3)]
    lab = [label("t1", T0 + 2 * DAY)]
    frames = {"transactions": txs, "signups": sig, "labels": lab}
    paths = {}
    for name, rows in frames.items():
        frame = pl.DataFrame(rows, infer_schema_length=None)
        paths[name] = write_frame(frame, tmp_path / f"{name}.{ext}")
    return paths


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_replay_writes_one_decision_per_transaction(tmp_path: Path, ext: str) -> None:
    paths = _files(tmp_path, ext)
    summary = replay(out_dir=tmp_path / "out", progress=None, **paths)
    decisions = pl.read_parquet(summary.outputs["decisions"])
    assert summary.decisions == 6 and summary.duplicates == 1 and summary.dead_letters == 1
    assert sorted(decisions["tx_id"]) == [f"t{i}" for i in range(6)]
    assert decisions["ts"].is_sorted()
    assert (decisions["rebate_requested_cents"] == 1000).all()
    assert set(decisions["action"]) <= {"allow", "scale", "hold", "block"}
    dead = pl.read_parquet(summary.outputs["dead_letters"])
    assert dead["reason"].to_list() == ["field 'amount_cents' must be positive, got -1"]


def test_iso_timestamps_in_files_are_accepted(tmp_path: Path) -> None:
    frame = pl.DataFrame([tx("a", T0), tx("b", T0 + 1000)]).with_columns(
        pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC")
    )
    path = write_frame(frame, tmp_path / "tx.parquet")
    summary = replay(transactions=path, out_dir=tmp_path / "out", progress=None)
    out = pl.read_parquet(summary.outputs["decisions"])
    assert out["ts"].to_list() == [T0, T0 + 1000]


def test_a_signup_at_the_same_instant_counts_before_the_payment(tmp_path: Path) -> None:
    txs = write_frame(pl.DataFrame([tx("a", T0, user_id="n", device_id="x")]), tmp_path / "t.jsonl")
    # Referred, so not a sign-up at the till (which `young_account` spares).
    referred = signup("n", T0, device_id="x", referrer_id="r")
    sig = write_frame(pl.DataFrame([referred]), tmp_path / "s.jsonl")
    summary = replay(transactions=txs, signups=sig, out_dir=tmp_path / "out", progress=None)
    out = pl.read_parquet(summary.outputs["decisions"])
    assert "young_account" in out["reasons"][0].to_list()


def test_unknown_file_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown file type"):
        replay(transactions=tmp_path / "tx.xlsx", out_dir=tmp_path, progress=None)


def test_the_output_files_keep_their_columns_and_types(tmp_path: Path) -> None:
    """The schemas are derived from the records (`record_schema`); the files replay writes
    must still have exactly these columns, in this order, with these types."""
    summary = replay(out_dir=tmp_path / "out", progress=None, **_files(tmp_path, "parquet"))
    string, integer, real, strings = pl.String, pl.Int64, pl.Float64, pl.List(pl.String)
    expected = {
        "decisions": {
            "tx_id": string,
            "ts": integer,
            "user_id": string,
            "merchant_id": string,
            "risk": real,
            "trust_weight": real,
            "action": string,
            "rebate_requested_cents": integer,
            "rebate_granted_cents": integer,
            "reasons": strings,
            "model_version": string,
            "decided_at": integer,
            "policy_version": string,
            "commission_tiers": integer,
            "threshold_version": string,
        },
        "adjustments": {
            "adjustment_id": string,
            "tx_id": string,
            "user_id": string,
            "ts": integer,
            "kind": string,
            "cents": integer,
            "cause": string,
            "requested_cents": integer,
            "granted_cents": integer,
            "held_cents": integer,
            "voided_cents": integer,
            "policy_version": string,
            "decided_at": integer,
        },
        "rings": {
            "ring_id": string,
            "kind": string,
            "version": integer,
            "users": strings,
            "merchants": strings,
            "score": real,
            "detected_at": integer,
            "ts": integer,
            "evidence": string,
            "rebate_at_risk_cents": integer,
            "status": string,
        },
        "dead_letters": {"file": string, "row": integer, "reason": string},
    }
    for name, columns in expected.items():
        written = pl.read_parquet_schema(summary.outputs[name])
        assert list(written.items()) == list(columns.items()), name


def test_record_schema_types_each_field_from_its_annotation() -> None:
    @dataclass
    class Row:
        name: str
        count: int | None
        share: float
        flag: bool
        tags: list[str]
        extra: dict[str, int]

    schema = record_schema(Row, json_fields=("extra",))
    assert list(schema.items()) == [
        ("name", pl.String),
        ("count", pl.Int64),
        ("share", pl.Float64),
        ("flag", pl.Boolean),
        ("tags", pl.List(pl.String)),
        ("extra", pl.String),
    ]
    with pytest.raises(TypeError, match=r"Row\.extra: no Polars column type"):
        record_schema(Row)


def test_events_dead_letters_and_decisions_do_not_depend_on_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`EventFiles` turns rows into Python values a batch of merged positions at a time, and
    replay keeps its decisions in chunks: batches of two give the same events in the same
    order, the same duplicates and dead letters (with their rows), and the same files."""
    paths = _files(tmp_path, "parquet")
    rows = pl.read_parquet(paths["transactions"]).to_dicts()
    rows.append(tx("t9", T0 + 8 * HOUR, amount_cents=-5))  # dead: the next t9 is no duplicate
    rows.append(tx("t9", T0 + 9 * HOUR))
    rows.append({**tx("late", T0), "ts": None})  # no ts: dead before the merge
    write_frame(pl.DataFrame(rows, infer_schema_length=None), paths["transactions"])

    def read(batch: int) -> tuple[list[Event], EventFiles, pl.DataFrame, pl.DataFrame]:
        monkeypatch.setattr(replay_module, "ROWS_PER_BATCH", batch)
        files = EventFiles(paths["transactions"], paths["signups"], paths["labels"], None)
        summary = replay(out_dir=tmp_path / f"out{batch}", progress=None, **paths)
        decisions = pl.read_parquet(summary.outputs["decisions"]).drop("decided_at")
        features = tmp_path / f"features{batch}.parquet"
        compute_features(out=features, progress=None, **paths)
        return list(files), files, decisions, pl.read_parquet(features)

    events, files, decisions, features = read(2)
    assert [event_id(e) for e in events if isinstance(e, Transaction)] == [
        *(f"t{i}" for i in range(6)),
        "t9",
    ]
    assert files.duplicates == 1 and files.dead["row"] == [10, 7, 8]
    assert files.dead["reason"][1:] == [
        "field 'amount_cents' must be positive, got -1",
        "field 'amount_cents' must be positive, got -5",
    ]
    assert events == sorted(events, key=lambda e: order_key(e, 0))
    at_once = read(1 << 20)
    assert events == at_once[0] and files.dead == at_once[1].dead
    assert decisions.equals(at_once[2]) and decisions.height == 7
    assert (
        features.equals(at_once[3]) and features["tx_id"].to_list() == decisions["tx_id"].to_list()
    )


def test_chunked_rows_leave_python_every_batch_and_read_back_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_module, "ROWS_PER_BATCH", 2)
    rows = ChunkedRows(ADJUSTMENT_SCHEMA)
    made = [
        RebateAdjustment(
            f"t{i}:hold", f"t{i}", "u", T0 + i, "void", i, "label:fraud", 9, 0, 0, 9, "p1", i
        )
        for i in range(5)
    ]
    taken = list(made)
    rows.take(taken)
    assert taken == [] and len(rows) == 5
    assert (len(rows.chunks), rows.held) == (2, 1)
    frame = rows.frame()
    assert frame.schema == ADJUSTMENT_SCHEMA and frame.n_chunks() == 1
    assert frame.to_dicts() == [a.asdict() for a in made]


def test_adjustments_and_rings_leave_the_scorer_as_replay_goes_and_the_files_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay takes the scorer's adjustments and ring events into Polars chunks as they are
    made: in chunks of 64 rows the files are the same as in one chunk."""
    config = WorldConfig(
        seed=5, n_users=400, n_merchants=30, days=6, target_transactions=2_000, fraud_scale=10
    )
    paths = write_world(simulate_world(config), tmp_path / "world")
    inputs = {name: paths[name] for name in ("transactions", "signups", "labels")}
    written = ("decisions", "adjustments", "rings")

    def run(batch: int) -> tuple[Scorer, dict[str, pl.DataFrame]]:
        monkeypatch.setattr(replay_module, "ROWS_PER_BATCH", batch)
        scorer = Scorer(graph=GraphLayer())
        summary = replay(out_dir=tmp_path / f"out{batch}", progress=None, scorer=scorer, **inputs)
        frames = {name: pl.read_parquet(summary.outputs[name]) for name in written}
        return scorer, {name: f.drop("decided_at", strict=False) for name, f in frames.items()}

    scorer, chunked = run(64)
    assert scorer.adjustments == [] and scorer.ring_events == []
    assert chunked["adjustments"].height > 3 * 64 and chunked["rings"].height > 2 * 64
    _, at_once = run(1 << 20)
    for name in written:
        assert chunked[name].equals(at_once[name]), name
    # The parts replay spilled its chunks to are gone once the files are written.
    assert sorted(p.name for p in (tmp_path / "out64").iterdir()) == sorted(
        p.name for p in (tmp_path / f"out{1 << 20}").iterdir()
    )
    assert not [p for p in (tmp_path / "out64").iterdir() if p.name.startswith(".replay-parts")]


def test_spilled_rows_go_to_parquet_parts_and_come_back_whole_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_module, "ROWS_PER_BATCH", 2)
    rows = ChunkedRows(ADJUSTMENT_SCHEMA, spill_to=tmp_path)
    made = [
        RebateAdjustment(
            f"t{i}:hold", f"t{i}", "u", T0 + i, "void", i, "label:fraud", 9, 0, 0, 9, "p1", i
        )
        for i in range(7)
    ]
    rows.take(list(made))
    # Three full chunks left memory for files; the seventh row is still held.
    assert (rows.chunks, len(rows.parts), rows.held, len(rows)) == ([], 3, 1, 7)
    assert all(part.exists() for part in rows.parts)
    rows.write_parquet(tmp_path / "all.parquet")
    written = pl.read_parquet(tmp_path / "all.parquet")
    assert written.schema == ADJUSTMENT_SCHEMA
    assert written.to_dicts() == [a.asdict() for a in made] == rows.frame().to_dicts()
