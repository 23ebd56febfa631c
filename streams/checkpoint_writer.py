"""Checkpoints: every shard's state with its offsets written to Redis, then the input they
cover acknowledged (committed offsets never run ahead of a checkpoint)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from rebate_guard.settings import Settings
from streams.batch import Counters
from streams.registry import Piece, ShardRegistry
from streams.retry import Retrying
from streams.store import CheckpointConflict, DecisionStore, save_checkpoint_sync

log = logging.getLogger(__name__)


async def _exited_cleanly(pid: int) -> bool:
    loop = asyncio.get_running_loop()
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


class CheckpointWriter:
    """Writes the checkpoints of `shards` (under `lock`, between batches) and acknowledges
    the input messages held until then (`hold`). `fork`: pickle and write from a forked
    child (needs the real Redis: the child opens its own connection to it)."""

    def __init__(
        self,
        shards: ShardRegistry,
        store: DecisionStore,
        settings: Settings,
        *,
        lock: asyncio.Lock,
        retry: Retrying,
        counters: Counters,
        fork: bool = False,
    ) -> None:
        self.shards = shards
        self.store = store
        self.settings = settings
        self.lock = lock
        self.retry = retry
        self.counters = counters
        self.fork = fork
        #: Input taken in and not yet acknowledged (acknowledged once a checkpoint covers it).
        self.held: list[Any] = []
        #: Acknowledges one held message (set by create_worker).
        self.ack: Callable[[Any], None] = lambda message: None
        self.writing = False

    def hold(self, messages: list[Any]) -> None:
        self.held.extend(messages)

    async def handover(self) -> None:
        """Partitions are being revoked: their next owner must find them checkpointed as of
        now, and Faust commits what the checkpoint acknowledged. So wait out a checkpoint
        already being written (it holds older state) and write a fresh one."""
        while self.writing:
            await asyncio.sleep(0.05)
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Save every shard with its offsets, then acknowledge the input they cover."""
        if self.writing:
            return  # the previous one is still being written
        self.writing = True
        try:
            async with self.lock:
                done = self.shards.checkpoint_round()
                if not done.pieces:
                    return
                held, self.held = self.held, []
                writer = self._fork_writer(done.pieces) if self.fork else None
                blobs = None
                if writer is None:
                    blobs = {n: piece.snapshot() for n, piece in done.pieces.items()}
            if not await self._written(done.pieces, blobs, writer):
                done.failed()  # the next round is full: the store may hold any part of this
                self.held = held + self.held
                return
            done.written()
            for message in held:
                self.ack(message)
            self.counters.checkpoints += 1
        finally:
            self.writing = False

    async def _written(
        self, pieces: dict[str, Piece], blobs: dict[str, bytes] | None, writer: int | None
    ) -> bool:
        """Whether every piece is durably written: here (`blobs`), or by the forked
        `writer`."""
        if blobs is None:
            assert writer is not None
            if await _exited_cleanly(writer):
                return True
            log.warning("checkpoint writer %d failed; retrying at the next interval", writer)
            return False
        for name, blob in blobs.items():
            save = partial(self._save, name, blob, pieces[name])
            if not await self.retry("save checkpoint", save):
                return False
        return True

    async def _save(self, name: str, blob: bytes, piece: Piece) -> bool:
        """False if the piece is a delta of a chain that no longer ends where it began."""
        try:
            await self.store.save_checkpoint(
                name, blob, generation=piece.generation, extends=piece.extends
            )
        except CheckpointConflict:
            log.warning("checkpoint %s changed under this worker; the next is full", name)
            return False
        return True

    def _fork_writer(self, pieces: dict[str, Piece]) -> int | None:
        """Write the checkpoints from a forked child, as Redis's BGSAVE does.

        Pickling the whole state blocks for seconds at a few hundred MB (benchmarks/
        README.md); the child gets a copy-on-write image of the state as it is now, between
        batches, and pickles and writes it while this process goes on. Returns the child's
        pid, or None where fork is unavailable (then the caller pickles inline).
        """
        if not hasattr(os, "fork"):
            return None
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:  # the child: no event loop, no logging, no shared connections; exit hard
            os.nice(10)  # the worker and the broker come first; this uses what is spare
            for name, piece in pieces.items():
                save_checkpoint_sync(
                    self.settings.redis_url,
                    self.settings.app_id,
                    name,
                    piece.snapshot(),
                    generation=piece.generation,
                    extends=piece.extends,
                )
            status = 0
        finally:
            os._exit(status)
