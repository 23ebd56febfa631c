"""Loading a shard's checkpoint, also one an earlier release wrote with classes since moved.

A checkpoint is the shard pickled (`UserShard.snapshot`, `Inbox.snapshot`): it names each
class by the module it lived in then. `load_checkpoint` finds each where it lives now.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

#: Where the classes that checkpoints pickle lived before issue #19 moved them: the records
#: were Faust records in `streams.records`, the decision core sat at the top of `rebate_guard`.
MOVED_MODULES = {
    "streams.records": "rebate_guard.contract.records",
    "rebate_guard.scoring": "rebate_guard.core.decider",
    "rebate_guard.policy": "rebate_guard.core.policy",
    "rebate_guard.budget": "rebate_guard.core.budget",
    "rebate_guard.ledger": "rebate_guard.core.ledger",
}

#: The classes of the single module `streams/shards.py`, before issue #19 made it a package:
#: (module, name) then -> now.
MOVED_CLASSES = {
    ("streams.shards", "Entry"): ("streams.shards.completion", "Entry"),
    ("streams.shards", "Completed"): ("streams.shards.completion", "Completed"),
    ("streams.shards", "UserShard"): ("streams.shards.user", "UserShard"),
    ("streams.shards", "Inbox"): ("streams.shards.inbox", "Inbox"),
    ("streams.shards", "EntityShard"): ("streams.shards.inbox", "EntityShard"),
    ("streams.shards", "GraphShard"): ("streams.shards.inbox", "GraphShard"),
}


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = MOVED_CLASSES.get((module, name), (module, name))
        return super().find_class(MOVED_MODULES.get(module, module), name)


def load_checkpoint(blob: bytes) -> Any:
    """A shard's checkpoint (`snapshot`), also one written by an earlier release."""
    return _CheckpointUnpickler(io.BytesIO(blob)).load()
