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


def signed_log(value: float) -> float:
    """sign(v) log(1 + |v|): the scale the learning detectors see a feature on. Money, counts
    and ages are heavy-tailed; on their raw scale a model fitted on typical payments
    extrapolates linearly to a legitimate 50x purchase (a logit of hundreds), while on this
    scale a purchase 50x the usual moves a standardised feature a few units. Monotone, so
    no order is lost; near 0 (rates, shares) it is almost the identity."""
    return math.copysign(math.log1p(abs(value)), value)


# Vectors come with the same few key sets over and over: sort each set once.
_ORDER: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_ORDER_LIMIT = 1_024


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
            out[name] = signed_log(value) if scale else float(value)
    return out
