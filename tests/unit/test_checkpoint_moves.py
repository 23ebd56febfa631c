"""Checkpoints written before issue #19 moved the decision core into `rebate_guard.core` still
load: `fixtures/decider-before-core.pickle` is a user shard's `Decider` pickled by the base
commit's classes (`rebate_guard.scoring`, `.policy`, `.budget`, `.ledger`) after deciding the
first ten payments of a simulated world (seed 3) with the default settings.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from rebate_guard.core.budget import FrictionBudget, Mark
from rebate_guard.core.decider import Decider
from rebate_guard.core.ledger import Entry, Ledger
from rebate_guard.core.policy import LedgerTerms, Policy
from streams.shards import MOVED_MODULES, load_checkpoint

OLD = Path(__file__).parents[1] / "fixtures" / "decider-before-core.pickle"


def test_the_fixture_names_the_old_modules() -> None:
    blob = OLD.read_bytes()
    for module in ("scoring", "policy", "budget", "ledger"):
        assert f"rebate_guard.{module}".encode() in blob
        assert f"rebate_guard.{module}" in MOVED_MODULES


def test_a_decider_checkpointed_before_the_move_still_loads() -> None:
    decider = load_checkpoint(OLD.read_bytes())
    assert type(decider) is Decider and type(decider).__module__ == "rebate_guard.core.decider"
    assert isinstance(decider.policy, Policy) and decider.policy.version == "default-3"
    assert isinstance(decider.policy.ledger, LedgerTerms)
    assert isinstance(decider.budget, FrictionBudget) and isinstance(decider.ledger, Ledger)
    assert list(decider.ledger.entries) == [f"t{i}" for i in range(10)]
    entry = decider.ledger.entries["t2"]
    assert isinstance(entry, Entry)
    assert entry.__getstate__() == (
        0,
        137,
        1767507550202,
        "default-3",
        137,
        1767248350202,
        "u9231",
        0,
    )
    assert decider.budget.recorded["t2"] == Mark(
        epoch=1767247200000,
        category="restaurant",
        bin=523,
        cents=137,
        withheld=137,
        legit=137_000_000,
    )
    assert list(decider.remembered) == [f"t{i}" for i in range(10)]
    # Pickled again, it names the new homes only.
    again = pickle.dumps(decider, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"rebate_guard.core.decider" in again and b"rebate_guard.scoring" not in again
    assert pickle.loads(again).ledger.entries.keys() == decider.ledger.entries.keys()
