"""The platform-events contract (issue #21): every kind parses with the fields it requires,
and what breaks the contract is refused with the dead-letter reason."""

import json

import pytest

from rebate_guard.contract.records import (
    BINDING,
    PLATFORM_EVENT_FIELDS,
    PLATFORM_EVENT_KINDS,
    PlatformEvent,
)
from rebate_guard.contract.validation import InvalidEvent, parse_bytes, parse_platform_event
from tests.factories import T0

#: A value for every field any kind requires.
FULL = {
    "user_id": "u-1",
    "merchant_id": "m-1",
    "tx_id": "t-1",
    "coupon_id": "c-1",
    "counterparty_id": "u-2",
    "amount_cents": 250,
}


def _event(kind: str, /, **change: object) -> dict[str, object]:
    needed = {name: FULL[name] for name in PLATFORM_EVENT_FIELDS[kind]}
    return {"event_id": f"e-{kind}", "ts": T0, "kind": kind, **needed, **change}


@pytest.mark.parametrize("kind", PLATFORM_EVENT_KINDS)
def test_each_kind_parses_with_only_the_fields_it_requires(kind: str) -> None:
    event = parse_platform_event(_event(kind))
    assert isinstance(event, PlatformEvent)
    assert (event.event_id, event.ts, event.kind) == (f"e-{kind}", T0, kind)
    for name in PLATFORM_EVENT_FIELDS[kind]:
        assert getattr(event, name) == FULL[name]
    not_required = set(FULL) - set(PLATFORM_EVENT_FIELDS[kind]) - {"amount_cents"}
    assert all(getattr(event, name) is None for name in not_required)
    assert PlatformEvent.loads(event.dumps()) == event


@pytest.mark.parametrize(
    ("kind", "missing"),
    [(kind, name) for kind, names in PLATFORM_EVENT_FIELDS.items() for name in names],
)
def test_a_field_the_kind_requires_is_missing(kind: str, missing: str) -> None:
    with pytest.raises(InvalidEvent, match=f"a {kind} needs '{missing}'"):
        parse_platform_event(_event(kind, **{missing: None}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": "points_cashout"}, "field 'kind' must be one of merchant_settlement"),
        ({"kind": None}, "field 'kind' must be one of"),
        ({"amount_cents": 0}, "'amount_cents' must be positive, got 0"),
        ({"amount_cents": -5}, "'amount_cents' must be positive, got -5"),
        ({"amount_cents": 2.5}, "integer number of minor units"),
        ({"amount_cents": "250"}, "integer number of minor units"),
        ({"event_id": None}, "missing field 'event_id'"),
        ({"event_id": "e" * 201}, "must have 1..200 characters"),
        ({"ts": 1_767_225_600}, "not epoch milliseconds"),
        ({"region": ["north"]}, "must be a string"),
        ({"counterparty_id": "u-1"}, "a points_transfer to the same user moves nothing"),
    ],
)
def test_contract_violations_are_rejected_with_the_reason(change: dict, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_platform_event(_event("points_transfer", **change))


def test_a_binding_moves_no_money_and_other_kinds_must() -> None:
    binding = parse_platform_event(_event(BINDING, device_id="d-1", region="north"))
    assert (binding.amount_cents, binding.device_id, binding.region) == (0, "d-1", "north")
    assert parse_platform_event(_event(BINDING, amount_cents=0)).amount_cents == 0
    with pytest.raises(InvalidEvent, match="must be >= 0"):
        parse_platform_event(_event(BINDING, amount_cents=-1))
    with pytest.raises(InvalidEvent, match="a pool_topup needs 'amount_cents'"):
        parse_platform_event(_event("pool_topup", amount_cents=None))


def test_raw_bytes_go_through_the_same_parser() -> None:
    raw = json.dumps(_event("pool_topup", region="south", extra="ignored")).encode()
    event = parse_bytes(raw, parse_platform_event)
    assert (event.kind, event.amount_cents, event.region) == ("pool_topup", 250, "south")
    with pytest.raises(InvalidEvent, match="expected a JSON object"):
        parse_bytes(b"[]", parse_platform_event)
