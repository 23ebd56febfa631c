"""The console's index of decisions made at payment time (`POST /score`'s fast path): each
counted once in the views, and its history row (what policy backtests replay) kept like any
payment's."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rebate_guard.contract.records import Transaction
from rebate_guard.contract.validation import parse_transaction
from rebate_guard.core.backtest import HistoryRow
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from streams.console.store import MemoryConsoleStore
from tests.factories import HOUR
from tests.unit.test_payment_time import Feed, _nothing_produced
from tests.unit.test_processor import make


def test_payments_decided_at_payment_time_are_indexed_once_with_their_history_rows() -> None:
    config = WorldConfig(seed=5, n_users=200, n_merchants=20, days=6, target_transactions=1_000)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_world(simulate_world(config), Path(tmp))
        world = list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))
    payments = [e for e in world if isinstance(e, Transaction) and e.kind == "payment"]

    async def run() -> None:
        console = MemoryConsoleStore()
        proc, store, _ = make(partitions=2, console=console)
        feed = Feed(proc)
        for event in world:
            await feed.put(event)
        await feed.settle()
        late = [
            parse_transaction({**p.asdict(), "tx_id": f"late-{i}", "ts": world[-1].ts + HOUR + i})
            for i, p in enumerate(payments[-5:])
        ]
        for payment in late:
            _, decided = await proc.payment_time.decide(payment, _nothing_produced())
            assert decided is not None, payment.tx_id
        assert proc.counters.decided_at_payment == len(late)
        for payment in late:
            await feed.put(payment)
        await feed.settle()
        assert proc.payment_time.entries == {}

        rows = [HistoryRow.from_json(r) for r in await console.history(0, 1_000_000)]
        ids = [r.tx_id for r in rows]
        assert sorted(ids) == sorted({p.tx_id for p in payments} | {p.tx_id for p in late})
        # Counted once in the overview's series, each in the entity index once.
        series = await console.series(0, 2**40)
        assert sum(b["decisions"] for b in series) == len(store.decisions)
        for payment in late:
            newest = await console.by_entity("user", payment.user_id, 1_000)
            assert newest.count(payment.tx_id) == 1

    asyncio.run(run())
