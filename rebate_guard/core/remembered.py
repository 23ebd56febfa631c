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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

from detectors.base import Features

#: A value's type, one byte per value in a packed vector.
_FLOAT, _INT, _NONE, _BOOL = b"f"[0], b"i"[0], b"n"[0], b"b"[0]
_CODES: dict[type, int] = {float: _FLOAT, int: _INT, type(None): _NONE, bool: _BOOL}
#: Ints past this do not survive the trip through a float.
_EXACT_INT = 2**53
#: Patterns of value types whose layout is kept (vectors of others are packed all the same,
#: only a little slower).
MAX_LAYOUTS = 1024


class Remembered(NamedTuple):
    """A remembered transaction: its user, the vector it was scored with, its risk."""

    user_id: str
    x: Features
    risk: float


class Packed(NamedTuple):
    """A vector's keys and its values' types (`_CODES`), both shared, and its values."""

    keys: tuple[str, ...]
    values: array[float]
    codes: bytes


class Layout(NamedTuple):
    """What packing needs of a pattern of value types: their codes, and where the Nones
    (stored as 0.0) and the ints (to check they fit) are."""

    codes: bytes
    nones: tuple[int, ...]
    ints: tuple[int, ...]


class Packer:
    """Packs vectors, sharing their keys and type codes among those that have the same: a
    vector's types are looked up as one tuple, not examined value by value."""

    def __init__(self) -> None:
        #: The keys of the last vector packed, shared by the next ones with the same keys.
        self.keys: tuple[str, ...] = ()
        #: Patterns of value types -> their layout (None: a type that is not packed).
        self.layouts: dict[tuple[type, ...], Layout | None] = {}

    def pack(self, x: Features) -> Packed | Features:
        """`x` packed; `x` itself if a value is of a type that is not packed (`_CODES`),
        or an int a float cannot hold exactly."""
        keys = tuple(x)
        if keys != self.keys:
            self.keys = keys
        values = tuple(x.values())
        types = tuple(map(type, values))
        layout = self.layouts.get(types)
        if layout is None:
            layout = self._layout(types)
            if layout is None:
                return x
        numbers = cast(Sequence[float], values)  # the ints', read by C (no Nones there)
        if layout.ints and max(map(abs, map(numbers.__getitem__, layout.ints))) > _EXACT_INT:
            return x
        if layout.nones:
            floats = list(values)
            for i in layout.nones:
                floats[i] = 0.0
            numbers = cast(list[float], floats)  # the Nones are zeros now
        return Packed(self.keys, array("d", numbers), layout.codes)

    def _layout(self, types: tuple[type, ...]) -> Layout | None:
        if types in self.layouts:
            return None  # known not to pack
        codes = [_CODES.get(t) for t in types]
        layout = None
        if None not in codes:
            packed = bytes(cast(list[int], codes))
            nones = tuple(i for i, code in enumerate(packed) if code == _NONE)
            ints = tuple(i for i, code in enumerate(packed) if code == _INT)
            layout = Layout(packed, nones, ints)
        if len(self.layouts) < MAX_LAYOUTS:
            self.layouts[types] = layout
        return layout


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
        self.packer = Packer()

    def __getstate__(self) -> dict[str, Any]:
        """What a checkpoint holds: the vectors, not the packer's cache of layouts."""
        return {"kept": self.kept, "by_user": self.by_user}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.kept, self.by_user = state["kept"], state["by_user"]
        self.packer = Packer()

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
            store.kept[tx_id] = (user_id, store.packer.pack(x), risk)
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
        kept[tx_id] = (user_id, self.packer.pack(x), risk)
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
