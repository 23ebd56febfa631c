"""The faust-free contract records write and read exactly what the Faust records did.

While both exist, each plain record is compared with its Faust twin on many generated values:
the same bytes from `dumps()`, the same `asdict()`, the same record back from `loads()`.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.records as faust_records
from rebate_guard.contract import records

RECORDS = (
    "Transaction",
    "Signup",
    "Label",
    "Decision",
    "RebateAdjustment",
    "Ring",
    "FeatureVector",
    "DeadLetter",
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def strategy(annotation: Any) -> st.SearchStrategy[Any]:
    if annotation is str:
        return st.text()
    if annotation is int:
        return st.integers(min_value=-(2**70), max_value=2**70)
    if annotation is float:
        return st.floats() | st.integers(min_value=-(2**40), max_value=2**40)
    if annotation == list[str]:
        return st.lists(st.text(), max_size=5)
    if annotation == dict[str, Any]:
        return st.dictionaries(st.text(max_size=10), json_values, max_size=5)
    args = typing.get_args(annotation)
    if type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        return st.none() | strategy(inner)
    raise AssertionError(f"no strategy for {annotation!r}")


def values_of(name: str) -> st.SearchStrategy[dict[str, Any]]:
    hints = typing.get_type_hints(getattr(records, name))
    fields = records.__dict__[name]._fields
    return st.fixed_dictionaries({field: strategy(hints[field]) for field in fields})


@pytest.mark.parametrize("name", RECORDS)
def test_fields_and_defaults_match_faust(name: str) -> None:
    ours, theirs = getattr(records, name), getattr(faust_records, name)
    assert ours._fields == tuple(theirs._options.fields)
    assert ours._defaults == theirs._options.defaults


@pytest.mark.parametrize("name", RECORDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_same_bytes_as_faust(name: str, data: st.DataObject) -> None:
    ours, theirs = getattr(records, name), getattr(faust_records, name)
    values = data.draw(values_of(name))
    mine, faust = ours(**values), theirs(**values)
    raw = faust.dumps()
    assert mine.dumps() == raw
    assert mine.asdict() == faust.asdict()
    assert records.to_row(mine) == faust_records.to_row(faust)
    assert records.build(ours, **values).dumps() == faust_records.build(theirs, **values).dumps()
    assert ours.loads(raw).dumps() == theirs.loads(raw).dumps() == raw
    # Keyword construction with only the required fields, and loading a payload without the
    # optional ones, null in them, or with keys the record does not know.
    required = {k: v for k, v in values.items() if k not in ours._defaults}
    assert ours(**required).dumps() == theirs(**required).dumps()
    nulls = {**required, **dict.fromkeys(ours._defaults)}
    assert ours(**nulls).dumps() == theirs(**nulls).dumps()
    for payload in (required, nulls, {**values, "unknown_key": [1, 2]}):
        raw = records._ENCODER.encode(payload).encode()
        assert ours.loads(raw).dumps() == theirs.loads(raw).dumps()


@pytest.mark.parametrize("name", RECORDS)
def test_missing_required_field_raises_like_faust(name: str) -> None:
    ours, theirs = getattr(records, name), getattr(faust_records, name)
    with pytest.raises(TypeError):
        theirs.loads(b"{}")
    with pytest.raises(TypeError):
        ours.loads(b"{}")


def test_values_json_has_no_type_for_are_written_as_faust_wrote_them() -> None:
    evidence = {"set": {3, 1, 2}, "tuple": (1, "a"), "frozen": frozenset("x"), "nan": float("nan")}
    ring = dict(
        ring_id="r",
        kind="pyramid",
        users=["u"],
        merchants=[],
        devices=[],
        score=1e-7,
        detected_at=0,
        rebate_at_risk_cents=0,
        evidence=evidence,
    )
    assert records.Ring(**ring).dumps() == faust_records.Ring(**ring).dumps()


def test_equal_ordered_and_hashed_by_fields_like_faust() -> None:
    a = dict(ts=1, label="fraud", source="s", tx_id="a")
    b = {**a, "tx_id": "b"}
    for module in (records, faust_records):
        x, y = module.Label(**a), module.Label(**b)
        assert x == module.Label(**a) and x != y and x < y and y > x
        assert hash(x) == hash(module.Label(**a))
    assert records.Label(**a) != faust_records.Label(**a)
