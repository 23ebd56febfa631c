"""Comparing recorded figures where floating point may move the last digits."""

from __future__ import annotations

from typing import Any

import pytest


def close(got: Any, expected: Any) -> bool:
    """Equal, nested dicts and sequences alike, floats to a relative 1e-12."""
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(close(got[k], v) for k, v in expected.items())
    if isinstance(expected, list | tuple):
        return len(got) == len(expected) and all(map(close, got, expected))
    if isinstance(expected, float) and not isinstance(got, bool):
        return bool(got == pytest.approx(expected, rel=1e-12, abs=1e-15))
    return bool(got == expected)
