"""Faust's Kafka transport with one knob Faust does not expose: the consumer's fetch wait.

Faust builds its aiokafka consumer with `fetch_max_wait_ms=1500` fixed. A Kafka broker
answers a fetch as soon as there is data (the wait only bounds an empty long poll), but
Tansu waits the whole time out on a partition with nothing new, so with Tansu every hop
through the broker (input, entity requests, entity results) could cost up to 1.5 s of
decision latency (measured: benchmarks/README.md, "Latency"). `RG_CONSUMER_FETCH_WAIT_MS`
sets it; `RebateGuardApp` uses this transport for `kafka://` brokers.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import aiokafka
import faust
from faust.transport import by_url
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts, to build its fetcher (aiokafka 0.14); the
        # transport test checks that the started fetcher really has it.
        app = self.app
        assert isinstance(app, RebateGuardApp)
        consumer._fetch_max_wait_ms = app.consumer_fetch_wait_ms
        return consumer


class FetchWaitConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = FetchWaitConsumer


class RebateGuardApp(faust.App):
    """A Faust app whose Kafka consumer fetches with `consumer_fetch_wait_ms`."""

    def __init__(self, *args: Any, consumer_fetch_wait_ms: int, **kwargs: Any) -> None:
        self.consumer_fetch_wait_ms = consumer_fetch_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        url = self.conf.broker_consumer[0]
        if by_url(url) is faust_aiokafka.Transport:
            return FetchWaitTransport(self.conf.broker_consumer, self)
        return super()._new_transport()  # memory:// in the broker-free tests


class QuietWorker(faust.Worker):
    """`faust.Worker` without its terminal spinner. At a level of WARNING or above the
    spinner sets the root logger to DEBUG so that it turns on every record: every debug
    call in aiokafka, mode and faust then builds a record that no handler prints (2.5% of
    a worker's CPU at 300 `POST /score` requests/s). The root logger keeps the level asked."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
