"""A `RiskModel` checkpointed before issue #19 made its prior a list of detectors still loads,
and scores and learns exactly as it would have: `fixtures/risk-model-before-list.pickle` is one
pickled by the base commit's code (with the rules, the anomaly detector and the ring's say as
named fields and `anomaly_weight`), and `.json` what that code assessed on 40 probe vectors
before and after learning 200 more transactions (`fixtures/make_risk_model_before_list.py`).
A checkpoint from before the rules' say (issue #21) loads without it, so it too scores as it
did.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from detectors.risk import RiskModel
from streams.shards import load_checkpoint
from tests.approx import close

FIXTURES = Path(__file__).parents[1] / "fixtures"
OLD = FIXTURES / "risk-model-before-list.pickle"


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "risk-model-before-list.json").read_text())
    return loaded


def _seen(model: RiskModel, probes: list[dict[str, Any]]) -> dict[str, Any]:
    """What the fixture's maker recorded, assessed by `model` (floats compared exactly)."""
    assessed = []
    for x in probes:
        a = model.assess(x)
        assessed.append(
            {
                "risk": a.risk,
                "reasons": a.reasons,
                "enriched": list(a.enriched.items()),
                "log_odds": a.log_odds,
                "calibrated_risk": a.calibrated_risk,
            }
        )
    return {"version": model.version, "confidence": model.confidence(), "assessed": assessed}


def _recorded(seen: dict[str, Any]) -> dict[str, Any]:
    """The JSON's record, with each enriched vector as its items (their order counts too)."""
    assessed = [{**a, "enriched": list(a["enriched"].items())} for a in seen["assessed"]]
    return {**seen, "assessed": assessed}


def _learn(model: RiskModel, more: list[tuple[dict[str, Any], bool, bool]]) -> None:
    for x, fraud, labelled in more:
        model.learn_scored(model.assess(x))
        if labelled:
            model.learn_one(x, fraud)


def test_the_fixture_is_the_old_shape() -> None:
    blob = OLD.read_bytes()
    for field in (b"anomaly_weight", b"ring_say", b"rules"):
        assert field in blob


def test_an_old_risk_model_scores_and_learns_as_it_did(expected: dict[str, Any]) -> None:
    model = load_checkpoint(OLD.read_bytes())
    assert type(model) is RiskModel
    assert model.calibrated_signals == []  # no rules' say (issue #21): it scores as it did
    # The fixture was made where every part counts: labels trusted only partly, the prior
    # shift fitted, reasons from the rules, the classifier and the anomaly detector.
    assert 0.0 < expected["before"]["confidence"] < 1.0
    assert model.prior_shift.fits > 0
    reasons = {r.split(":")[0] for a in expected["before"]["assessed"] for r in a["reasons"]}
    assert {"model", "unusual", "device_shared_7d"} <= reasons
    assert _seen(model, expected["probes"]) == _recorded(expected["before"])
    _learn(model, expected["more"])
    # After learning, to the last few ulps: learning's reductions run in numpy, whose
    # summation order (SIMD) moved the last digit of 9 values between the numpy the fixture
    # was made with and numpy 2.4.6, which a fresh install took on 2026-12-06. Loading and
    # scoring, above, stay bit for bit.
    assert close(_seen(model, expected["probes"]), _recorded(expected["after"]))


def test_an_old_risk_model_pickled_again_goes_on_identically(expected: dict[str, Any]) -> None:
    blob = pickle.dumps(load_checkpoint(OLD.read_bytes()), protocol=pickle.HIGHEST_PROTOCOL)
    assert b"anomaly_weight" not in blob and b"signals" in blob  # the new shape
    assert b"_weights_cache" not in blob  # the classifier's old copy of its weights: dropped
    again = pickle.loads(blob)
    assert again.calibrated_signals == []
    assert _seen(again, expected["probes"]) == _recorded(expected["before"])
    _learn(again, expected["more"])
    assert close(_seen(again, expected["probes"]), _recorded(expected["after"]))
