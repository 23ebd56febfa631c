"""The numeric view of a feature vector that every learning detector uses.

Missing values (None, NaN) become an indicator feature `<name>_missing` = 1 rather than a made-up
number: "no device on the payment" is information, and zero would be a lie. Keys come out
sorted, so a detector's arithmetic runs in the same order whatever order the caller's dict
has: scores are then bitwise identical, not just close (the contract suite checks it). A new
copy is returned; the caller's vector is never touched.
"""

from __future__ import annotations

import math

from detectors.base import Features


def encode(x: Features) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in sorted(x):
        value = x[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[f"{name}_missing"] = 1.0
        else:
            out[name] = float(value)
    return out
