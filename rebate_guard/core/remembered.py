"""The feature vectors a decider keeps so that a delayed label trains on what was scored.

A label arrives days after its transaction and must teach the classifier the vector the
transaction was scored with (`detectors.risk`). Up to `MAX_REMEMBERED_FEATURES` of them
are kept; as dicts that was ~5 KB each (~1 GB at the cap: a dict of ~70 keys and a float
object per value). Here each is packed: its values in an `array('d')` (8 bytes each), their
types in a `bytes` (one code each: float, int, None or bool), and its keys as a tuple shared
by every vector with the same keys in the same order (all of them, in practice). `get`
rebuilds the very dict that was kept: the same keys in the same order, the same values of
the same types (an int stays an int, None stays None, a float keeps its bits, NaN too), so
learning from it is exactly learning from the original. A vector that cannot be packed so
(a value of another type, an int past 2**53) is kept as its dict.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple, cast

from detectors.base import Features

#: A value's type, one byte per value in a packed vector.
_FLOAT, _INT, _NONE, _BOOL = b"f"[0], b"i"[0], b"n"[0], b"b"[0]
_CODES: dict[type, int] = {float: _FLOAT, int: _INT, type(None): _NONE, bool: _BOOL}
#: Ints past this do not survive the trip through a float.
_EXACT_INT = 2**53


class Remembered(NamedTuple):
    """A remembered transaction: its user, the vector it was scored with, its risk."""

    user_id: str
    x: Features
    risk: float


class Packed(NamedTuple):
    """A vector's keys (shared), values and their types (`_CODES`)."""

    keys: tuple[str, ...]
    values: array[float]
    codes: bytes


def pack(x: Features, keys: tuple[str, ...]) -> Packed | Features:
    """`x` packed, with `keys` (a tuple equal to x's keys, shared) as its keys; `x` itself
    if a value is of a type that is not packed, or an int a float cannot hold exactly."""
    values = tuple(x.values())
    try:
        codes = bytes(map(_CODES.__getitem__, map(type, values)))
    except KeyError:
        return x
    if _INT in codes and any(type(v) is int and abs(v) > _EXACT_INT for v in values):
        return x
    if _NONE in codes:
        floats: Iterable[float] = (0.0 if v is None else v for v in values)
    else:
        floats = cast(tuple[float, ...], values)
    return Packed(keys, array("d", floats), codes)


def unpack(packed: Packed | Features) -> Features:
    """The dict `pack` was given: same keys, order, values and types."""
    if not isinstance(packed, Packed):
        return dict(packed)
    floats = packed.values.tolist()
    if packed.codes.count(_FLOAT) == len(floats):
        return dict(zip(packed.keys, floats, strict=True))
    values = [_decode(code, v) for code, v in zip(packed.codes, floats, strict=True)]
    return dict(zip(packed.keys, values, strict=True))


def _decode(code: int, value: float) -> float | int | bool | None:
    if code == _FLOAT:
        return value
    if code == _NONE:
        return None
    return int(value) if code == _INT else bool(value)


class RememberedVectors:
    """tx_id -> (user, the packed vector it was scored with, its risk), oldest first, with
    each user's remembered tx_ids (a user-level label applies to all of them). Bounded by
    the count the caller gives `add`: the oldest are forgotten first."""

    def __init__(self) -> None:
        self.kept: OrderedDict[str, tuple[str, Packed | Features, float]] = OrderedDict()
        #: user -> their remembered tx_ids, oldest first.
        self.by_user: dict[str, deque[str]] = {}
        #: The keys of the last vector packed, shared by the next ones with the same keys.
        self.keys: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        remembered: Mapping[str, tuple[str, Features, float]],
        by_user: Mapping[str, deque[str]],
    ) -> RememberedVectors:
        """The store holding what a `Decider` kept as plain dicts (checkpoints from before
        this store): the same transactions in the same order."""
        store = cls()
        for tx_id, (user_id, x, risk) in remembered.items():
            store.kept[tx_id] = (user_id, store._pack(x), risk)
        store.by_user = {user: deque(tx_ids) for user, tx_ids in by_user.items()}
        return store

    def __len__(self) -> int:
        return len(self.kept)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self.kept

    def __iter__(self) -> Iterator[str]:
        return iter(self.kept)

    def __getitem__(self, tx_id: str) -> Remembered:
        user_id, packed, risk = self.kept[tx_id]
        return Remembered(user_id, unpack(packed), risk)

    def get(self, tx_id: str) -> Remembered | None:
        return self[tx_id] if tx_id in self.kept else None

    def user_of(self, tx_id: str) -> str | None:
        kept = self.kept.get(tx_id)
        return None if kept is None else kept[0]

    def of_user(self, user_id: str) -> tuple[str, ...]:
        """The user's remembered tx_ids, oldest first."""
        return tuple(self.by_user.get(user_id, ()))

    def add(self, tx_id: str, x: Features, *, user_id: str, risk: float, limit: int) -> None:
        """Remembers the vector `tx_id` (of `user_id`) was scored with (`x`, copied packed;
        not changed) and its risk, forgetting the oldest past `limit` transactions."""
        kept = self.kept
        kept[tx_id] = (user_id, self._pack(x), risk)
        mine = self.by_user.get(user_id)
        if mine is None:
            mine = self.by_user[user_id] = deque()
        mine.append(tx_id)
        if len(kept) > limit:
            _, (user, _, _) = kept.popitem(last=False)
            theirs = self.by_user[user]
            theirs.popleft()  # the oldest remembered is the oldest of its user's too
            if not theirs:
                del self.by_user[user]

    def _pack(self, x: Features) -> Packed | Features:
        keys = tuple(x)
        if keys != self.keys:
            self.keys = keys
        return pack(x, self.keys)
