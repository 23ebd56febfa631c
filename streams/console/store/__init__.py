"""The console's views in Redis, kept as decisions are stored, and the console's own records.

What the worker writes (one Lua call per batch, only for decisions that were new, so a
redelivery does not count twice):

- **series**: per 10 s of wall clock (when decided), decisions, actions and money
  (requested, granted, held, withheld), for the overview's charts;
- **review queue**: held payments by cents held; a release or void of the hold takes it out;
- **entity index**: each user's, merchant's and device's newest decisions (`ENTITY_KEEP`);
- **history**: the newest payment decisions with what the policy saw
  (`rebate_guard.core.backtest.HistoryRow` JSON), which a draft policy is backtested on;
- **labels**: the newest label of each transaction and user, with its source and reviewer.

What the console writes: claims on queue items, policy drafts, and the audit log (who did
what, when; never trimmed below `AUDIT_KEEP` entries).

`MemoryConsoleStore` keeps the same semantics in memory for broker-free tests.

The modules: `index` (what is indexed per decision, and the Redis batch payload), `protocol`
(`ConsoleStore`), `redis_store` (`RedisConsoleStore`), `memory_store` (`MemoryConsoleStore`) and
`solvency` (the solvency monitor's serving keys, which the console reads and the worker writes).
"""

from __future__ import annotations

from streams.console.store.index import (
    AUDIT_KEEP,
    ENTITY_KEEP,
    ENTITY_KINDS,
    RING_VERSIONS_KEEP,
    SERIES_FIELDS,
    SERIES_STEP_S,
    SERIES_TTL_S,
    Indexed,
    held_cents,
    resolved_holds,
)
from streams.console.store.memory_store import MemoryConsoleStore
from streams.console.store.protocol import ConsoleStore
from streams.console.store.redis_store import ConsoleKeys, RedisConsoleStore
from streams.console.store.solvency import (
    ServedSolvency,
    SolvencyBooks,
    SolvencyLayout,
)

__all__ = [
    "AUDIT_KEEP",
    "ENTITY_KEEP",
    "ENTITY_KINDS",
    "RING_VERSIONS_KEEP",
    "SERIES_FIELDS",
    "SERIES_STEP_S",
    "SERIES_TTL_S",
    "ConsoleKeys",
    "ConsoleStore",
    "Indexed",
    "MemoryConsoleStore",
    "RedisConsoleStore",
    "ServedSolvency",
    "SolvencyBooks",
    "SolvencyLayout",
    "held_cents",
    "resolved_holds",
]
