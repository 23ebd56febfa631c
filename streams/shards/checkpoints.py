"""Loading a shard's checkpoint, also one an earlier release wrote with classes since moved.

A checkpoint is the shard pickled (`UserShard.snapshot`, `Inbox.snapshot`), or a *chain*:
such a pickle followed by the deltas written since (`streams.shards.deltas`), as the store
reads them back (`chain_blob`). Each pickle names each class by the module it lived in then;
`load_checkpoint` finds each where it lives now.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

from streams.shards.deltas import Restore
from streams.shards.peers import PeerExchange
from streams.shards.solvency import MovementFeed
from streams.shards.wire import TOPIC_CODES

#: Where the classes that checkpoints pickle lived before issue #19 moved them: the records
#: were Faust records in `streams.records`, the decision core sat at the top of `rebate_guard`.
MOVED_MODULES = {
    "streams.records": "rebate_guard.contract.records",
    "rebate_guard.scoring": "rebate_guard.core.decider",
    "rebate_guard.policy": "rebate_guard.core.policy",
    "rebate_guard.budget": "rebate_guard.core.budget",
    "rebate_guard.ledger": "rebate_guard.core.ledger",
}

#: The classes of the single module `streams/shards.py`, before issue #19 made it a package:
#: (module, name) then -> now.
MOVED_CLASSES = {
    ("streams.shards", "Entry"): ("streams.shards.completion", "Entry"),
    ("streams.shards", "Completed"): ("streams.shards.completion", "Completed"),
    ("streams.shards", "UserShard"): ("streams.shards.user", "UserShard"),
    ("streams.shards", "Inbox"): ("streams.shards.inbox", "Inbox"),
    ("streams.shards", "EntityShard"): ("streams.shards.inbox", "EntityShard"),
    ("streams.shards", "GraphShard"): ("streams.shards.inbox", "GraphShard"),
}

#: How a chain of pieces starts (a pickle starts with its protocol's opcode, never this).
CHAIN = b"rebate-guard checkpoint chain\n"
_LENGTH = struct.Struct(">Q")


def chain_blob(pieces: list[bytes]) -> bytes:
    """One blob for a full checkpoint and its deltas, in order; just the full one's bytes
    when there are none (what a release before deltas wrote and reads)."""
    if len(pieces) == 1:
        return pieces[0]
    return CHAIN + b"".join(_LENGTH.pack(len(piece)) + piece for piece in pieces)


def chain_pieces(blob: bytes) -> list[bytes]:
    if not blob.startswith(CHAIN):
        return [blob]
    view, at, pieces = memoryview(blob), len(CHAIN), []
    while at < len(blob):
        (length,) = _LENGTH.unpack_from(view, at)
        at += _LENGTH.size
        pieces.append(bytes(view[at : at + length]))
        at += length
    return pieces


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = MOVED_CLASSES.get((module, name), (module, name))
        return super().find_class(MOVED_MODULES.get(module, module), name)


def _load(piece: bytes) -> Any:
    return _CheckpointUnpickler(io.BytesIO(piece)).load()


def upgraded_user_state(state: dict[str, Any]) -> dict[str, Any]:
    """A user shard's pickled state as this release keeps it. Before issue #19 the exchange
    with peers was four fields of the shard; before issue #21 it read no platform events
    (its aligner gains that source, which holds event time until it delivers or falls
    idle, as a new shard's do) and fed no books."""
    state = dict(state)
    if "peers" not in state:
        state["peers"] = PeerExchange(
            state["partition"],
            state["n_user"],
            outbox=state.pop("peer_outbox"),
            held=state.pop("held"),
            seen=state.pop("peer_seen"),
            arrivals=state.pop("peer_arrivals"),
        )
    if "books" not in state:
        codes = frozenset(TOPIC_CODES.values())
        state["aligner"].sources = codes
        state["durable_floor"] = [*state["durable_floor"], *[0] * len(codes)][: len(codes)]
        state["seen_events"] = {}
        state["books"] = MovementFeed()
    return state


def load_checkpoint(blob: bytes) -> Any:
    """A shard's checkpoint (`snapshot`, or a chain of one and its deltas), also one
    written by an earlier release."""
    restore = Restore(_load)
    for piece in chain_pieces(blob):
        restore.take(_load(piece))
    return restore.shard()
