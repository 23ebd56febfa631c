"""Create the contract topics (idempotently) and inspect their partitions.

Works against Apache Kafka and the local Tansu broker. Metadata is always read for *all*
topics rather than by name: a by-name metadata request lets the broker auto-create a missing
topic with its default partition count (Tansu does so, and Kafka with
``auto.create.topics.enable=true``), which would hide a missing topic behind a wrong one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from rebate_guard.contract.records import INPUT_TOPICS, INTERNAL_TOPICS, OUTPUT_TOPICS
from rebate_guard.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3


class TopicError(RuntimeError):
    """Topics could not be created, deleted or seen in metadata in time."""


def contract_topics(settings: Settings) -> list[str]:
    """Full names (with the configured prefix) of every contract topic (the platform's
    among them)."""
    return [settings.topic(name) for name in (*INPUT_TOPICS, *OUTPUT_TOPICS)]


def pipeline_topics(settings: Settings) -> list[str]:
    """The contract topics and the worker's internal ones (between its feature stages)."""
    return contract_topics(settings) + [settings.topic(name) for name in INTERNAL_TOPICS]


def _admin(settings: Settings, timeout_s: float) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
    )


async def _started_admin(settings: Settings, deadline: float) -> AIOKafkaAdminClient:
    """An admin client connected before `deadline` (retrying while the broker comes up)."""
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TopicError(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {last!r}"
            ) from last
        admin = _admin(settings, min(remaining, 10.0))
        try:
            async with asyncio.timeout(remaining):
                await admin.start()
            return admin
        except Exception as exc:
            last = exc
            await admin.close()
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Topic name -> partition count, for every topic that has no topic-level error."""
    counts: dict[str, int] = {}
    described: list[dict[str, Any]] = await admin.describe_topics(None)
    for topic in described:
        if topic.get("error_code", 0) != _NO_ERROR:
            continue
        counts[str(topic["topic"])] = len(topic.get("partitions") or [])
    return counts


def _failures(pairs: Iterable[tuple[Any, ...]], ok: frozenset[int]) -> tuple[list[str], bool]:
    """Describe every (topic, code, [message]) whose code is not in `ok`; and whether all of
    those are retriable (leader elections, controller moves, timeouts)."""
    failures: list[str] = []
    retriable = True
    for item in pairs:
        topic, code = str(item[0]), int(item[1])
        if code in ok:
            continue
        message = item[2] if len(item) > 2 else None
        error = for_code(code)
        retriable = retriable and bool(getattr(error, "retriable", False))
        failures.append(f"{topic}: {error.__name__} ({code}) {message or ''}".strip())
    return failures, retriable


async def create_topics(
    settings: Settings,
    topics: Sequence[str],
    partitions: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Create `topics` (full names) unless they exist, then wait until metadata shows them.

    Retriable broker errors are retried until the deadline; others raise `TopicError` at once
    (e.g. a replication factor larger than the cluster).
    """
    count = partitions or settings.partitions
    if count < 1:
        raise TopicError(f"partitions must be at least 1, got {count}")
    deadline = time.monotonic() + timeout_s
    where = settings.kafka_bootstrap
    admin = await _started_admin(settings, deadline)
    try:
        while True:
            existing = await _partition_counts(admin)
            missing = [t for t in topics if t not in existing]
            if not missing:
                break
            response = await admin.create_topics(
                [NewTopic(t, count, settings.replication_factor) for t in missing],
                timeout_ms=max(1000, int((deadline - time.monotonic()) * 1000)),
            )
            failures, retriable = _failures(
                response.topic_errors, frozenset({_NO_ERROR, _TOPIC_ALREADY_EXISTS})
            )
            for item in response.topic_errors:
                if item[1] == _NO_ERROR:
                    log.info("created topic %s (%d partitions)", item[0], count)
            if not failures:
                break
            if not retriable or time.monotonic() >= deadline:
                raise TopicError(f"creating topics on {where} failed: " + "; ".join(failures))
            log.warning("creating topics on %s: %s; retrying", where, "; ".join(failures))
            await asyncio.sleep(0.5)
        seen = await _wait_for_topics(admin, topics, deadline, where)
    finally:
        await admin.close()
    for topic in topics:
        if seen[topic] != count:
            log.warning(
                "topic %s exists with %d partitions, not %d; keeping it as it is",
                topic,
                seen[topic],
                count,
            )


async def _wait_for_topics(
    admin: AIOKafkaAdminClient, topics: Sequence[str], deadline: float, where: str
) -> dict[str, int]:
    while True:
        counts = await _partition_counts(admin)
        absent = [t for t in topics if counts.get(t, 0) < 1]
        if not absent:
            return {t: counts[t] for t in topics}
        if time.monotonic() >= deadline:
            raise TopicError(f"topics not visible in metadata of {where} in time: {absent}")
        await asyncio.sleep(0.1)


async def ensure_topics(
    settings: Settings,
    partitions: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Create every contract and internal topic (prefixed, `partitions or
    settings.partitions` partitions, `settings.replication_factor` replicas) unless it
    exists; wait until all are in metadata.

    Existing topics are left alone (a differing partition count is logged, not changed; the
    worker refuses to start on one, see `streams.app`).
    """
    await create_topics(settings, pipeline_topics(settings), partitions, timeout_s)


async def topic_partitions(
    settings: Settings, topic: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> int:
    """Partition count of `topic` (full name); 0 if it does not exist. Never creates it."""
    admin = await _started_admin(settings, time.monotonic() + timeout_s)
    try:
        counts = await _partition_counts(admin)
    finally:
        await admin.close()
    return counts.get(topic, 0)


async def list_topics(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, int]:
    """Every topic on the cluster with its partition count."""
    admin = await _started_admin(settings, time.monotonic() + timeout_s)
    try:
        return await _partition_counts(admin)
    finally:
        await admin.close()


async def delete_topics(
    settings: Settings,
    topics: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Delete `topics` (full names; default: all of the pipeline's); missing ones are fine.

    Waits until metadata no longer lists them.
    """
    names = list(topics) if topics is not None else pipeline_topics(settings)
    deadline = time.monotonic() + timeout_s
    admin = await _started_admin(settings, deadline)
    try:
        present = [t for t in names if t in await _partition_counts(admin)]
        if not present:
            return
        response = await admin.delete_topics(
            present, timeout_ms=max(1000, int((deadline - time.monotonic()) * 1000))
        )
        failures, _ = _failures(response.topic_error_codes, frozenset({_NO_ERROR, _UNKNOWN_TOPIC}))
        if failures:
            raise TopicError(
                f"deleting topics on {settings.kafka_bootstrap} failed: " + "; ".join(failures)
            )
        while True:
            counts = await _partition_counts(admin)
            left = [t for t in present if t in counts]
            if not left:
                return
            if time.monotonic() >= deadline:
                raise TopicError(f"topics still in metadata after deletion: {left}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
