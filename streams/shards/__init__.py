"""The two feature stages as partition-sized state machines, and the protocol between them.

`features.stages` says what each stage computes; this module says how partitions of them
cooperate over topics so that N workers give exactly the one-process features:

    inputs[p] --> UserShard p --requests[q]--> EntityShard q --results[p]--> UserShard p
    (user_id)      user family,    (entity)      merchant, device, ...         decides

- A `UserShard` owns input partition p of the four input topics (co-partitioned by user).
  It merges them into event-time order (an `Aligner` over its four sources), computes the
  user features, and sends each released event to the entity partitions that own its keys,
  batched into one *envelope* per partition with its watermark. Results come back on the
  results topic's partition p; transactions are decided in release order once all their
  parts are in (a completion queue), so the decision context (granted rebates, detectors)
  sees them in event-time order too.
- An `EntityShard` owns requests partition q. Its aligner's sources are the user shards: an
  envelope's watermark says that shard will send nothing earlier, so entity state also
  advances in exact event-time order across all user partitions.
- A `GraphShard` owns the whole entity graph (`graph.layer`): every user shard sends it
  its released signups and transactions on the graph-events topic's partition
  `GRAPH_PARTITION`, in envelopes with watermarks like the requests, so the graph too
  advances in exact event-time order, the order replay gives it: the same ring events.
  Ring scores reach the user shards through Redis (see `streams.processor`).
- User shards also talk to each other on the results topic: a label keyed by tx_id goes to
  every user shard (any of them may have decided that transaction), and the one that did
  sends the labelled vectors (`Example`s) to the others, so every shard's classifier learns
  every label. A peer's message waits until the receiver's own event time has passed it.

Exactly once across restarts (each shard is checkpointed on its own, with its input offsets):
- every item carries its identity (input topic code, offset) in partition p;
- a user shard restored from a checkpoint re-sends only items released after it; an entity
  shard remembers the identities it has applied and skips repeats, forgetting those below
  the sender's *floor* (the sender's newest durable checkpoint covers them, so they can
  never be re-sent);
- results are matched by identity; a result for an item not yet (re-)released after a
  restore waits as an orphan; duplicates (an entity shard re-running after its restore)
  find nothing pending and are dropped with the orphans below the floor.

Pure: no I/O, no clock; the async driver (`streams.processor`) moves the bytes.

- A `SolvencyShard` keeps the platform's books (`rebate_guard.core.solvency`): every user
  shard sends it the movements its decider makes (grants, adjustments, platform events) on
  the solvency-movements topic's partition `SOLVENCY_PARTITION`, with watermarks, so its
  readings and alerts are replay's (`streams.shards.solvency`).

The modules: `user` (the user shard) and `user_checkpoints` (its floor and snapshots),
`completion` (its completion queue and the ring score a transaction is decided with), `peers`
(what user shards tell each other), `inbox` (entity and graph shards), `solvency` (the books'
movements and the solvency shard), `wire` (identities, envelopes, marks) and `checkpoints`
(loading a checkpoint, also one pickled before classes moved).
"""

from __future__ import annotations

from streams.shards.checkpoints import MOVED_CLASSES, MOVED_MODULES, load_checkpoint
from streams.shards.completion import Completed, Entry, requester_ring, ring_of
from streams.shards.inbox import EntityShard, GraphShard, Inbox
from streams.shards.peers import PeerExchange
from streams.shards.solvency import SOLVENCY_PARTITION, MovementFeed, SolvencyShard
from streams.shards.user import UserShard
from streams.shards.wire import (
    ENVELOPE_ITEMS,
    GRAPH_PARTITION,
    TOPIC_CODES,
    DepthKey,
    DepthRequest,
    Identity,
    Mark,
    OrderKey,
    TreeWrite,
)

__all__ = [
    "ENVELOPE_ITEMS",
    "GRAPH_PARTITION",
    "MOVED_CLASSES",
    "MOVED_MODULES",
    "SOLVENCY_PARTITION",
    "TOPIC_CODES",
    "Completed",
    "DepthKey",
    "DepthRequest",
    "EntityShard",
    "Entry",
    "GraphShard",
    "Identity",
    "Inbox",
    "Mark",
    "MovementFeed",
    "OrderKey",
    "PeerExchange",
    "SolvencyShard",
    "TreeWrite",
    "UserShard",
    "load_checkpoint",
    "requester_ring",
    "ring_of",
]
