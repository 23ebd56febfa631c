"""Running real worker processes and reading topics back, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from rebate_guard.client import web_request
from rebate_guard.contract.records import Decision
from rebate_guard.settings import Settings
from rebate_guard.tools.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`rebate-guard worker` in a child process, logging to a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings.replace(web_port=free_port())
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(ROOT)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rebate_guard.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group, checkpoint writers included
        )
        log.close()
        return self

    def freeze(self) -> None:
        """SIGSTOP to the worker and its children (a checkpoint writer stops where it is)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def children(self) -> list[int]:
        """The worker's child processes (a forked checkpoint writer), from /proc."""
        assert self.proc is not None
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            if int(stat.rpartition(")")[2].split()[1]) == self.proc.pid:
                out.append(int(entry))
        return out

    def thaw(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill9(self) -> None:
        """SIGKILL to the worker and its children, as when the machine goes: a checkpoint
        writer it forked dies with it rather than finishing after the 'crash'."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"worker did not stop on SIGTERM; log:\n{self.log()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def running_worker(settings: Settings, log_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(settings, log_path).start()
    try:
        yield worker
    finally:
        if worker.alive():
            worker.stop()


def worker_stats(worker: WorkerProcess, timeout: float = 5) -> dict[str, Any]:
    """The worker's `/api/stats`, asked with its API token."""
    with urllib.request.urlopen(web_request(worker.settings, "/api/stats"), timeout=timeout) as r:
        return dict(json.loads(r.read()))


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, worker: WorkerProcess | None = None
) -> None:
    """Poll `condition`; fail at the deadline, or at once if `worker` has died."""
    deadline = time.monotonic() + timeout
    while not condition():
        log = worker.log() if worker is not None else ""
        if worker is not None and not worker.alive():
            raise AssertionError(f"the worker died while waiting for {what}\n{log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{log}")
        time.sleep(0.2)


def wait_for_decisions(
    settings: Settings, at_least: int, worker: WorkerProcess, timeout: float = 180
) -> None:
    """Until Redis counts `at_least` stored decisions (fails early if the worker dies)."""
    wait_for(
        lambda: redis_counters(settings).get("decisions", 0) >= at_least,
        timeout=timeout,
        what=f"{at_least} decisions",
        worker=worker,
    )


def stored_decisions(settings: Settings) -> dict[str, Decision]:
    """Every decision stored in Redis, by tx_id."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(f"{settings.app_id}:decision:*", count=5000))
        values = client.mget(keys) if keys else []
        return {Decision.loads(v).tx_id: Decision.loads(v) for v in values}
    finally:
        client.close()


def redis_counters(settings: Settings) -> dict[str, int]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hgetall(f"{settings.app_id}:stats")
        return {k.decode(): int(v) for k, v in raw.items()}
    finally:
        client.close()


def read_topic(
    settings: Settings, topic: str, expect: int, idle_s: float = 2.0, timeout: float = 60
) -> list[tuple[bytes | None, bytes]]:
    """Every message of `topic` from the start: at least `expect`, then until idle.

    Reads until quiet rather than to the end offset: the local broker's ListOffsets(latest)
    is wrong (see ../shared/README.md).
    """

    async def run() -> list[tuple[bytes | None, bytes]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[tuple[bytes | None, bytes]] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            quiet_since = loop.time()
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                got = [(m.key, m.value) for msgs in batch.values() for m in msgs]
                if got:
                    out.extend(got)
                    quiet_since = loop.time()
                elif len(out) >= expect and loop.time() - quiet_since >= idle_s:
                    break
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())
