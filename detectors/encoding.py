"""The numeric view of a feature vector that every learning detector uses.

Missing values (None, NaN) become an indicator feature `<name>_missing` = 1 rather than a made-up
number: "no device on the payment" is information, and zero would be a lie. Keys come out
sorted, so a detector's arithmetic runs in the same order whatever order the caller's dict
has: scores are then bitwise identical, not just close (the contract suite checks it). A new
copy is returned; the caller's vector is never touched.
"""

from __future__ import annotations

from detectors.base import Features

# Vectors come with the same few key sets over and over: sort each set once.
_ORDER: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_ORDER_LIMIT = 1_024


def encode(x: Features) -> dict[str, float]:
    keys = tuple(x)
    order = _ORDER.get(keys)
    if order is None:
        if len(_ORDER) >= _ORDER_LIMIT:
            _ORDER.clear()
        order = _ORDER[keys] = tuple((name, f"{name}_missing") for name in sorted(keys))
    out: dict[str, float] = {}
    for name, missing in order:
        value = x[name]
        if value is None or value != value:  # NaN is the one value unequal to itself
            out[missing] = 1.0
        else:
            out[name] = float(value)
    return out
