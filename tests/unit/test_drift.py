"""Drift is reported when the score distribution or the error rate really moves, and not
on a stationary stream."""

from __future__ import annotations

import random

from detectors.drift import DriftWatch


def test_a_shift_in_scores_is_detected_and_dated() -> None:
    rng = random.Random(1)
    watch = DriftWatch()
    for i in range(3_000):
        watch.scored(min(1.0, max(0.0, rng.gauss(0.1, 0.05))), ts=i)
    assert watch.score_drifts == 0
    for i in range(3_000, 4_000):
        watch.scored(min(1.0, max(0.0, rng.gauss(0.5, 0.05))), ts=i)
    assert watch.score_drifts >= 1 and 3_000 <= watch.last_score_drift_ts < 3_200
    assert watch.summary()["mean_risk"] > 0.3


def test_a_model_that_starts_being_wrong_raises_an_error_drift() -> None:
    rng = random.Random(2)
    watch = DriftWatch()
    for i in range(2_000):  # right most of the time: fraud scored high, legit low
        fraud = rng.random() < 0.3
        watch.labelled(0.9 if fraud else 0.05, fraud, ts=i)
    assert watch.error_drifts == 0
    for i in range(2_000, 3_000):  # a new scheme the model scores as legit
        fraud = rng.random() < 0.3
        watch.labelled(0.05, fraud, ts=i)
    assert watch.error_drifts >= 1 and watch.last_error_drift_ts >= 2_000
