"""No leakage: a transaction is scored before any label that arrives after its ts is learned.

Prequential by construction (the scorer sees events in event-time order and scores each
transaction before learning anything newer), and checked here as an observable: removing every
label that arrives after a cut-off changes no decision made before the cut-off, while the
labels before it do change later scores (so the model really learns from them).
"""

from __future__ import annotations

import pytest

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Label, Transaction
from rebate_guard.core.decider import Scorer
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    config = WorldConfig(seed=8, n_users=500, n_merchants=40, days=24, target_transactions=6_000)
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("world"))
    return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


def _decide(events: list[Event]) -> dict[str, tuple[float, str]]:
    scorer = Scorer()
    out = {}
    for event in events:
        decision = scorer.apply(event, decided_at=0)
        if decision is not None:
            out[decision.tx_id] = (decision.risk, decision.model_version)
    return out


def test_labels_after_a_transaction_never_change_its_decision(events: list[Event]) -> None:
    labels = [e for e in events if isinstance(e, Label)]
    cut = sorted(e.ts for e in labels)[len(labels) // 2]  # half the labels are "future"
    before_cut = {e.tx_id for e in events if isinstance(e, Transaction) and e.ts <= cut}
    everything = _decide(events)
    no_future = _decide([e for e in events if not (isinstance(e, Label) and e.ts > cut)])
    assert {t: everything[t] for t in before_cut} == {t: no_future[t] for t in before_cut}
    # ...and the labels before the cut did teach the model something.
    no_labels = _decide([e for e in events if not isinstance(e, Label)])
    assert any(no_labels[t] != everything[t] for t in before_cut)
    assert len(before_cut) > 1_000


def test_models_checkpointed_mid_stream_resume_identically(events: list[Event]) -> None:
    """The models travel in the scorer's pickle (the worker's checkpoints): a scorer restored
    halfway makes exactly the decisions of one that never stopped, labels included."""
    import pickle

    half = len(events) // 2
    scorer = Scorer()
    for event in events[:half]:
        scorer.apply(event, decided_at=0)
    assert scorer.decider.model.classifier.n_learned > 0  # labels were learned before the cut
    clone = pickle.loads(pickle.dumps(scorer))
    for event in events[half:]:
        assert clone.apply(event, decided_at=0) == scorer.apply(event, decided_at=0)
