"""What the worker's batches are made of and what it counts: a raw message off the broker,
one batch's outcome, and the process's running totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class RawEvent(NamedTuple):
    """A message as it came off the broker (value still bytes). A tuple: one is made per
    message, and a frozen dataclass costs several times as much to build."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchOutcome:
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    skipped: int = 0  # offsets the state already covered


@dataclass
class Counters:
    """Process-local totals (Redis holds the cluster-wide, exactly-once ones)."""

    batches: int = 0
    events: int = 0
    decided: int = 0
    redelivered: int = 0
    dead_letters: int = 0
    retries: int = 0
    checkpoints: int = 0
    envelopes_sent: int = 0
    envelopes_received: int = 0
    stray: int = 0
    #: `POST /score` answers that were provisional (fail closed: nothing granted).
    fail_closed: int = 0
    #: ... of which answered at once because `RG_SCORE_MAX_IN_FLIGHT` requests were in
    #: flight (their transactions produced all the same).
    overload: int = 0
    #: `POST /score` transactions decided at payment time, and those left to the stream
    #: (by why: partitions not here, already in the stream, event time past them, a payment
    #: before them on a shared key not placeable in time, or a failure).
    decided_at_payment: int = 0
    left_to_stream: dict[str, int] = field(default_factory=dict)
