"""End-to-end throughput, next to its two baselines, on one local broker in one run.

    .venv/bin/python benchmarks/throughput.py [--events 200000] [--partitions 2]

Rows (all consume the same pre-loaded topic of simulated transactions):
- raw relay: a plain aiokafka consumer producing one record per event (no Faust, no work);
- bare Faust agent: `take_events(1000, 0.05)`, no work, no output (Faust's own ceiling);
- pipeline, 1 worker: `rebate-guard worker`, decisions stored in Redis per second, timed from
  the 20% mark to the last (steady state, past the start-up burst);
- pipeline, N workers: as many worker processes as partitions (split by the consumer group);
- replay: the same scoring code offline, from Parquet files.
Rates are events per second of wall time; ratios are against the bare Faust agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._worker import start_worker  # noqa: E402
from rebate_guard.settings import Settings, env_name  # noqa: E402
from rebate_guard.tools.producer import produce_events  # noqa: E402
from rebate_guard.tools.replay import replay  # noqa: E402
from rebate_guard.tools.simulator import WorldConfig, event_stream, simulate_world, write_world  # noqa: E402
from rebate_guard.tools.stack import LocalStack  # noqa: E402
from rebate_guard.tools.topics import ensure_topics  # noqa: E402


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}


# --- the baselines, each run in its own process (like a worker) ------------------------------


async def _raw_relay(settings: Settings, source: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.app_id}-relay",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    seen, started = 0, None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            futures = []
            for tp, messages in batch.items():
                if started is None and messages:
                    started = time.perf_counter()
                out = producer.create_batch()
                for m in messages:
                    if out.append(key=m.key, value=m.value, timestamp=None) is None:
                        futures.append(
                            await producer.send_batch(
                                out, f"{source}.relayed", partition=tp.partition
                            )
                        )
                        out = producer.create_batch()
                        out.append(key=m.key, value=m.value, timestamp=None)
                futures.append(
                    await producer.send_batch(out, f"{source}.relayed", partition=tp.partition)
                )
                seen += len(messages)
            await asyncio.gather(*futures)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    assert started is not None
    return seen / (time.perf_counter() - started)


def _bare_faust(settings: Settings, source: str, n: int) -> float:
    import faust
    import uvloop

    uvloop.install()  # as the worker does, so the comparison is like for like
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.app_id}-bare",
        broker=settings.faust_broker_url,
        store="memory://",
        datadir=str(settings.data_dir / "bare"),
        web_enabled=False,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(source, key_serializer="raw", value_serializer="raw")
    result: dict[str, float] = {}
    state = {"seen": 0, "started": 0.0}

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(1000, within=0.05):
            if not state["seen"]:
                state["started"] = time.perf_counter()
            state["seen"] += len(events)
            if state["seen"] >= n:
                result["rate"] = state["seen"] / (time.perf_counter() - state["started"])
                print(json.dumps(result), flush=True)
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 0.0


def _run_baseline(kind: str, settings: Settings, source: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--source", source, "--events", str(n)],
        env=_child_env(settings),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    # Faust routes a child's stdout through its logger, so the JSON may carry a log prefix.
    for line in (out.stdout + out.stderr).splitlines():
        if '{"rate"' in line:
            return float(json.loads(line[line.index('{"rate"') :])["rate"])
    raise RuntimeError(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


# --- the pipeline ------------------------------------------------------------------------------


WARM_UP = 0.2  # share of decisions before the pipeline clock starts


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its waited-for children (a forked checkpoint writer)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


#: Per pipeline run, CPU microseconds per decision in the timed window: (workers, Redis).
CPU: list[tuple[float, float]] = []


def _pipeline(settings: Settings, n: int, workers: int, log_dir: Path) -> float:
    client = redis.Redis.from_url(settings.redis_url)
    stats_key = f"{settings.app_id}:stats"
    procs = []
    for index in range(workers):
        mine = settings.replace(
            web_port=settings.web_port + index, data_dir=settings.data_dir / f"w{index}"
        )
        procs.append(start_worker(mine, log_dir / f"{settings.app_id}-{index}.log"))
    try:
        started = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = int(client.hget(stats_key, "decisions") or 0)
            # Steady state only: the first decisions come in a burst, released together once
            # the empty signups/labels partitions count as idle (RG_SOURCE_IDLE_S).
            if started is None and done >= n * WARM_UP:
                started, first = time.perf_counter(), done
                cpu0 = sum(_cpu_s(p.pid) for p in procs), _redis_cpu_s(client)
            if done >= n:
                assert started is not None
                rate = (done - first) / (time.perf_counter() - started)
                cpu1 = sum(_cpu_s(p.pid) for p in procs), _redis_cpu_s(client)
                per = [(b - a) * 1e6 / (done - first) for a, b in zip(cpu0, cpu1, strict=True)]
                CPU.append((per[0], per[1]))
                return rate
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited; see {log_dir}")
            time.sleep(0.05)
        raise RuntimeError("pipeline did not finish in 900 s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--child", choices=("relay", "bare"))
    parser.add_argument("--source")
    parser.add_argument(
        "--worker-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a worker setting for the pipeline rows, e.g. log_features=false (repeatable)",
    )
    parser.add_argument("--pipeline-only", action="store_true", help="skip the other rows")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=(
            "pipeline rows also with this worker setting, on the same stack and pre-loaded "
            "topic, alternating with the plain rows (repeatable: all of them form one variant)"
        ),
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="pipeline runs per row (alternating with --compare)"
    )
    args = parser.parse_args()
    overrides = Settings.from_env(
        {env_name(k): v for k, _, v in (item.partition("=") for item in args.worker_setting)}
    )
    changed = {
        k.partition("=")[0]: getattr(overrides, k.partition("=")[0]) for k in args.worker_setting
    }
    compared = Settings.from_env(
        {env_name(k): v for k, _, v in (item.partition("=") for item in args.compare)}
    )
    variant = {k.partition("=")[0]: getattr(compared, k.partition("=")[0]) for k in args.compare}

    if args.child:
        settings = Settings.from_env()
        if args.child == "relay":
            rate = asyncio.run(_raw_relay(settings, args.source, args.events))
            print(json.dumps({"rate": rate}), flush=True)
        else:
            _bare_faust(settings, args.source, args.events)
        return

    world = simulate_world(WorldConfig(seed=11, target_transactions=args.events))
    events = [e for e in event_stream(world) if e[0] == "transactions"][: args.events]
    n = len(events)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(workdir=Path(tmp) / "stack") as stack:
        base = stack.settings(
            Settings(partitions=args.partitions, data_dir=Path(tmp) / "data", log_level="warning")
        )
        loaded = base.replace(app_id="bench-load", topic_prefix="bench.")
        asyncio.run(ensure_topics(loaded))
        t0 = time.perf_counter()
        asyncio.run(produce_events(loaded, events))
        produce_rate = n / (time.perf_counter() - t0)
        source = loaded.topic("transactions")
        rows.append(("produce (simulator -> broker)", produce_rate))
        if not args.pipeline_only:
            relay = _run_baseline("relay", loaded, source, n)
            rows.append(("raw aiokafka relay (consume -> produce)", relay))
            bare = _run_baseline("bare", loaded, source, n)
            rows.append(("bare Faust agent (take_events, no work)", bare))
        # Each pipeline run reads the same pre-loaded topic under its own consumer group and
        # Redis prefix: a fresh app id (topic prefix stays, so the input is shared).
        variants = [("", changed)]
        if variant:
            label = ", ".join(f"{k}={v}" for k, v in variant.items())
            variants.append((f" [{label}]", {**changed, **variant}))
        for workers in sorted({1, args.partitions}):
            for round_ in range(args.rounds):
                for i, (label, values) in enumerate(variants):
                    app_id = f"bench-pipeline-{workers}-r{round_}-v{i}"
                    run = loaded.replace(app_id=app_id, **values)
                    rate = _pipeline(run, n, workers, Path(tmp))
                    name = f"pipeline, {workers} worker process(es) (to Redis){label}"
                    if args.rounds > 1:
                        name += f" run {round_ + 1}"
                    worker_us, redis_us = CPU[-1]
                    print(
                        f"{name}: {rate:,.0f}/s; CPU per decision: workers {worker_us:.0f} us, "
                        f"Redis {redis_us:.0f} us",
                        flush=True,
                    )
                    rows.append((name, rate))
    if changed:
        print(f"worker settings: {changed}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.pipeline_only:
            _print(rows, n, args.partitions, bare=None)
            return
        paths = write_world(world, Path(tmp) / "world")
        summary = replay(
            transactions=paths["transactions"],
            signups=paths["signups"],
            labels=paths["labels"],
            out_dir=Path(tmp) / "out",
            progress=None,
        )
        rows.append(("replay (files, all events incl. signups/labels)", summary.events_per_s))

    _print(rows, n, args.partitions, bare=dict(rows)["bare Faust agent (take_events, no work)"])


def _print(rows: list[tuple[str, float]], n: int, partitions: int, bare: float | None) -> None:
    print(f"\n{n:,} transactions, {partitions} partitions, {os.cpu_count()} cores\n")
    width = max(52, *(len(name) for name, _ in rows))
    print(f"| {'path':<{width}} | {'events/s':>10} | {'vs bare Faust':>13} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 15}|")
    for name, rate in rows:
        ratio = f"{rate / bare:>12.0%}" if bare else f"{'':>12}"
        print(f"| {name:<{width}} | {rate:>10,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
