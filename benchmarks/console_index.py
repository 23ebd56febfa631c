"""What the console's index costs per decision, by part, on a redis-server of its own.

    .venv/bin/python benchmarks/console_index.py [--events 50000] [--batch 1000]

Parts: each payment's history row (`rebate_guard.core.backtest.history_row_json`, made
by the user shard, `streams/shards/user.py` `_history_row`); `RedisConsoleStore.record` per batch:
building its arguments, redis-py packing and sending them (the client's CPU), and the Lua
call's time in Redis (`INFO commandstats`); and the same call with a Lua script that does
nothing (what passing the arguments alone costs Redis). Decisions are synthetic (70% allow,
10% scale, 15% hold, 5% block) on the simulated world's transactions (seed 11).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rebate_guard.contract.records import Decision, Transaction  # noqa: E402
from rebate_guard.core.backtest import history_row_json  # noqa: E402
from rebate_guard.tools.simulator import WorldConfig, event_stream, simulate_world  # noqa: E402
from rebate_guard.tools.stack import free_port, redis_server_bin  # noqa: E402
from streams.console.store import Indexed, RedisConsoleStore  # noqa: E402


def _entries(n: int) -> tuple[list[Indexed], float]:
    """Payments with decisions and history rows; µs per history row."""
    world = simulate_world(WorldConfig(seed=11, target_transactions=n))
    txs = [Transaction(**e) for t, _, e in event_stream(world) if t == "transactions"]
    payments = [t for t in txs if t.kind == "payment"]
    rnd = random.Random(1)
    decided: list[tuple[Transaction, Decision]] = []
    for t in payments:
        requested = int(t.amount_cents * t.rebate_rate)
        action = rnd.choices(["allow", "scale", "hold", "block"], [70, 10, 15, 5])[0]
        granted = {"allow": requested, "scale": requested // 2}.get(action, 0)
        decision = Decision(
            tx_id=t.tx_id, ts=t.ts, user_id=t.user_id, merchant_id=t.merchant_id, risk=0.3,
            trust_weight=0.7, action=action, rebate_requested_cents=requested,
            rebate_granted_cents=granted, reasons=["r"], model_version="m",
            decided_at=int(time.time() * 1000), policy_version="p", threshold_version="fixed",
        )  # fmt: skip
        decided.append((t, decision))
    started = time.perf_counter()
    rows = [
        history_row_json(
            t, d, trusted=True, calibrated_risk=0.2, user_granted_24h=100,
            device_rebate_requested_24h=50, fail_closed_action="hold", partition=0,
        )
        for t, d in decided
    ]  # fmt: skip
    per_row = (time.perf_counter() - started) / len(rows) * 1e6
    return [Indexed(d, t, r) for (t, d), r in zip(decided, rows, strict=True)], per_row


async def _record(url: str, entries: list[Indexed], batch: int, noop: bool) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(100):  # until the server answers
            try:
                await client.flushdb()
                break
            except aioredis.ConnectionError:
                await asyncio.sleep(0.05)
        store = RedisConsoleStore(client, "bench", ttl_s=7 * 86_400, history_keep=200_000)
        if noop:
            store._record = client.register_script("return 0")
        real = store._record

        async def nothing(keys: list[str], args: list[object]) -> int:
            return 0

        store._record = nothing  # type: ignore[assignment]
        started = time.perf_counter()
        for i in range(0, len(entries), batch):
            await store.record(entries[i : i + batch])
        args_us = (time.perf_counter() - started) / len(entries) * 1e6
        store._record = real
        await store.record(entries[:1])  # loads the script
        await client.config_resetstat()
        started = time.perf_counter()
        for i in range(0, len(entries), batch):
            await store.record(entries[i : i + batch])
        call_us = (time.perf_counter() - started) / len(entries) * 1e6
        stats = await client.info("commandstats")
        server_us = stats["cmdstat_evalsha"]["usec"] / len(entries)
        return {"args": args_us, "call": call_us, "server": server_us}
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    entries, row_us = _entries(args.events)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(redis_server_bin()), "--port", str(port), "--save", "", "--dir", tmp]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            full = asyncio.run(_record(url, entries, args.batch, noop=False))
            noop = asyncio.run(_record(url, entries, args.batch, noop=True))
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"\n{len(entries):,} payments, batches of {args.batch}; µs per decision\n")
    print("| part | µs |\n|---|---|")
    print(f"| history row (`history_row_json`, worker) | {row_us:.1f} |")
    print(f"| `record`: building the arguments (worker) | {full['args']:.1f} |")
    client = full["call"] - full["args"] - full["server"]
    print(f"| `record`: redis-py packing, sending, waiting (worker, less Redis) | {client:.1f} |")
    print(f"| `record`: the Lua call in Redis | {full['server']:.1f} |")
    idle = noop["server"]
    print(f"| ... of which passing the arguments (a Lua script doing nothing) | {idle:.1f} |")


if __name__ == "__main__":
    main()
