"""Contract files: Parquet, CSV or JSON lines, with ts as a UTC timestamp or epoch ms.

Reading normalises `ts` to Int64 epoch milliseconds so every later step sees one type;
validation of each row happens later, through the same parsers the worker uses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

import polars as pl

Schema = dict[str, pl.DataType | type[pl.DataType]]

#: Polars column types of the Python types record fields are declared with.
DTYPES: dict[Any, type[pl.DataType]] = {
    str: pl.String,
    int: pl.Int64,
    float: pl.Float64,
    bool: pl.Boolean,
}

# CSV has no types: these contract columns are cast, and what does not parse becomes null
# (then rejected row by row, with the reason, by the same validation as the stream).
CSV_NUMERIC: dict[str, type[pl.DataType]] = {"amount_cents": pl.Int64, "rebate_rate": pl.Float64}

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class FileFormatError(ValueError):
    pass


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FileFormatError(
            f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FORMATS)}"
        )
    return fmt


def read_frame(path: Path) -> pl.DataFrame:
    fmt = file_format(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "parquet":
        frame = pl.read_parquet(path)
    elif fmt == "csv":
        # Ids stay strings even when they look numeric; amounts are parsed later, strictly.
        frame = pl.read_csv(path, infer_schema=False)
        frame = frame.with_columns(
            pl.col(c).cast(t, strict=False) for c, t in CSV_NUMERIC.items() if c in frame.columns
        )
    else:
        frame = pl.read_ndjson(path, infer_schema_length=None)
    if "ts" not in frame.columns:
        raise FileFormatError(f"{path}: no 'ts' column")
    return frame.with_columns(normalise_ts(frame["ts"]).alias("ts"))


def normalise_ts(ts: pl.Series) -> pl.Series:
    """Epoch ms as Int64; values that cannot be read become null (and are dead-lettered)."""
    dtype = ts.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            ts = ts.dt.replace_time_zone("UTC")
        return ts.dt.epoch("ms").cast(pl.Int64)
    if dtype.is_integer():
        return ts.cast(pl.Int64)
    if dtype.is_float():
        return ts.cast(pl.Int64, strict=False)
    if dtype == pl.String:
        as_int = ts.cast(pl.Int64, strict=False)
        as_time = ts.str.to_datetime(time_zone="UTC", strict=False).dt.epoch("ms").cast(pl.Int64)
        return as_int.fill_null(as_time)
    return pl.Series(ts.name, [None] * len(ts), dtype=pl.Int64)


def write_frame(frame: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = file_format(path)
    if fmt == "parquet":
        frame.write_parquet(path)
    elif fmt == "csv":
        list_cols = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
        frame.with_columns(pl.col(c).list.join("|") for c in list_cols).write_csv(path)
    else:
        frame.write_ndjson(path)
    return path


def record_schema(record: type, *, json_fields: Collection[str] = ()) -> Schema:
    """The columns of a table of `record`s (a dataclass, such as the contract's records):
    one per field, in declaration order, typed from the field's annotation. `X | None` is a
    nullable X and `list[X]` a list of X; the `json_fields` are written as JSON text.

    >>> from rebate_guard.contract.records import Label
    >>> record_schema(Label)["ts"], record_schema(Label)["tx_id"]
    (Int64, String)
    """
    hints = typing.get_type_hints(record)
    schema: Schema = {}
    for field in dataclasses.fields(record):
        name = field.name
        schema[name] = pl.String if name in json_fields else _dtype(hints[name], record, name)
    return schema


def _dtype(hint: Any, record: type, name: str) -> pl.DataType | type[pl.DataType]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType or origin is typing.Union:
        present = [arg for arg in args if arg is not type(None)]
        if len(present) == 1:
            return _dtype(present[0], record, name)
    elif origin is list and len(args) == 1:
        return pl.List(_dtype(args[0], record, name))
    elif hint in DTYPES:
        return DTYPES[hint]
    raise TypeError(f"{record.__name__}.{name}: no Polars column type for {hint!r}")
