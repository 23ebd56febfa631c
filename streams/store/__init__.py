"""The serving state: decisions, counters, the ledger, checkpoints, the referral tree, the
graph's rings and the live policy.

`protocol` (`DecisionStore`, what the worker needs), `redis_store` (`RedisDecisionStore`),
`memory_store` (`MemoryDecisionStore`, the in-memory twin for broker-free tests) and
`checkpoints` (chunked checkpoints, and `save_checkpoint_sync` for a forked writer).
"""

from __future__ import annotations

from streams.store.checkpoints import CHECKPOINT_CHUNK, save_checkpoint_sync
from streams.store.memory_store import MemoryDecisionStore
from streams.store.protocol import (
    RECENT_KEEP,
    RECENT_SHOWN,
    CheckpointConflict,
    DecisionStore,
    PolicyConflict,
    RingKey,
)
from streams.store.redis_store import REDIS_CONNECTIONS, RedisDecisionStore

__all__ = [
    "CHECKPOINT_CHUNK",
    "RECENT_KEEP",
    "RECENT_SHOWN",
    "REDIS_CONNECTIONS",
    "CheckpointConflict",
    "DecisionStore",
    "MemoryDecisionStore",
    "PolicyConflict",
    "RedisDecisionStore",
    "RingKey",
    "save_checkpoint_sync",
]
