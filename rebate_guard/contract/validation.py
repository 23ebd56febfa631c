"""Turning untrusted input (topic bytes, file rows) into contract records, or a clear reason.

Pure functions, shared by the worker, replay and the HTTP API, so that what is rejected (and
why) does not depend on the path an event took. Unknown extra fields are ignored so producers
can add fields before consumers know them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from rebate_guard.contract.records import (
    BINDING,
    LABEL_VALUES,
    MAX_REBATE_RATE,
    PLATFORM_EVENT_FIELDS,
    POINTS_TRANSFER,
    REFUND,
    TX_KINDS,
    Label,
    PlatformEvent,
    Signup,
    Transaction,
    build,
)

MAX_ID_LENGTH = 200
# 2000-01-01 .. 2100-01-01 in epoch ms: anything outside is a unit mistake (seconds, µs).
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


class InvalidEvent(ValueError):
    """The event breaks the contract; the message is the dead-letter reason."""


def decode_json_object(raw: bytes | str | None) -> dict[str, Any]:
    """A message's value as a JSON object; `InvalidEvent` (the dead-letter reason) if it
    is none, not JSON, or not an object.

    Examples
    --------
    >>> decode_json_object(b'[1, 2]')
    Traceback (most recent call last):
    ...
    rebate_guard.contract.validation.InvalidEvent: expected a JSON object, got list
    """
    if raw is None:
        raise InvalidEvent("empty message (no value)")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(value).__name__}")
    return value


def _required_id(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:  # the common case, fast
        return value
    if value is None:
        raise InvalidEvent(f"missing field {name!r}")
    return _id_value(name, value)


def _optional_id(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or (type(value) is str and 0 < len(value) <= MAX_ID_LENGTH):
        return value
    return _id_value(name, value)


def _id_value(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"field {name!r} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH:
        raise InvalidEvent(f"field {name!r} must have 1..{MAX_ID_LENGTH} characters")
    return text


def parse_ts(value: Any, name: str = "ts") -> int:
    """Epoch ms from epoch ms (int) or an ISO-8601 timestamp with a zone.

    Parameters
    ----------
    value : int, float or str
        The timestamp.
    name : str, default "ts"
        The field it came from, for the message.

    Returns
    -------
    int
        Epoch milliseconds, within 2000..2100.

    Raises
    ------
    InvalidEvent
        Missing, unreadable, without a zone, or outside 2000..2100 (seconds or microseconds
        given for milliseconds).

    Examples
    --------
    >>> parse_ts("2023-11-14T22:13:20Z"), parse_ts(1_700_000_000_000)
    (1700000000000, 1700000000000)
    >>> parse_ts(1_700_000_000)
    Traceback (most recent call last):
    ...
    rebate_guard.contract.validation.InvalidEvent: field 'ts'=1700000000 is not epoch ...
    """
    if value is None:
        raise InvalidEvent(f"missing field {name!r}")
    if isinstance(value, bool):
        raise InvalidEvent(f"field {name!r} must be epoch ms or an ISO-8601 timestamp")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float) and value.is_integer():
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"field {name!r}: unreadable timestamp {value!r}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent(f"field {name!r}: timestamp {value!r} has no time zone")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidEvent(f"field {name!r} must be epoch ms or an ISO-8601 timestamp")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise InvalidEvent(f"field {name!r}={ms} is not epoch milliseconds in 2000..2100")
    return ms


def _cents(data: Mapping[str, Any], name: str, *, positive: bool) -> int:
    """An integer number of minor units (an integral float is accepted), positive or not
    negative; `InvalidEvent` otherwise."""
    value = data.get(name)
    if value is None:
        if not positive:
            return 0
        raise InvalidEvent(f"missing field {name!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"field {name!r} must be an integer number of minor units")
    if value < 0 or (positive and value == 0):
        raise InvalidEvent(
            f"field {name!r} must be {'positive' if positive else '>= 0'}, got {value}"
        )
    return value


def parse_transaction(data: Mapping[str, Any]) -> Transaction:
    """A `Transaction` from untrusted fields (a decoded message, a file row).

    Parameters
    ----------
    data : mapping
        The fields; unknown ones are ignored. `ts` may be epoch ms or ISO-8601 with a zone.

    Returns
    -------
    Transaction

    Raises
    ------
    InvalidEvent
        The first rule the event breaks; the message is its dead-letter reason.

    Examples
    --------
    >>> fields = {"tx_id": "t-1", "ts": "2023-11-14T22:13:20Z", "user_id": "u-1",
    ...           "merchant_id": "m-1", "amount_cents": 10_000, "rebate_rate": 0.05,
    ...           "kind": "payment", "campaign": "spring"}
    >>> parse_transaction(fields).ts
    1700000000000
    >>> parse_transaction({**fields, "kind": "refund"})
    Traceback (most recent call last):
    ...
    rebate_guard.contract.validation.InvalidEvent: a refund needs 'ref_tx_id' (the refunded payment)
    """
    amount = _cents(data, "amount_cents", positive=True)
    rate = data.get("rebate_rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        raise InvalidEvent("field 'rebate_rate' must be a number")
    if not 0.0 <= rate <= MAX_REBATE_RATE:
        raise InvalidEvent(f"field 'rebate_rate'={rate} outside 0..{MAX_REBATE_RATE}")
    kind = data.get("kind")
    if kind not in TX_KINDS:
        raise InvalidEvent(f"field 'kind' must be one of {', '.join(TX_KINDS)}, got {kind!r}")
    ref_tx_id = _optional_id(data, "ref_tx_id")
    if kind == REFUND and ref_tx_id is None:
        raise InvalidEvent("a refund needs 'ref_tx_id' (the refunded payment)")
    return build(
        Transaction,
        tx_id=_required_id(data, "tx_id"),
        ts=parse_ts(data.get("ts")),
        user_id=_required_id(data, "user_id"),
        merchant_id=_required_id(data, "merchant_id"),
        amount_cents=amount,
        rebate_rate=float(rate),
        kind=kind,
        ref_tx_id=ref_tx_id,
        device_id=_optional_id(data, "device_id"),
        ip=_optional_id(data, "ip"),
        card_id=_optional_id(data, "card_id"),
        merchant_category=_optional_id(data, "merchant_category"),
    )


def parse_signup(data: Mapping[str, Any]) -> Signup:
    """A `Signup` from untrusted fields; `InvalidEvent` (the dead-letter reason) if invalid.

    Examples
    --------
    >>> parse_signup({"user_id": 42, "ts": 1_700_000_000_000}).user_id
    '42'
    >>> parse_signup({"user_id": "u-1", "ts": "yesterday"})
    Traceback (most recent call last):
    ...
    rebate_guard.contract.validation.InvalidEvent: field 'ts': unreadable timestamp 'yesterday'
    """
    return build(
        Signup,
        user_id=_required_id(data, "user_id"),
        ts=parse_ts(data.get("ts")),
        referrer_id=_optional_id(data, "referrer_id"),
        device_id=_optional_id(data, "device_id"),
        ip=_optional_id(data, "ip"),
        phone_hash=_optional_id(data, "phone_hash"),
    )


def parse_label(data: Mapping[str, Any]) -> Label:
    """A `Label` from untrusted fields; `InvalidEvent` (the dead-letter reason) if invalid.

    Examples
    --------
    >>> parse_label({"ts": 1_700_000_000_000, "label": "fraud", "user_id": "u-1"}).source
    'unknown'
    >>> parse_label({"ts": 1_700_000_000_000, "label": "fraud"})
    Traceback (most recent call last):
    ...
    rebate_guard.contract.validation.InvalidEvent: a label needs 'tx_id' or 'user_id'
    """
    label = data.get("label")
    if label not in LABEL_VALUES:
        raise InvalidEvent(f"field 'label' must be one of {', '.join(LABEL_VALUES)}, got {label!r}")
    tx_id = _optional_id(data, "tx_id")
    user_id = _optional_id(data, "user_id")
    if tx_id is None and user_id is None:
        raise InvalidEvent("a label needs 'tx_id' or 'user_id'")
    source = data.get("source")
    return build(
        Label,
        ts=parse_ts(data.get("ts")),
        label=label,
        source=_id_value("source", source) if source is not None else "unknown",
        tx_id=tx_id,
        user_id=user_id,
        reviewer=_optional_id(data, "reviewer"),
    )


def parse_platform_event(data: Mapping[str, Any]) -> PlatformEvent:
    """A `PlatformEvent` from untrusted fields; `InvalidEvent` (the dead-letter reason) if
    invalid: an unknown kind, a field its kind requires missing (`PLATFORM_EVENT_FIELDS`), an
    amount that is not a positive integer (0 or absent only for a binding), or a transfer to
    oneself.

    Examples
    --------
    >>> event = {"event_id": "e-1", "ts": 1_700_000_000_000, "kind": "points_redeem",
    ...          "user_id": "u-1", "amount_cents": 300, "merchant_id": "m-2"}
    >>> parse_platform_event(event).amount_cents
    300
    >>> parse_platform_event({**event, "kind": "points_transfer"})
    Traceback (most recent call last):
    ...
    rebate_guard.contract.validation.InvalidEvent: a points_transfer needs 'counterparty_id'
    """
    kind = data.get("kind")
    required = PLATFORM_EVENT_FIELDS.get(kind) if isinstance(kind, str) else None
    if required is None:
        kinds = ", ".join(PLATFORM_EVENT_FIELDS)
        raise InvalidEvent(f"field 'kind' must be one of {kinds}, got {kind!r}")
    for name in required:
        if data.get(name) is None:
            raise InvalidEvent(f"a {kind} needs {name!r}")
    ids = {
        name: (_required_id if name in required else _optional_id)(data, name)
        for name in (
            "user_id",
            "merchant_id",
            "tx_id",
            "coupon_id",
            "counterparty_id",
            "region",
            "device_id",
            "ip",
        )
    }
    if kind == POINTS_TRANSFER and ids["counterparty_id"] == ids["user_id"]:
        raise InvalidEvent("a points_transfer to the same user moves nothing")
    return build(
        PlatformEvent,
        event_id=_required_id(data, "event_id"),
        ts=parse_ts(data.get("ts")),
        kind=kind,
        amount_cents=_cents(data, "amount_cents", positive=kind != BINDING),
        **ids,
    )


R = TypeVar("R")


def parse_bytes(raw: bytes | str | None, parser: Callable[[Mapping[str, Any]], R]) -> R:
    """A record from a message's raw value: JSON decoding, then `parser`.

    Parameters
    ----------
    raw : bytes, str or None
        The message's value.
    parser : callable
        `parse_transaction`, `parse_signup`, `parse_label` or `parse_platform_event`.

    Returns
    -------
    Record
        What `parser` returns.

    Raises
    ------
    InvalidEvent
        Why the message cannot be used: the `DeadLetter` reason the worker records.

    Examples
    --------
    >>> from rebate_guard.contract.records import DeadLetter
    >>> raw = b'{"tx_id": "t-1", "ts": 1700000000000}'
    >>> try:
    ...     parse_bytes(raw, parse_transaction)
    ... except InvalidEvent as err:
    ...     dead = DeadLetter("transactions", 0, 41, str(err), raw.decode(), 1_700_000_000_500)
    >>> dead.reason
    "missing field 'amount_cents'"
    """
    return parser(decode_json_object(raw))
