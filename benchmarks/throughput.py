"""End-to-end throughput, next to its two baselines, on one local broker in one run.

    .venv/bin/python benchmarks/throughput.py [--events 200000] [--partitions 2]

Rows (all consume the same pre-loaded topic of simulated transactions):
- raw relay: a plain aiokafka consumer producing one record per event (no Faust, no work);
- bare Faust agent: `take_events(1000, 0.05)`, no work, no output (Faust's own ceiling);
- pipeline, 1 worker: `rebate-guard worker`, decisions stored in Redis per second, timed from
  the 20% mark to the last (steady state, past the start-up burst);
- pipeline, N workers: as many worker processes as partitions (split by the consumer group);
  each pipeline run has its own topics (the input produced again, untimed);
- replay: the same scoring code offline, from Parquet files.
Rates are events per second of wall time; ratios are against the bare Faust agent, in rate
and in CPU per event (the consuming processes' CPU, every thread: on a shared box the steadier
measure of what one core could do). Each pipeline run also prints, per decision, the CPU of
the workers, Redis and the broker and what Redis did (commands, bytes, calls per command);
`--traffic` adds the messages and bytes per transaction on each topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from rebate_guard.tools.stack import LocalStack, free_port  # noqa: E402
from rebate_guard.tools.topics import ensure_topics, pipeline_topics  # noqa: E402


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}


# --- the baselines, each run in its own process (like a worker) ------------------------------


async def _raw_relay(settings: Settings, source: str, n: int) -> dict[str, float]:
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
    seen, started, cpu = 0, None, 0.0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            futures = []
            for tp, messages in batch.items():
                if started is None and messages:
                    started, cpu = time.perf_counter(), time.process_time()
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
    rate = seen / (time.perf_counter() - started)
    return {"rate": rate, "cpu_us": (time.process_time() - cpu) * 1e6 / seen}


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
    state = {"seen": 0, "started": 0.0, "cpu": 0.0}

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(1000, within=0.05):
            if not state["seen"]:
                state["started"], state["cpu"] = time.perf_counter(), time.process_time()
            state["seen"] += len(events)
            if state["seen"] >= n:
                result["rate"] = state["seen"] / (time.perf_counter() - state["started"])
                # CPU of every thread (aiokafka's consumer runs in its own): what a core
                # would have to give per event, whatever else ran on the box.
                result["cpu_us"] = (time.process_time() - state["cpu"]) * 1e6 / state["seen"]
                print(json.dumps(result), flush=True)
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 0.0


def _run_baseline(kind: str, settings: Settings, source: str, n: int) -> dict[str, float]:
    """{"rate": events/s, "cpu_us": the process's CPU microseconds per event}."""
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
            found: dict[str, float] = json.loads(line[line.index('{"rate"') :])
            return found
    raise RuntimeError(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


# --- the pipeline ------------------------------------------------------------------------------


WARM_UP = 0.2  # share of decisions before the pipeline clock starts


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its waited-for children (a forked checkpoint writer)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread and of its other threads together."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if task.name == str(pid):
            main += cpu
        else:
            other += cpu
    return main, other


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


#: What Redis counts that a run's cost per transaction is read from (INFO, all clients).
REDIS_TOTALS = ("total_commands_processed", "total_net_input_bytes", "total_net_output_bytes")


def _redis_totals(client: redis.Redis) -> dict[str, float]:
    info = client.info("stats")
    totals = {k: float(info[k]) for k in REDIS_TOTALS}
    for name, stat in client.info("commandstats").items():
        totals[name.removeprefix("cmdstat_")] = float(stat["calls"])
    return totals


@dataclass
class PipelineRun:
    """One pipeline run: its rate; the CPU microseconds per transaction of the workers,
    Redis and the broker over the whole run, from the produce on (`run_cpu_us`: the input's
    intake is mostly done before the timed window's first decision); per decision in the
    timed window, the CPU (`cpu_us`, with the first worker's main thread and its others)
    and what Redis did (`REDIS_TOTALS` and calls per command, Lua scripts' own included)."""

    rate: float
    run_cpu_us: dict[str, float]
    cpu_us: dict[str, float]
    redis: dict[str, float]


#: py-spy, where the issue #20 sessions keep it (`--py-spy`).
PY_SPY = os.environ.get("PY_SPY", "/tmp/spyenv/bin/py-spy")


def _wait_idle(cpu_s: Callable[[], float], *, quiet_s: float = 0.1) -> None:
    """Until the workers have started and have nothing to do: their CPU grew by less than
    `quiet_s` in the last second (at least 3 s after the start, at most 120 s)."""
    started, last = time.monotonic(), cpu_s()
    while time.monotonic() - started < 120:
        time.sleep(1.0)
        now = cpu_s()
        if now - last < quiet_s and time.monotonic() - started >= 3:
            return
        last = now


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid`'s threads on CPU (raw stacks with counts, into `out`) until
    sent SIGINT."""
    where = ["--pid", str(pid), "--output", str(out)]
    how = ["--format", "raw", "--rate", "200", "--threads", "--nonblocking"]
    return subprocess.Popen(
        [PY_SPY, "record", *where, *how], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _pipeline(
    settings: Settings,
    n: int,
    workers: int,
    log_dir: Path,
    *,
    stack_pids: dict[str, int],
    produce: Callable[[], object],
    profile: Path | None = None,
    spy: Path | None = None,
) -> PipelineRun:
    """Start the workers, wait until they are idle, `produce` the input, and time the
    decisions. `profile`: run the (one) worker under cProfile, its main thread's CPU, stats
    written there (`benchmarks._worker.PROFILED`); `spy`: sample the first worker with
    py-spy from the produce to the last decision (`_py_spy`)."""
    client = redis.Redis.from_url(settings.redis_url)
    stats_key = f"{settings.app_id}:stats"
    procs = []
    for index in range(workers):
        # A free port each: the box may run other workers on the default one.
        mine = settings.replace(web_port=free_port(), data_dir=settings.data_dir / f"w{index}")
        log = log_dir / f"{settings.app_id}-{index}.log"
        procs.append(start_worker(mine, log, profile=profile))

    def cpu() -> dict[str, float]:
        main, other = _thread_cpu_s(procs[0].pid)
        return {
            "workers": sum(_cpu_s(p.pid) for p in procs),
            "redis": _redis_cpu_s(client),
            "broker": _cpu_s(stack_pids["broker"]),
            # The event loop (agents, shards, Redis and producer clients) and the rest
            # (Faust's consumer thread) of the first worker.
            "its main thread": main,
            "its other threads": other,
        }

    def per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
        return {k: (after[k] - v) * 1e6 / count for k, v in before.items()}

    sampler = None
    try:
        _wait_idle(lambda: sum(_cpu_s(p.pid) for p in procs))
        ready = cpu()
        if spy is not None:
            sampler = _py_spy(procs[0].pid, spy)
        produce()
        started = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = int(client.hget(stats_key, "decisions") or 0)
            # Steady state only: the first decisions come in a burst, released together once
            # the empty signups/labels partitions count as idle (RG_SOURCE_IDLE_S).
            if started is None and done >= n * WARM_UP:
                started, first = time.perf_counter(), done
                cpu0, redis0 = cpu(), _redis_totals(client)
            if done >= n:
                assert started is not None
                rate = (done - first) / (time.perf_counter() - started)
                cpu1, redis1 = cpu(), _redis_totals(client)
                decided = done - first
                redis_per = {k: (v - redis0.get(k, 0.0)) / decided for k, v in redis1.items()}
                return PipelineRun(rate, per(ready, cpu1, n), per(cpu0, cpu1, decided), redis_per)
            if any(p.poll() is not None for p in procs):
                logs = sorted(log_dir.glob(f"{settings.app_id}-*.log"))
                tail = "\n".join(f.read_text(errors="replace")[-3000:] for f in logs)
                raise RuntimeError(f"a worker exited:\n{tail}")
            time.sleep(0.05)
        raise RuntimeError("pipeline did not finish in 900 s")
    finally:
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            sampler.wait(timeout=120)
        for p in procs:
            p.terminate()
        for p in procs:
            try:  # a worker checkpoints every shard as it stops: slow on a loaded box
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        client.close()


async def _topic_traffic(settings: Settings) -> dict[str, tuple[int, int]]:
    """Per topic of a finished run (its own prefix): (messages, bytes of keys and values),
    read back from the broker until it has nothing more."""
    topics = pipeline_topics(settings)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    traffic = dict.fromkeys(topics, (0, 0))
    try:
        quiet = 0
        while quiet < 10:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            quiet = 0 if batch else quiet + 1
            for tp, messages in batch.items():
                count, size = traffic[tp.topic]
                size += sum(len(m.key or b"") + len(m.value or b"") for m in messages)
                traffic[tp.topic] = (count + len(messages), size)
    finally:
        await consumer.stop()
    return {t.removeprefix(settings.topic_prefix): v for t, v in traffic.items() if v[0]}


def _print_costs(name: str, run: PipelineRun, n: int, traffic: dict[str, tuple[int, int]]) -> None:
    whole = ", ".join(f"{k} {v:.0f}" for k, v in run.run_cpu_us.items())
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in run.cpu_us.items())
    print(f"{name}: {run.rate:,.0f}/s; CPU us per transaction, whole run: {whole}", flush=True)
    print(f"  CPU us per decision in the timed window: {cpu}")
    shown = {k: v for k, v in run.redis.items() if k in REDIS_TOTALS or v >= 0.0005}
    print("  Redis per decision: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    for topic, (count, size) in traffic.items():
        print(f"  {topic}: {count / n:.3f} messages, {size / n:,.0f} bytes per transaction")


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
        "--profile",
        type=Path,
        metavar="FILE",
        help="first, one more 1-worker run under cProfile (main thread CPU), stats to FILE",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="sample the first 1-worker run with py-spy (raw stacks) into FILE ($PY_SPY)",
    )
    parser.add_argument(
        "--traffic",
        action="store_true",
        help="after each pipeline run, read its topics back: messages and bytes per transaction",
    )
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
            print(json.dumps(asyncio.run(_raw_relay(settings, args.source, args.events))))
        else:
            _bare_faust(settings, args.source, args.events)
        return

    world = simulate_world(WorldConfig(seed=11, target_transactions=args.events))
    events = [e for e in event_stream(world) if e[0] == "transactions"][: args.events]
    n = len(events)
    rows: list[Row] = []
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
        rows.append(("produce (simulator -> broker)", produce_rate, None))
        if not args.pipeline_only:
            relay = _run_baseline("relay", loaded, source, n)
            rows.append(("raw aiokafka relay (consume -> produce)", relay["rate"], relay["cpu_us"]))
            bare = _run_baseline("bare", loaded, source, n)
            rows.append((BARE, bare["rate"], bare["cpu_us"]))
            for name, rate, cpu_us in rows[-2:]:
                print(f"{name}: {rate:,.0f}/s, CPU {cpu_us:.0f} us per event", flush=True)
        if args.profile is not None:  # a run of its own: cProfile slows the worker down
            run = loaded.replace(app_id="bench-profiled", topic_prefix="bench.profiled.", **changed)
            asyncio.run(ensure_topics(run))
            result = _pipeline(
                run,
                n,
                1,
                Path(tmp),
                stack_pids=stack.pids(),
                produce=partial(asyncio.run, produce_events(run, events)),
                profile=args.profile,
            )
            _print_costs("pipeline, 1 worker under cProfile", result, n, {})
        variants = [("", changed)]
        if variant:
            label = ", ".join(f"{k}={v}" for k, v in variant.items())
            variants.append((f" [{label}]", {**changed, **variant}))
        for workers in sorted({1, args.partitions}):
            for round_ in range(args.rounds):
                for i, (label, values) in enumerate(variants):
                    # Each run has its own topics (input produced again, untimed), consumer
                    # group and Redis prefix: with shared internal topics a later run would
                    # read an earlier run's entity requests and results as its own.
                    app_id = f"bench-pipeline-{workers}-r{round_}-v{i}"
                    run = loaded.replace(app_id=app_id, topic_prefix=f"bench.{app_id}.", **values)
                    asyncio.run(ensure_topics(run))
                    spy = args.py_spy if workers == 1 and round_ == i == 0 else None
                    result = _pipeline(
                        run,
                        n,
                        workers,
                        Path(tmp),
                        stack_pids=stack.pids(),
                        produce=partial(asyncio.run, produce_events(run, events)),
                        spy=spy,
                    )
                    name = f"pipeline, {workers} worker process(es) (to Redis){label}"
                    if args.rounds > 1:
                        name += f" run {round_ + 1}"
                    traffic = asyncio.run(_topic_traffic(run)) if args.traffic else {}
                    _print_costs(name, result, n, traffic)
                    rows.append((name, result.rate, result.run_cpu_us["workers"]))
    if changed:
        print(f"worker settings: {changed}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.pipeline_only:
            _print(rows, n, args.partitions)
            return
        paths = write_world(world, Path(tmp) / "world")
        summary = replay(
            transactions=paths["transactions"],
            signups=paths["signups"],
            labels=paths["labels"],
            out_dir=Path(tmp) / "out",
            progress=None,
        )
        rows.append(("replay (files, all events incl. signups/labels)", summary.events_per_s, None))

    _print(rows, n, args.partitions)


BARE = "bare Faust agent (take_events, no work)"
#: (path, events/s, CPU microseconds per event of the consuming processes, when measured).
Row = tuple[str, float, float | None]


def _print(rows: list[Row], n: int, partitions: int) -> None:
    """The table; the ratios are against the bare Faust agent's row, if it ran: events/s
    (wall, load-sensitive) and CPU per event (what one core could do, whatever the load)."""
    bare = next((r for r in rows if r[0] == BARE), None)
    print(f"\n{n:,} transactions, {partitions} partitions, {os.cpu_count()} cores\n")
    width = max(52, *(len(name) for name, _, _ in rows))
    print(f"| {'path':<{width}} | events/s | vs bare Faust | CPU us/event | bare Faust CPU/it |")
    print(f"|{'-' * (width + 2)}|---------:|--------------:|-------------:|------------------:|")
    for name, rate, cpu_us in rows:
        ratio = f"{rate / bare[1]:.0%}" if bare else ""
        cpu = f"{cpu_us:,.0f}" if cpu_us is not None else ""
        cpu_ratio = f"{bare[2] / cpu_us:.0%}" if bare and bare[2] and cpu_us else ""
        print(f"| {name:<{width}} | {rate:>8,.0f} | {ratio:>13} | {cpu:>12} | {cpu_ratio:>17} |")


if __name__ == "__main__":
    main()
