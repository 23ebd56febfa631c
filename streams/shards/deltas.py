"""Incremental checkpoints: between two full pickles of a shard, only what changed.

A shard's large state is a handful of dicts (its *stores*): the feature families' per-key
state, and logs of tx_ids (the decider's remembered vectors and refund lookback, the user
shard's seen tx_ids, the merchants' labelled payments). Between two checkpoints (30 s) few
of their keys change. A *delta* is the shard pickled with those dicts left empty (the
*skeleton*: everything else, small) plus, per store, what changed since the checkpoint
before it:

- the keys gone (those the previous checkpoint held, and the dict no longer does);
- the keys changed where they stand (marked by the stage, `features.changes`, but not moved);
- the *tail*: the longest run at the end of the dict of keys new or marked. Feature stores
  keep their keys in last-activity order (`features.windows.touch` moves a key it updates
  to the end), logs only append, so every key moved or added since sits in that run.

Restoring applies the three in that order to the previous checkpoint's dict and puts it
into the last delta's skeleton (`Restore`): the same keys, values and order as the dict
written, so base + deltas in order give the shard a full pickle would
(tests/unit/test_deltas.py).

A log's values never change once written (a tx_id's vector, its decision time); a feature
store's change only under a key its stage marks (a read expires windows in place, so reads
mark too). A store not reached on a shard (a test's stand-in decider) stays in the skeleton.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from features.changes import ChangedKeys

#: The first item of a delta's pickled tuple, so a delta is never taken for a shard.
DELTA = "rebate-guard delta checkpoint 1"


@dataclass(frozen=True)
class Store:
    """A dict of a shard written by its changes: where it is (attribute names from the
    shard) and which key space of `ChangedKeys` marks its in-place changes (None: a log,
    whose values never change)."""

    path: tuple[str, ...]
    marks: str | None = None


USER_STORES = {
    "profiles": Store(("users", "user", "profiles"), "users"),
    "activity": Store(("users", "user", "activity"), "users"),
    "seen": Store(("seen",)),
    "granted": Store(("decider", "granted")),
    "remembered": Store(("decider", "remembered", "kept")),
}
ENTITY_STORES = {
    "merchants": Store(("entities", "merchant", "state"), "merchants"),
    "payment_merchant": Store(("entities", "merchant", "payment_merchant")),
    "devices": Store(("entities", "device", "state"), "devices"),
    "ips": Store(("entities", "ip", "state"), "ips"),
    "cards": Store(("entities", "card", "state"), "cards"),
    "referrers": Store(("entities", "referral", "state"), "referrers"),
}
#: Every store by its name (the names are distinct across shard kinds).
STORES = {**USER_STORES, **ENTITY_STORES}


def _holder(shard: Any, path: tuple[str, ...]) -> Any:
    for name in path[:-1]:
        shard = getattr(shard, name, None)
    return shard


def _reach(shard: Any, path: tuple[str, ...]) -> dict[Any, Any] | None:
    found = getattr(_holder(shard, path), path[-1], None)
    return found if isinstance(found, dict) else None


def stores_of(shard: Any, stores: Mapping[str, Store]) -> dict[str, dict[Any, Any]]:
    """The stores this shard has, by name."""
    out = {}
    for name, store in stores.items():
        found = _reach(shard, store.path)
        if found is not None:
            out[name] = found
    return out


@dataclass
class Plan:
    """One checkpoint of one shard, fixed when it is taken (under the worker's lock):
    its generation, the one it extends (None: a full checkpoint), the marks taken for it,
    the keys each store holds now and held at the checkpoint it extends."""

    generation: str
    extends: str | None
    marks: dict[str, set[str]]
    keys: dict[str, set[Any]]
    known: dict[str, set[Any]] = field(default_factory=dict)


class DeltaChain:
    """What a shard's next checkpoint needs to be a delta: the keys each store held at the
    last checkpoint written, the marks since, and that checkpoint's generation (the *tip*
    a delta extends). Lives with the worker, never in a checkpoint: a shard installed or
    restored starts with a full checkpoint. `full_every`: every how many checkpoints one
    is full (1: all of them), so a restore reads at most that many pieces."""

    def __init__(
        self, stores: Mapping[str, Store], changes: ChangedKeys | None, *, full_every: int
    ) -> None:
        self.stores = stores
        self.changes = changes
        self.full_every = full_every
        self.known: dict[str, set[Any]] | None = None
        self.tip: str | None = None
        #: Deltas written since the last full checkpoint.
        self.deltas = 0

    def plan(self, shard: Any) -> Plan:
        marks = self.changes.take() if self.changes is not None else {}
        delta = self.known is not None and self.deltas + 1 < self.full_every
        keys = {name: set(held) for name, held in stores_of(shard, self.stores).items()}
        return Plan(
            uuid.uuid4().hex,
            self.tip if delta else None,
            marks,
            keys,
            (self.known or {}) if delta else {},
        )

    def written(self, plan: Plan) -> None:
        self.known, self.tip = plan.keys, plan.generation
        self.deltas = 0 if plan.extends is None else self.deltas + 1

    def failed(self) -> None:
        """The checkpoint was not written, or only in part (a forked writer died after
        some of its shards): the next one is full, whatever the store holds now."""
        self.known = self.tip = None


def _changes(held: dict[Any, Any], known: set[Any], marked: set[Any]) -> tuple[Any, ...]:
    """(gone, changed in place, tail) of one store (see the module's doc)."""
    tail = []
    for key in reversed(held):
        if key in known and key not in marked:
            break
        tail.append(key)
    tail.reverse()
    in_tail = set(tail)
    in_place = [(k, held[k]) for k in marked if k in held and k not in in_tail]
    gone = list(known.difference(held))
    return gone, in_place, [(k, held[k]) for k in tail]


@contextmanager
def _emptied(shard: Any, stores: Mapping[str, Store]) -> Iterator[None]:
    """The shard with its stores replaced by empty dicts of their types (restored after)."""
    saved = []
    for store in stores.values():
        holder, name = _holder(shard, store.path), store.path[-1]
        held = getattr(holder, name, None)
        if isinstance(held, dict):
            saved.append((holder, name, held))
            setattr(holder, name, type(held)())
    try:
        yield
    finally:
        for holder, name, held in saved:
            setattr(holder, name, held)


def delta_blob(shard: Any, stores: Mapping[str, Store], plan: Plan) -> bytes:
    """The delta of `shard` against the checkpoint `plan` extends. Its skeleton is a pickle
    of its own inside it: a restore unpickles only the last delta's (`Restore`)."""
    changes = {}
    for name, held in stores_of(shard, stores).items():
        if name not in plan.known:  # a store the previous checkpoint did not reach
            return pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL)
        marked = plan.marks.get(stores[name].marks or "", set())
        changes[name] = _changes(held, plan.known[name], marked)
    with _emptied(shard, stores):
        skeleton = pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((DELTA, skeleton, changes), protocol=pickle.HIGHEST_PROTOCOL)


def is_delta(state: Any) -> bool:
    return isinstance(state, tuple) and len(state) == 3 and state[0] == DELTA


class Restore:
    """A shard restored from a chain: the full checkpoint's stores, each delta's changes
    applied to them in order, in the skeleton of the last delta (`load` unpickles it)."""

    def __init__(self, load: Callable[[bytes], Any]) -> None:
        self.load = load
        self.state: Any = None
        self.skeleton: bytes | None = None
        self.grafted: list[str] = []

    def take(self, loaded: Any) -> None:
        """The next piece of the chain, unpickled."""
        if not is_delta(loaded):
            self.state, self.skeleton = loaded, None
            return
        _, self.skeleton, changes = loaded
        self.grafted = list(changes)
        for name, (gone, in_place, tail) in changes.items():
            held = _reach(self.state, STORES[name].path)
            if held is None:
                raise ValueError(f"a delta of {name!r} extends a checkpoint without that store")
            for key in gone:
                del held[key]
            for key, value in in_place:
                held[key] = value
            for key, value in tail:
                held.pop(key, None)
                held[key] = value

    def shard(self) -> Any:
        if self.skeleton is None:
            return self.state
        shard = self.load(self.skeleton)
        for name in self.grafted:
            path = STORES[name].path
            setattr(_holder(shard, path), path[-1], _reach(self.state, path))
        return shard
