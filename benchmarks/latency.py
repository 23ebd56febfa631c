"""Decision latency: `POST /score` from a separate process, and produce -> decision end to end.

    .venv/bin/python benchmarks/latency.py [--score-rate 1000] [--e2e-rate 5000] [--seconds 20]
        [--worker-setting allowed_lateness_ms=0 --worker-setting source_idle_s=0.05]
        [--profile-worker /tmp/worker.prof]  # the worker under cProfile (`--e2e-rate 0`: no e2e)

One local broker and Redis, one `rebate-guard worker` process (its own process, as in
production), traffic of simulated-looking payments from 5,000 users whose `ts` is the wall
clock when sent:
- score: this process POSTs new transactions to the worker's `/score` at a steady rate
  (open loop: each request at its scheduled time, whatever the previous ones took) and times
  each answer; provisional (fail-closed) answers are counted apart. The worker's CPU is
  metered until its stream has read the transactions the requests produced (the stream's
  pass over them is part of their cost), whole, for its event-loop thread alone, and less
  what it spends idle (measured just before);
- bare: the ceiling, in the same run and on the same host, with the same client and request
  bodies: a bare aiohttp handler in its own process (uvloop, as the worker runs) that reads
  the body and answers a fixed `POST /score`-shaped JSON. Each `/score` figure is printed
  also as a ratio to it (rate reached, p50, p99, CPU per request of the answering process);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._worker import start_worker  # noqa: E402
from rebate_guard.client import rebate_status, web_request  # noqa: E402
from rebate_guard.contract.validation import parse_transaction  # noqa: E402
from rebate_guard.core.decider import fail_closed_decision  # noqa: E402
from rebate_guard.settings import Settings, env_name  # noqa: E402
from rebate_guard.tools.stack import LocalStack  # noqa: E402
from rebate_guard.tools.topics import ensure_topics  # noqa: E402

USERS = 5_000
#: How long the worker's idle CPU is measured, before the requests.
IDLE_S = 5.0


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


@dataclass
class Answered:
    """What one `POST /score` phase got back."""

    latencies: list[float]  # ms, of the decided (not provisional) answers
    provisional: Counter[str]  # by reason (which part failed)
    errors: int
    achieved: float  # requests sent per second

    def row(self) -> str:
        p50, p99, worst = _percentiles(self.latencies)
        return (
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms over "
            f"{len(self.latencies):,} decided; {sum(self.provisional.values()):,} provisional "
            f"(fail closed: {dict(self.provisional) or 'none'}), {self.errors:,} errors"
        )


async def _score(url: str, headers: dict[str, str], rate: float, seconds: float) -> Answered:
    rng = random.Random(1)
    answered = Answered([], Counter(), 0, 0.0)
    n = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            body = json.dumps(_payment(f"s{i}", rng)).encode()
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.json()
                    took = time.perf_counter() - sent
                    if response.status != 200:
                        answered.errors += 1
                    elif answer["provisional"]:
                        answered.provisional[answer["decision"]["reasons"][0]] += 1
                    else:
                        answered.latencies.append(took * 1000)
            except aiohttp.ClientError:
                answered.errors += 1

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        answered.achieved = n / (time.perf_counter() - start)
    return answered


def _serve_bare(port: int) -> None:
    """The ceiling: a bare aiohttp handler answering every `POST /score` with one fixed
    answer of the real one's shape (a decided status), read body and all."""
    import uvloop
    from aiohttp import web

    tx = parse_transaction(_payment("bare", random.Random(0)))
    decision = fail_closed_decision(tx, "bare", action="hold", policy_version="bare", decided_at=0)
    answer = json.dumps(rebate_status(decision, None).to_json()).encode()

    async def score(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/score", score)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def _bare_ceiling(rate: float, seconds: float, client_pid: int) -> tuple[Answered, CpuMeter, int]:
    """The bare handler's phase: what it answered, its CPU meter, and the request count."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(port)], cwd=ROOT, env=os.environ
    )
    try:
        url = f"http://127.0.0.1:{port}/score"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the bare aiohttp server did not start") from None
                time.sleep(0.1)
        meter = CpuMeter({"server": server.pid, "client": client_pid})
        answered = asyncio.run(_score(url, {"Content-Type": "application/json"}, rate, seconds))
        meter.stop(int(rate * seconds))
        return answered, meter, int(rate * seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)


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
    """User + system CPU time of a process so far (all its threads), from /proc; a negative
    `pid`: that process's main thread only (the worker's event loop, without the broker
    consumer's thread)."""
    stat = f"/proc/{pid}/stat" if pid > 0 else f"/proc/{-pid}/task/{-pid}/stat"
    fields = Path(stat).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time each process spends over a phase: what one request or transaction costs
    each part of the stack, and how many of the machine's cores the phase kept busy."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        self.started = time.perf_counter()
        self.per: dict[str, float] = {}  # ms of CPU per request, by process (after `stop`)
        self.beyond_idle: dict[str, float] = {}  # the same, less the idle rate's
        self.spent: dict[str, float] = {}  # CPU seconds by process
        self.cores = self.wall = 0.0

    def stop(self, n: int, *, idle: CpuMeter | None = None) -> None:
        """`idle`: a phase of the same processes doing nothing; what they spend at that
        rate over this phase is then also shown taken off (the requests' own cost)."""
        self.wall = wall = time.perf_counter() - self.started
        self.spent = spent = {
            name: _cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()
        }
        self.per = {name: 1000 * cpu / max(n, 1) for name, cpu in spent.items()}
        processes = [cpu for name, cpu in spent.items() if self.pids[name] > 0]
        self.cores = sum(processes) / wall
        if idle is not None:
            self.beyond_idle = {
                name: 1000 * (cpu - idle.spent[name] / idle.wall * wall) / max(n, 1)
                for name, cpu in spent.items()
            }

    def report(self) -> str:
        per = ", ".join(f"{name} {ms:.2f}" for name, ms in self.per.items())
        out = f"{per}; {self.cores:.2f} of {os.cpu_count()} cores busy"
        if self.beyond_idle:
            idle = ", ".join(f"{name} {ms:.2f}" for name, ms in self.beyond_idle.items())
            out += f"; less idle polling: {idle}"
        return out


def _ratios(score: Answered, bare: Answered, *, worker_ms: float, bare_ms: float) -> str:
    """`POST /score`'s figures against the bare handler's (x times the ceiling's)."""
    (s50, s99, _), (b50, b99, _) = _percentiles(score.latencies), _percentiles(bare.latencies)
    return (
        f"rate reached x{score.achieved / bare.achieved:.2f}, p50 x{s50 / b50:.1f}, "
        f"p99 x{s99 / b99:.1f}, CPU per request (worker less idle / bare server) "
        f"x{worker_ms / bare_ms:.1f}"
    )


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
    parser.add_argument("--e2e-rate", type=float, default=5000.0, help="0: no e2e phase")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument(
        "--worker-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a worker setting, e.g. allowed_lateness_ms=0 (repeatable)",
    )
    parser.add_argument(
        "--profile-worker", type=Path, help="run the worker under cProfile, stats to this file"
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        _serve_bare(args.serve_bare)
        return
    overrides = Settings.from_env(
        {env_name(k): v for k, _, v in (item.partition("=") for item in args.worker_setting)}
    )
    changed = {
        k.partition("=")[0]: getattr(overrides, k.partition("=")[0]) for k in args.worker_setting
    }
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(workdir=Path(tmp) / "stack") as stack:
        bare, bare_meter, n = _bare_ceiling(args.score_rate, args.seconds, os.getpid())
        rows.append(
            (
                f"bare aiohttp handler at {args.score_rate:,.0f}/s "
                f"(achieved {bare.achieved:,.0f}/s)",
                bare.row(),
                bare_meter.report(),
            )
        )
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
        proc = start_worker(settings, log, profile=args.profile_worker)
        try:
            _wait_ready(settings, proc, log)
            pids = {
                "worker": proc.pid,
                "(its loop thread)": -proc.pid,
                **stack.pids(),
                "client": os.getpid(),
            }
            # What the worker spends idle (polling the broker, timers), to tell apart from
            # what the requests cost it.
            time.sleep(IDLE_S)  # past the startup's own work (the first fetches, metadata)
            idle = CpuMeter(pids)
            time.sleep(IDLE_S)
            idle.stop(0)
            # For a sampling profiler to attach to the worker for this phase alone.
            print(f"POST /score phase: worker pid {proc.pid}", file=sys.stderr, flush=True)
            meter = CpuMeter(pids)
            request = web_request(settings, "/score")
            url, headers = request.full_url, dict(request.header_items())
            score = asyncio.run(_score(url, headers, args.score_rate, args.seconds))
            # The stream's own pass over the same transactions is part of their cost: the
            # meter runs until the worker has read them all (or a minute more).
            drained = _stream_drained(settings, n, grace_s=60)
            meter.stop(n, idle=idle)
            rows.append(
                (
                    f"POST /score at {args.score_rate:,.0f}/s (achieved {score.achieved:,.0f}/s; "
                    f"the stream had them all {drained})",
                    score.row(),
                    meter.report(),
                )
            )
            rows.append(("the worker's counters after it", _counters(settings), ""))
            ratios = _ratios(
                score, bare, worker_ms=meter.beyond_idle["worker"], bare_ms=bare_meter.per["server"]
            )
            rows.append(("POST /score vs the bare handler", ratios, ""))
            if args.e2e_rate:
                rows.append(_e2e_row(settings, pids, rate=args.e2e_rate, seconds=args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"worker settings: {changed or 'defaults'}; {args.partitions} partitions, 1 worker")
    print("| what | latency | CPU ms per request or transaction |\n|---|---|---|")
    for what, result, cpu in rows:
        print(f"| {what} | {result} | {cpu} |")


def _stats(settings: Settings) -> dict[str, Any]:
    with urllib.request.urlopen(web_request(settings, "/api/stats"), timeout=10) as r:
        stats: dict[str, Any] = json.loads(r.read())
    return stats


def _stream_drained(settings: Settings, n: int, *, grace_s: float) -> str:
    """Waits until the worker's stream has read the requests' transactions: `n` (its
    `events`), or as many as were produced (a request that failed before producing has
    none), seen as no more read for a second."""
    started = time.monotonic()
    read, steady_since = -1, started
    while True:
        now_read = _stats(settings)["worker"]["events"]
        now = time.monotonic()
        if now_read >= n:
            return f"{now - started:.1f} s after"
        if now_read != read:
            read, steady_since = now_read, now
        elif now - steady_since >= 1.0:
            return f"{now - started:.1f} s after, {read:,} of {n:,} (the rest not produced)"
        if now - started > grace_s:
            return f"not: {read:,} read {grace_s:.0f} s after"
        time.sleep(0.1)


def _counters(settings: Settings) -> str:
    """What the worker did with the requests: decided at payment time or not (why), and
    how many requests each Redis call carried (`streams.coalesce`)."""
    stats = _stats(settings)
    counters = stats["worker"]
    out = [
        f"{name} {counters[name]}"
        for name in ("decided_at_payment", "left_to_stream", "events", "decided")
    ]
    for step, count in stats.get("score_round_trips", {}).items():
        out.append(f"{step}: {count['items'] / max(count['calls'], 1):.2f} requests per call")
    return ", ".join(out)


def _e2e_row(
    settings: Settings, pids: dict[str, int], *, rate: float, seconds: float
) -> tuple[str, str, str]:
    meter = CpuMeter(pids)
    ids, sent_rate = asyncio.run(_produce(settings, rate, seconds))
    e2e, undecided = _e2e(settings, ids, grace_s=120)
    meter.stop(len(ids))  # until the last decision or the grace's end
    p50, p99, worst = _percentiles(e2e)
    return (
        f"produce -> decision at {rate:,.0f}/s (sent {sent_rate:,.0f}/s)",
        f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {worst:,.0f} ms over "
        f"{len(e2e):,}; {undecided:,} not decided within 120 s after",
        meter.report(),
    )


if __name__ == "__main__":
    main()
