"""Checkpoint cost, full against delta: bytes and CPU per checkpoint on a shard state built
by the worker's own code from a simulated world, and what marking touched keys costs.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/checkpoints.py --world /work/baseline/w250k70 \
        --events 100000 --between 1000,5000,20000

Feeds the first `--events` events of the world through a `BatchProcessor` (in-memory store,
its shards talking in-process, two partitions), writes a full checkpoint of every shard,
then for each `--between` N feeds N more events and writes the next checkpoint as a delta
and, for comparison, in full. Prints per checkpoint: bytes, CPU to pickle (what a forked
writer spends), CPU in the worker to plan it (key sets, under the lock), and CPU to restore
the chain against the full pickle. `--hot-path` times the feature stages over the same events
with and without marking touched keys (`features.changes`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.engine import EngineConfig
from features.referral import ReferralTree
from features.stages import EntityStage, UserStage
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Signup, Transaction
from rebate_guard.settings import Settings
from rebate_guard.tools.replay import EventFiles
from streams.batch import RawEvent
from streams.processor import BatchProcessor
from streams.shards import load_checkpoint
from streams.shards.checkpoints import chain_blob
from streams.sink import MemorySink, key_partition
from streams.store import MemoryDecisionStore

KINDS = ("signups", "transactions", "labels")
BATCH = 500
#: Events between two takes of the marks in `--hot-path` (~4 s of a worker's input).
MARKS_TAKEN_EVERY = 10_000


class Clock:
    """The worker's wall clock, moved past the idle timeout after every batch, so quiet
    inputs stop holding event time back (as between the worker's batches)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Feed:
    """The world's events as the input topics' messages, batch by batch."""

    def __init__(self, proc: BatchProcessor, events: Iterator[Event]) -> None:
        self.proc, self.events = proc, events
        self.offsets: dict[tuple[str, int], int] = {}

    def run(self, n: int) -> None:
        settings, n_partitions = self.proc.settings, self.proc.settings.partitions
        batch: dict[str, list[RawEvent]] = {kind: [] for kind in KINDS}
        for i, event in enumerate(itertools.islice(self.events, n)):
            if isinstance(event, Transaction):
                kind, key = "transactions", event.user_id
            elif isinstance(event, Signup):
                kind, key = "signups", event.user_id
            else:
                kind, key = "labels", event.tx_id or event.user_id
            p = key_partition(key.encode(), n_partitions)
            offset = self.offsets.get((kind, p), 0)
            self.offsets[(kind, p)] = offset + 1
            batch[kind].append(RawEvent(settings.topic(kind), p, offset, None, event.dumps()))
            if i % BATCH == BATCH - 1:
                self._flush(batch)
        self._flush(batch)

    def _flush(self, batch: dict[str, list[RawEvent]]) -> None:
        for kind in KINDS:
            if batch[kind]:
                asyncio.run(self.proc.handle(kind, batch[kind]))
                batch[kind] = []
        clock = self.proc.clock
        assert isinstance(clock, Clock)
        clock.now += self.proc.settings.source_idle_s + 1
        asyncio.run(self.proc.tick())


def _world(path: Path) -> Iterator[Event]:
    files = EventFiles(
        path / "transactions.parquet",
        path / "signups.parquet",
        path / "labels.parquet",
        progress=None,
    )
    return iter(files)


def _round(proc: BatchProcessor) -> tuple[dict[str, bytes], float, float]:
    """One checkpoint of every user and entity shard: blobs, CPU to plan, CPU to pickle."""
    started = time.process_time()
    done = proc.shards.checkpoint_round()
    planned = time.process_time()
    blobs = {
        unit: piece.snapshot()
        for unit, piece in done.pieces.items()
        if not unit.startswith("graph")
    }
    pickled = time.process_time()
    done.written()
    return blobs, planned - started, pickled - planned


def _restore_s(blob: bytes) -> float:
    started = time.process_time()
    load_checkpoint(blob)
    return time.process_time() - started


def checkpoints(args: argparse.Namespace) -> None:
    settings = Settings(partitions=2, topic_prefix="b.", checkpoint_full_every=1_000)
    proc = BatchProcessor(MemoryDecisionStore(), MemorySink(), settings, clock=Clock())
    proc.shards.own_all()
    feed = Feed(proc, _world(args.world))
    started = time.process_time()
    feed.run(args.events)
    fed = time.process_time() - started
    print(
        f"{args.events:,} events fed in {fed:.0f} s of CPU ({fed / args.events * 1e6:.0f} µs each)"
    )
    base, plan_s, pickle_s = _round(proc)
    chain = {unit: [blob] for unit, blob in base.items()}
    total = sum(map(len, base.values()))
    print()
    print(
        "| checkpoint | bytes (user + entity shards) | CPU to pickle | CPU to plan (worker) "
        "| CPU to restore |"
    )
    print("|---|---|---|---|---|")
    restore = sum(_restore_s(b) for b in base.values())
    print(
        f"| full, after {args.events:,} events | {total / 1e6:.1f} MB | {pickle_s:.2f} s | "
        f"{plan_s * 1000:.0f} ms | {restore:.2f} s |"
    )
    for n in args.between:
        feed.run(n)
        full, _ = proc.shards.checkpoints()
        started = time.process_time()
        whole = {unit: snap() for unit, snap in full.items() if not unit.startswith("graph")}
        whole_s = time.process_time() - started
        delta, plan_s, pickle_s = _round(proc)
        for unit, blob in delta.items():
            chain[unit].append(blob)
        whole_mb = sum(map(len, whole.values())) / 1e6
        delta_mb = sum(map(len, delta.values())) / 1e6
        restored = sum(_restore_s(chain_blob(pieces)) for pieces in chain.values())
        full_restore = sum(_restore_s(b) for b in whole.values())
        print(
            f"| full, {n:,} events later | {whole_mb:.1f} MB | {whole_s:.2f} s | | "
            f"{full_restore:.2f} s |"
        )
        print(
            f"| delta of those {n:,} events (chain of {len(next(iter(chain.values())))}) "
            f"| {delta_mb:.2f} MB | {pickle_s:.2f} s | {plan_s * 1000:.0f} ms | "
            f"{restored:.2f} s (the chain) |"
        )


def hot_path(args: argparse.Namespace) -> None:
    """CPU per event of the feature stages, without and with marking touched keys (taken
    every `MARKS_TAKEN_EVERY` events, as checkpoints would); rounds alternate, best kept."""
    events = list(itertools.islice(_world(args.world), args.events))
    config = EngineConfig()
    best: dict[bool, float] = {}
    for _ in range(args.rounds):
        for track in (False, True):
            users = UserStage(config.utc_offset_minutes, config.user_ttl_ms)
            entities = EntityStage(config.user_ttl_ms)
            tree = ReferralTree()
            marks = (users.track_changes(), entities.track_changes()) if track else ()
            started = time.process_time()
            for i, event in enumerate(events):
                if isinstance(event, Transaction):
                    out, context = users.transaction(event)
                    context.depth = tree.depth(event.user_id, context)
                    entities.transaction(event, context, out=out)
                elif isinstance(event, Signup):
                    if users.signup(event):
                        tree.signup(event)
                        entities.signup(event)
                else:
                    entities.label(event)
                if i % MARKS_TAKEN_EVERY == 0:
                    for changed in marks:
                        changed.take()
            spent = (time.process_time() - started) / len(events) * 1e6
            best[track] = min(best.get(track, spent), spent)
    print(
        f"| feature stages, {len(events):,} events, best of {args.rounds} | not marking "
        f"{best[False]:.1f} µs per event | marking {best[True]:.1f} µs per event |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--between", type=lambda s: [int(n) for n in s.split(",")], default=[1000, 5000, 20000]
    )
    parser.add_argument("--hot-path", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.hot_path:
        hot_path(args)
    else:
        checkpoints(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
