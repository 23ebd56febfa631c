"""Decision latency: `POST /score` from a separate process, and produce -> decision end to end.

    .venv/bin/python benchmarks/latency.py [--score-rate 1000] [--e2e-rate 5000] [--seconds 20]
        [--worker-setting allowed_lateness_ms=0 --worker-setting source_idle_s=0.05]

One local broker and Redis, one `rebate-guard worker` process (its own process, as in
production), traffic of simulated-looking payments from 5,000 users whose `ts` is the wall
clock when sent:
- score: this process POSTs new transactions to the worker's `/score` at a steady rate
  (open loop: each request at its scheduled time, whatever the previous ones took) and times
  each answer; provisional (fail-closed) answers are counted apart;
- e2e: this process produces transactions at a steady rate to the broker; after the run, each
  decision's `decided_at` (stamped when the worker decided, right before the batch is stored
  in Redis) minus the transaction's `ts` (stamped when produced) is its latency. Transactions
  not decided when the run ends are counted, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import redis
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._worker import start_worker  # noqa: E402
from rebate_guard.client import web_request  # noqa: E402
from rebate_guard.settings import Settings, env_name  # noqa: E402
from rebate_guard.tools.stack import LocalStack  # noqa: E402
from rebate_guard.tools.topics import ensure_topics  # noqa: E402

USERS = 5_000


def _payment(tx_id: str, rng: random.Random) -> dict[str, object]:
    user = rng.randrange(USERS)
    return {
        "tx_id": tx_id,
        "ts": int(time.time() * 1000),
        "user_id": f"u{user}",
        "merchant_id": f"m{rng.randrange(300)}",
        "amount_cents": rng.randrange(500, 20_000),
        "rebate_rate": rng.choice((0.06, 0.1, 0.15, 0.2)),
        "kind": "payment",
        "device_id": f"d{user}",
        "ip": f"10.{user // 250}.{user % 250}.1",
        "card_id": f"c{user}",
        "merchant_category": "restaurant",
    }


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan"), float("nan")

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return at(0.5), at(0.99), ordered[-1]


async def _score(
    settings: Settings, rate: float, seconds: float
) -> tuple[list[float], Counter[str], int, float]:
    request = web_request(settings, "/score")
    url, headers = request.full_url, dict(request.header_items())
    rng = random.Random(1)
    latencies: list[float] = []
    provisional: Counter[str] = Counter()  # by reason (which part failed)
    errors = 0
    n = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            body = json.dumps(_payment(f"s{i}", rng)).encode()
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.json()
                    took = time.perf_counter() - sent
                    if response.status != 200:
                        errors += 1
                    elif answer["provisional"]:
                        provisional[answer["decision"]["reasons"][0]] += 1
                    else:
                        latencies.append(took * 1000)
            except aiohttp.ClientError:
                errors += 1

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        achieved = n / (time.perf_counter() - start)
    return latencies, provisional, errors, achieved


async def _produce(settings: Settings, rate: float, seconds: float) -> tuple[list[str], float]:
    rng = random.Random(2)
    # A plain producer, as a payment service would run one: `send` only queues the record
    # (batched by partition every `linger_ms`), so sends overlap without waiting on acks.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all", linger_ms=2
    )
    await producer.start()
    topic = settings.topic("transactions")
    ids: list[str] = []
    acks: list[asyncio.Future[object]] = []
    n = int(rate * seconds)
    chunk = max(1, int(rate / 200))  # every 5 ms
    start = time.perf_counter()
    try:
        for first in range(0, n, chunk):
            delay = start + first / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for i in range(first, min(n, first + chunk)):
                payment = _payment(f"e{i}", rng)
                ids.append(str(payment["tx_id"]))
                key = str(payment["user_id"]).encode()
                acks.append(await producer.send(topic, json.dumps(payment).encode(), key=key))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return ids, len(ids) / (time.perf_counter() - start)


def _e2e(settings: Settings, ids: list[str], grace_s: float) -> tuple[list[float], int]:
    client = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + grace_s
    prefix = f"{settings.app_id}:decision:"
    found: dict[str, float] = {}
    try:
        while time.monotonic() < deadline:
            missing = [t for t in ids if t not in found]
            for i in range(0, len(missing), 2000):
                part = missing[i : i + 2000]
                for tx_id, value in zip(part, client.mget([prefix + t for t in part]), strict=True):
                    if value is not None:
                        d = json.loads(value)
                        found[tx_id] = float(d["decided_at"] - d["ts"])
            if len(found) == len(ids):
                break
            time.sleep(0.5)
    finally:
        client.close()
    return list(found.values()), len(ids) - len(found)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time each process spends over a phase: what one request or transaction costs
    each part of the stack, and how many of the machine's cores the phase kept busy."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        self.started = time.perf_counter()

    def report(self, n: int) -> str:
        wall = time.perf_counter() - self.started
        spent = {name: _cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        per = ", ".join(f"{name} {1000 * cpu / max(n, 1):.2f}" for name, cpu in spent.items())
        return f"{per}; {sum(spent.values()) / wall:.2f} of {os.cpu_count()} cores busy"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(settings: Settings, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited; see {log}")
        try:
            with urllib.request.urlopen(web_request(settings, "/api/stats"), timeout=2) as r:
                stats = json.loads(r.read())
                if stats["event_time"]["sources"] > 0:  # partitions assigned
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the worker was not ready in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--score-rate", type=float, default=1000.0)
    parser.add_argument("--e2e-rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument(
        "--worker-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a worker setting, e.g. allowed_lateness_ms=0 (repeatable)",
    )
    args = parser.parse_args()
    overrides = Settings.from_env(
        {env_name(k): v for k, _, v in (item.partition("=") for item in args.worker_setting)}
    )
    changed = {
        k.partition("=")[0]: getattr(overrides, k.partition("=")[0]) for k in args.worker_setting
    }
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(workdir=Path(tmp) / "stack") as stack:
        settings = stack.settings(
            Settings(
                partitions=args.partitions,
                data_dir=Path(tmp) / "data",
                log_level="warning",
                app_id="bench-latency",
                topic_prefix="lat.",
                web_port=_free_port(),
                **changed,
            )
        ).with_api_token()
        asyncio.run(ensure_topics(settings))
        log = Path(tmp) / "worker.log"
        proc = start_worker(settings, log)
        try:
            _wait_ready(settings, proc, log)
            pids = {"worker": proc.pid, **stack.pids(), "client": os.getpid()}
            meter = CpuMeter(pids)
            lat, provisional, errors, achieved = asyncio.run(
                _score(settings, args.score_rate, args.seconds)
            )
            cpu = meter.report(int(args.score_rate * args.seconds))
            p50, p99, worst = _percentiles(lat)
            rows.append(
                (
                    f"POST /score at {args.score_rate:,.0f}/s (achieved {achieved:,.0f}/s)",
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms over {len(lat):,} "
                    f"decided; {sum(provisional.values()):,} provisional (fail closed: "
                    f"{dict(provisional) or 'none'}), {errors:,} errors",
                    cpu,
                )
            )
            meter = CpuMeter(pids)
            ids, sent_rate = asyncio.run(_produce(settings, args.e2e_rate, args.seconds))
            e2e, undecided = _e2e(settings, ids, grace_s=120)
            cpu = meter.report(len(ids))  # until the last decision or the grace's end
            p50, p99, worst = _percentiles(e2e)
            rows.append(
                (
                    f"produce -> decision at {args.e2e_rate:,.0f}/s (sent {sent_rate:,.0f}/s)",
                    f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {worst:,.0f} ms over "
                    f"{len(e2e):,}; {undecided:,} not decided within 120 s after",
                    cpu,
                )
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"worker settings: {changed or 'defaults'}; {args.partitions} partitions, 1 worker")
    print("| what | latency | CPU ms per request or transaction |\n|---|---|---|")
    for what, result, cpu in rows:
        print(f"| {what} | {result} | {cpu} |")


if __name__ == "__main__":
    main()
