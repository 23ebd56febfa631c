"""Output to Kafka in bulk: one produce request per partition per batch.

Faust's `Topic.send()` costs several loop turns per message; the worker instead builds
aiokafka batches per partition (the same partitioner as Kafka's default, so keys land where a
Java client would put them) and awaits their delivery before the input batch is acknowledged.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from rebate_guard.settings import Settings

Record = tuple[bytes | None, bytes]  # (key, value)


def key_partition(key: bytes, n_partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives `key`, as `KafkaSink`."""
    partitions = list(range(n_partitions))
    partition: int = _PARTITIONER(key, partitions, partitions)
    return partition


_PARTITIONER = DefaultPartitioner()


class Sink(Protocol):
    """Where the worker's records go. With a broker (`KafkaSink`) the internal topics'
    envelopes reach the shards through it; without one (`MemorySink`, the loopback) they
    come back to this process (`take_returned`), which then owns every partition."""

    #: No broker: internal envelopes come back through `take_returned`, input is never
    #: acknowledged to anyone, and every partition belongs to this process.
    loopback: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partition_count(self, topic: str) -> int | None:
        """The partitions `topic` has on the broker (None: no broker to ask)."""
        ...

    def take_returned(self, topic: str) -> list[tuple[int, bytes]]:
        """The envelopes sent to `topic` (`send_to_partitions`) that came back to this
        process instead of going to a broker, oldest first; each is returned once."""
        ...

    async def send_many(self, topic: str, records: Sequence[Record]) -> None: ...

    async def send_one(self, topic: str, key: bytes, value: bytes) -> None:
        """One record, from one of many callers at once (`POST /score` requests):
        `send_many` is for one caller at a time per partition."""
        ...

    async def send_to_partitions(self, topic: str, values: Sequence[tuple[int, bytes]]) -> None:
        """Unkeyed values to chosen partitions (the internal topics route by themselves)."""
        ...


class KafkaSink:
    loopback = False

    def __init__(self, settings: Settings) -> None:
        self.bootstrap = settings.kafka_bootstrap.split(",")
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaSink.start() has not been awaited")
        return self._producer

    async def start(self) -> None:
        # aiokafka binds to the running loop at construction, so build it here.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            # Batches are built here (`send_many`), so waiting for more records only adds
            # latency: 5 ms cost ~50 ms per decision over its hops (benchmarks/README.md).
            linger_ms=0,
            request_timeout_ms=30_000,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def partition_count(self, topic: str) -> int | None:
        return len(await self.producer.partitions_for(topic))

    def take_returned(self, topic: str) -> list[tuple[int, bytes]]:
        return []  # the broker delivers them

    async def send_many(self, topic: str, records: Sequence[Record]) -> None:
        if not records:
            return
        partitions = sorted(await self.producer.partitions_for(topic))
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for key, value in records:
            by_partition[self._partitioner(key, partitions, partitions)].append((key, value))
        await self._send(topic, by_partition)

    async def send_one(self, topic: str, key: bytes, value: bytes) -> None:
        # `send` queues into the producer's per-partition batches, which take concurrent
        # callers; `send_batch` (send_many) waits for the partition's pending batch with a
        # shrinking timeout and fails when many callers queue behind one another.
        partitions = sorted(await self.producer.partitions_for(topic))
        partition = self._partitioner(key, partitions, partitions)
        delivery = await self.producer.send(topic, value, key=key, partition=partition)
        await delivery

    async def send_to_partitions(self, topic: str, values: Sequence[tuple[int, bytes]]) -> None:
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for partition, value in values:
            by_partition[partition].append((None, value))
        await self._send(topic, by_partition)

    async def _send(self, topic: str, by_partition: dict[int, list[Record]]) -> None:
        deliveries = []
        for partition, items in by_partition.items():
            batch = self.producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    deliveries.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            deliveries.append(await self.producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*deliveries)


@dataclass
class MemorySink:
    """Collects what would be produced, for broker-free unit tests and Faust's test
    contexts. `loopback` (the default): the internal topics' envelopes come back to this
    process (`take_returned`), so the whole protocol runs in one process; else they are
    collected in `to_partitions`, as a broker would get them."""

    loopback: bool = True
    sent: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    to_partitions: dict[str, list[tuple[int, bytes]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _returned: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partition_count(self, topic: str) -> int | None:
        return None

    def take_returned(self, topic: str) -> list[tuple[int, bytes]]:
        return self._returned.pop(topic, [])

    async def send_many(self, topic: str, records: Sequence[Record]) -> None:
        self.sent[topic].extend(records)

    async def send_one(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent[topic].append((key, value))

    async def send_to_partitions(self, topic: str, values: Sequence[tuple[int, bytes]]) -> None:
        if self.loopback:
            self._returned.setdefault(topic, []).extend(values)
        else:
            self.to_partitions[topic].extend(values)
