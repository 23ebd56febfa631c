"""The embedded local stack and topic creation, against the real Tansu broker and Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.backoff import NoBackoff
from redis.retry import Retry

from rebate_guard.contract.records import (
    INPUT_TOPICS,
    INTERNAL_TOPICS,
    OUTPUT_TOPICS,
    PLATFORM_TOPICS,
    TRANSACTIONS,
)
from rebate_guard.settings import Settings
from rebate_guard.tools.stack import LocalStack, StackError
from rebate_guard.tools.topics import (
    contract_topics,
    delete_topics,
    ensure_topics,
    list_topics,
    topic_partitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes only once reaped.
    return True


def _redis(url: str) -> redis.Redis:
    # No client retries: redis-py >= 6 retries 3x with backoff, ~4 s per failed call.
    return redis.Redis.from_url(url, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def test_stack_runs_and_redis_set_get(local_stack: LocalStack, stack_settings: Settings) -> None:
    assert local_stack.is_running()
    assert stack_settings.kafka_bootstrap == f"127.0.0.1:{local_stack.broker_port}"
    assert stack_settings.redis_url == f"redis://127.0.0.1:{local_stack.redis_port}/0"
    assert local_stack.broker_port != local_stack.redis_port

    client = _redis(stack_settings.redis_url)
    try:
        client.set(f"{stack_settings.app_id}:k", "v")
        assert client.get(f"{stack_settings.app_id}:k") == b"v"
    finally:
        client.close()


def test_ensure_topics_creates_partitions_and_is_idempotent(stack_settings: Settings) -> None:
    contract = [stack_settings.topic(n) for n in (*INPUT_TOPICS, *OUTPUT_TOPICS)]
    assert contract_topics(stack_settings) == contract
    assert {stack_settings.topic(n) for n in PLATFORM_TOPICS} <= set(contract)
    expected = contract + [stack_settings.topic(n) for n in INTERNAL_TOPICS]

    async def scenario() -> None:
        assert await topic_partitions(stack_settings, expected[0]) == 0  # does not create it
        await ensure_topics(stack_settings)
        for topic in expected:
            assert await topic_partitions(stack_settings, topic) == stack_settings.partitions
        # Again, even asking for more partitions: existing topics are left as they are.
        await ensure_topics(stack_settings, partitions=5)
        mine = {
            t: n
            for t, n in (await list_topics(stack_settings)).items()
            if t.startswith(stack_settings.topic_prefix)
        }
        assert mine == dict.fromkeys(expected, stack_settings.partitions)

        other = stack_settings.replace(topic_prefix=f"{stack_settings.topic_prefix}x.")
        await ensure_topics(other, partitions=3)
        assert await topic_partitions(other, other.topic(TRANSACTIONS)) == 3

        await delete_topics(other)
        assert await topic_partitions(other, other.topic(TRANSACTIONS)) == 0
        await delete_topics(other)  # deleting what is gone is fine

    asyncio.run(scenario())


def test_produce_then_consume_in_a_group(stack_settings: Settings) -> None:
    topic = stack_settings.topic(TRANSACTIONS)
    s = stack_settings

    async def scenario() -> tuple[bytes | None, bytes | None, float]:
        await ensure_topics(s)
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b'{"tx_id": "t1"}', key=b"u1")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.app_id,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.broker_heartbeat_interval_s * 1000),
            rebalance_timeout_ms=int(s.broker_rebalance_timeout_s * 1000),
        )
        t0 = time.monotonic()
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        return msg.key, msg.value, time.monotonic() - t0

    key, value, _elapsed = asyncio.run(scenario())
    assert key == b"u1"
    assert value == b'{"tx_id": "t1"}'


def test_own_stack_started_inside_a_loop_stops_without_leftovers(tmp_path: Path) -> None:
    stack = LocalStack(workdir=tmp_path / "stack")

    async def start_in_loop() -> None:  # as an async caller (or a test) would
        stack.start()

    asyncio.run(start_in_loop())
    try:
        pids = [stack.broker_pid, stack.redis_pid]
        assert all(pid is not None and _pid_alive(pid) for pid in pids)
        assert stack.start_seconds is not None and stack.start_seconds < 30
        base = Settings(data_dir=tmp_path)
        assert stack.settings(base).kafka_bootstrap == stack.bootstrap
        assert stack.broker_log.exists() and stack.redis_log.exists()
    finally:
        stack.stop()
    for pid in pids:
        assert pid is not None and not _pid_alive(pid), f"pid {pid} outlived stop()"
    assert not stack.is_running()
    stack.stop()  # idempotent
    with pytest.raises(StackError):
        stack.settings(Settings())


def test_context_manager_stops(tmp_path: Path) -> None:
    with LocalStack(workdir=tmp_path / "stack") as stack:
        pids = [stack.broker_pid, stack.redis_pid]
        assert stack.is_running()
    assert all(pid is not None and not _pid_alive(pid) for pid in pids)


def test_stop_redis_start_redis_on_the_same_port(
    local_stack: LocalStack, stack_settings: Settings
) -> None:
    port, pid = local_stack.redis_port, local_stack.redis_pid
    key = f"{stack_settings.app_id}:gone"
    try:
        client = _redis(stack_settings.redis_url)
        client.set(key, "1")
        local_stack.stop_redis()
        assert not local_stack.redis_running()
        assert pid is not None and not _pid_alive(pid)
        with pytest.raises(redis.ConnectionError):
            client.ping()

        # Port taken while Redis is down: a clear error that quotes Redis's log.
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(StackError, match=r"(?i)address already in use"):
                local_stack.start_redis()
        finally:
            squatter.close()

        local_stack.start_redis()
        assert local_stack.redis_port == port
        assert local_stack.redis_pid != pid
        client = _redis(stack_settings.redis_url)
        assert client.ping()
        assert client.get(key) is None  # a fresh, empty instance
        client.close()
    finally:
        if not local_stack.redis_running():
            local_stack.start_redis()


def test_a_taken_port_is_retried_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rebate_guard.tools.stack as stack_module

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()  # accepts connections but never answers: neither Kafka nor Redis
    taken = squatter.getsockname()[1]
    real_free_port = stack_module.free_port
    handed_out: list[int] = []

    def first_choice_taken(host: str = "127.0.0.1") -> int:
        # The first pick of each service (Redis starts first, then the broker) is taken.
        port = taken if len(handed_out) in (0, 2) else real_free_port(host)
        handed_out.append(port)
        return port

    monkeypatch.setattr(stack_module, "free_port", first_choice_taken)
    try:
        with LocalStack(workdir=tmp_path / "stack") as stack:
            assert taken not in (stack.broker_port, stack.redis_port)
            assert handed_out.count(taken) == 2
            assert stack.is_running()
    finally:
        squatter.close()


def test_worker_consumer_fetches_with_the_configured_wait(stack_settings: Settings) -> None:
    """Faust fixes the consumer's fetch wait at 1.5 s, which Tansu waits out on every quiet
    partition; the worker's consumer, started against the real broker, fetches with
    `RG_CONSUMER_FETCH_WAIT_MS` instead."""
    from streams.app import create_worker
    from streams.sink import MemorySink
    from streams.store import MemoryDecisionStore

    settings = stack_settings.replace(consumer_fetch_wait_ms=7)
    app = create_worker(settings, MemoryDecisionStore(), MemorySink()).app
    thread = app.consumer._thread  # type: ignore[attr-defined]

    async def started_fetch_wait() -> int:
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.start()
        try:
            return int(consumer._fetcher._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(started_fetch_wait()) == 7
