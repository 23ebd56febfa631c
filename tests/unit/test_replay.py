from pathlib import Path

import polars as pl
import pytest

from rebate_guard.tools.io import write_frame
from rebate_guard.tools.replay import replay
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
    sig = write_frame(pl.DataFrame([signup("n", T0, device_id="x")]), tmp_path / "s.jsonl")
    summary = replay(transactions=txs, signups=sig, out_dir=tmp_path / "out", progress=None)
    out = pl.read_parquet(summary.outputs["decisions"])
    assert "young_account" in out["reasons"][0].to_list()


def test_unknown_file_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown file type"):
        replay(transactions=tmp_path / "tx.xlsx", out_dir=tmp_path, progress=None)
