import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rebate_guard.contract.records import Transaction, build, requested_rebate_cents, scale_cents
from rebate_guard.contract.validation import (
    InvalidEvent,
    decode_json_object,
    parse_label,
    parse_signup,
    parse_transaction,
)
from tests.factories import T0, label, signup, tx


def test_a_valid_transaction_becomes_a_record() -> None:
    record = parse_transaction(tx(amount_cents=2599, rebate_rate=0.12))
    assert isinstance(record, Transaction)
    assert (record.tx_id, record.amount_cents, record.rebate_rate) == ("t1", 2599, 0.12)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount_cents": 12.5}, "integer number of minor units"),
        ({"amount_cents": "100"}, "integer number of minor units"),
        ({"amount_cents": 0}, "must be positive"),
        ({"amount_cents": True}, "integer number of minor units"),
        ({"amount_cents": None}, "missing field 'amount_cents'"),
        ({"rebate_rate": 0.31}, "outside 0..0.3"),
        ({"rebate_rate": -0.01}, "outside 0..0.3"),
        ({"rebate_rate": "0.1"}, "must be a number"),
        ({"rebate_rate": float("nan")}, "must be a number"),
        ({"kind": "chargeback"}, "field 'kind' must be one of"),
        ({"kind": "refund"}, "needs 'ref_tx_id'"),
        ({"tx_id": ""}, "must have 1..200 characters"),
        ({"tx_id": None}, "missing field 'tx_id'"),
        ({"user_id": ["u"]}, "must be a string"),
        ({"user_id": True}, "must be a string"),
        ({"merchant_id": "m" * 201}, "must have 1..200 characters"),
        ({"device_id": ""}, "must have 1..200 characters"),
        ({"card_id": "c" * 201}, "must have 1..200 characters"),
        ({"ip": False}, "must be a string"),
        ({"ts": 1_767_225_600}, "not epoch milliseconds"),
        ({"ts": "2026-01-01T00:00:00"}, "has no time zone"),
        ({"ts": "yesterday"}, "unreadable timestamp"),
    ],
)
def test_contract_violations_are_rejected_with_the_reason(change: dict, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(").replace(".", r"\.")):
        parse_transaction(tx(**change))


def test_integer_ids_are_read_as_text_and_the_longest_id_is_accepted() -> None:
    record = parse_transaction(tx(tx_id=42, user_id="u" * 200, device_id=7))
    assert (record.tx_id, record.user_id, record.device_id) == ("42", "u" * 200, "7")


def test_iso_timestamps_with_a_zone_are_read_as_epoch_ms() -> None:
    assert parse_transaction(tx(ts="2026-01-01T00:00:00Z")).ts == T0
    assert parse_transaction(tx(ts="2026-01-01T08:00:00+08:00")).ts == T0


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert parse_transaction({**tx(), "campaign": "spring"}).tx_id == "t1"


def test_bytes_that_are_not_a_json_object_are_rejected() -> None:
    for raw, reason in [
        (b"{bad", "not valid JSON"),
        (b"[1]", "expected a JSON object"),
        (None, "empty message"),
        (b"\xff\xfe", "not valid JSON"),
    ]:
        with pytest.raises(InvalidEvent, match=reason):
            decode_json_object(raw)
    assert decode_json_object(json.dumps(tx()).encode())["tx_id"] == "t1"


def test_signups_and_labels() -> None:
    assert parse_signup(signup(referrer_id="u0")).referrer_id == "u0"
    assert parse_label(label(source=None)).source == "unknown"
    with pytest.raises(InvalidEvent, match="needs 'tx_id' or 'user_id'"):
        parse_label(label(tx_id=None))
    with pytest.raises(InvalidEvent, match="'label' must be one of"):
        parse_label(label(label="maybe"))


def test_requested_rebate_is_exact_where_float_multiplication_is_not() -> None:
    assert 100 * 0.29 < 29  # the float trap this function exists for
    assert requested_rebate_cents(100, 0.29) == 29
    assert requested_rebate_cents(999, 0.3) == 299
    assert requested_rebate_cents(1, 0.06) == 0


@given(st.integers(1, 10**12), st.integers(0, 300_000))
def test_requested_rebate_is_floor_of_exact_product(amount: int, rate_ppm: int) -> None:
    rate = rate_ppm / 1_000_000
    assert requested_rebate_cents(amount, rate) == amount * rate_ppm // 1_000_000


@given(st.integers(0, 10**9), st.floats(0, 1))
def test_scaled_cents_never_exceed_the_original(cents: int, weight: float) -> None:
    scaled = scale_cents(cents, weight)
    assert 0 <= scaled <= cents


def test_fast_built_records_equal_normally_constructed_ones() -> None:
    data = tx(card_id=None, ref_tx_id=None)
    fast = parse_transaction(data)
    slow = Transaction(**{**data, "ts": T0})
    assert fast == slow and fast.dumps() == slow.dumps() and fast.asdict() == slow.asdict()
    with pytest.raises(TypeError, match="missing \\['card_id'\\]"):
        build(Transaction, **{k: v for k, v in data.items() if k != "card_id"})
    misspelled = {("card" if k == "card_id" else k): v for k, v in data.items()}
    with pytest.raises(TypeError, match="unexpected \\['card'\\]"):
        build(Transaction, **misspelled)
