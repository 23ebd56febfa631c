"""The graph shard as user shards see it: whether it runs (here, or elsewhere with a recent
heartbeat in Redis), this worker's heartbeat when it runs here, and the ring scores it
published for the users and merchants about to be decided."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from graph.layer import RingScore
from rebate_guard.contract.records import Transaction
from rebate_guard.settings import Settings
from streams.registry import ShardRegistry
from streams.retry import Retrying
from streams.shards.wire import REQUESTER
from streams.store import DecisionStore, RingKey


class GraphStatus:
    def __init__(
        self,
        shards: ShardRegistry,
        store: DecisionStore,
        settings: Settings,
        *,
        retry: Retrying,
        clock: Callable[[], float],
    ) -> None:
        self.shards = shards
        self.store = store
        self.settings = settings
        self.retry = retry
        self.clock = clock
        #: When this worker last wrote its graph shard's heartbeat (clock seconds).
        self._beat = float("-inf")

    async def running(self, retry: bool = True) -> bool:
        """Whether the graph shard runs: here, or elsewhere with a recent heartbeat.
        `retry` False: a Redis failure raises (at payment time nothing waits for Redis)."""
        if self.shards.graphs or not self.settings.graph:
            return True
        read = self.store.graph_heartbeat
        beat = await (self.retry("read the graph heartbeat", read) if retry else read())
        return beat is not None and self.clock() - beat / 1000 <= self.settings.graph_stale_after_s

    async def beat(self) -> None:
        """The graph shard's heartbeat (at most once a second), for user shards elsewhere."""
        now = self.clock()
        if not self.shards.graphs or now - self._beat < 1.0:
            return
        self._beat = now
        beat = partial(self.store.put_graph_heartbeat, int(now * 1000))
        await self.retry("write the graph heartbeat", beat)

    async def ring_scores(
        self, ready: list[Transaction], requesters: Sequence[str] = ()
    ) -> dict[RingKey, RingScore] | None:
        """The strongest rings of the users and merchants about to be decided, and of the
        users of the points requests about to be (`requesters`), as the graph shard last
        published them (one round trip for the batch)."""
        if not ready and not requesters:
            return None
        keys = self.ring_keys(ready, requesters)
        return await self.retry("read ring scores", lambda: self.store.get_ring_scores(keys))

    def ring_keys(
        self, ready: Sequence[Transaction], requesters: Sequence[str] = ()
    ) -> list[RingKey]:
        """Whose ring scores deciding `ready` and the requests of `requesters` reads: their
        users' and the transactions' merchants', and the rings the requesters' requests read
        (`REQUESTER`)."""
        if not self.settings.graph:
            return []
        asking = {(REQUESTER, u) for u in requesters}
        return sorted(
            {("u", tx.user_id) for tx in ready} | asking | {("m", tx.merchant_id) for tx in ready}
        )
