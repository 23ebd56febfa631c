"""The numeric view of a feature vector that every learning detector uses.

Missing values (None, NaN) become an indicator feature `<name>_missing` = 1 rather than a made-up
number: "no device on the payment" is information, and zero would be a lie. Keys come out
sorted, so a detector's arithmetic runs in the same order whatever order the caller's dict
has: scores are then bitwise identical, not just close (the contract suite checks it). A new
copy is returned; the caller's vector is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from math import copysign, log1p
from operator import itemgetter

from detectors.base import Features


def signed_log(value: float) -> float:
    """sign(v) log(1 + |v|): the scale the learning detectors see a feature on. Money, counts
    and ages are heavy-tailed; on their raw scale a model fitted on typical payments
    extrapolates linearly to a legitimate 50x purchase (a logit of hundreds), while on this
    scale a purchase 50x the usual moves a standardised feature a few units. Monotone, so
    no order is lost; near 0 (rates, shares) it is almost the identity."""
    return math.copysign(math.log1p(abs(value)), value)


def signed_logs(values: Iterable[float | None]) -> list[float | None]:
    """`signed_log` of each value, None where it is missing (None or NaN): the scale the
    learning detectors read a whole vector on, in one pass (`signed_log`'s arithmetic
    inlined, so the same numbers bit for bit, at a third of the calls).

    Examples
    --------
    >>> [None if v is None else round(v, 3) for v in signed_logs([9.0, None, -1.0, float("nan")])]
    [2.303, None, -0.693, None]
    """
    return [
        None if value is None or value != value else copysign(log1p(abs(value)), value)
        for value in values
    ]


class Layout:
    """A key set in sorted order: its names, each one's missing indicator, and what reads a
    vector's values in that order. Vectors come with the same few key sets over and over
    (`layout` sorts each once), and a model that changes with every label reads them in the
    same order each time. Compared and hashed by identity: a model keeps what it worked out
    for a layout in a dict keyed by it, cheaply."""

    __slots__ = ("clashes", "missing", "names", "read")

    def __init__(self, keys: tuple[str, ...]) -> None:
        names = self.names = tuple(sorted(keys))
        self.missing = tuple(f"{name}_missing" for name in names)
        #: A missing indicator's name is also a key (then `encode` keeps one value for both).
        self.clashes = not set(names).isdisjoint(self.missing)
        self.read: Callable[[Features], tuple[float | None, ...]]
        if len(names) > 1:
            self.read = itemgetter(*names)
        elif names:
            self.read = lambda x: (x[names[0]],)
        else:
            self.read = lambda x: ()

    def encoded(self, values: Iterable[float | None]) -> dict[str, float]:
        """`encode`'s dict from the values in this order (None: missing)."""
        out: dict[str, float] = {}
        for name, missing, value in zip(self.names, self.missing, values, strict=True):
            if value is None:
                out[missing] = 1.0
            else:
                out[name] = value
        return out


_LAYOUTS: dict[tuple[str, ...], Layout] = {}
_LAYOUT_LIMIT = 1_024


def layout(x: Features) -> Layout:
    """The `Layout` of `x`'s key set (made once per key set, up to a thousand of them)."""
    keys = tuple(x)
    found = _LAYOUTS.get(keys)
    if found is None:
        if len(_LAYOUTS) >= _LAYOUT_LIMIT:
            _LAYOUTS.clear()
        found = _LAYOUTS[keys] = Layout(keys)
    return found


def encode(x: Features, *, scale: bool = False) -> dict[str, float]:
    """The numeric view of `x` (module docstring).

    Parameters
    ----------
    x : dict
        Feature name -> value (None or NaN: missing); not changed.
    scale : bool
        Values on the `signed_log` scale (missing indicators stay 1).

    Returns
    -------
    dict
        A new dict, keys sorted; `<name>_missing` = 1 in place of each missing value.

    Examples
    --------
    >>> encode({"device_user_count_7d": None, "amount_cents": 1_200})
    {'amount_cents': 1200.0, 'device_user_count_7d_missing': 1.0}
    >>> scaled = encode({"amount_cents": 1_200, "refunds": float("nan")}, scale=True)
    >>> {name: round(value, 3) for name, value in scaled.items()}
    {'amount_cents': 7.091, 'refunds_missing': 1.0}
    """
    found = layout(x)
    values = found.read(x)
    if scale:
        return found.encoded(signed_logs(values))
    return found.encoded(None if v is None or v != v else float(v) for v in values)
