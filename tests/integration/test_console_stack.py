"""The console's review queue on the real stack: a `rebate-guard worker` process on the local
Tansu broker and Redis, a simulated world produced to the broker, a reviewer who logs in over
HTTP (cookie, CSRF token) and labels held payments; the labels go round through the `labels`
topic and the stream, and the ledger releases or voids the holds. No mocks."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from rebate_guard.client import web_request
from rebate_guard.contract.records import Label
from rebate_guard.settings import Settings
from rebate_guard.tools.producer import produce_events
from rebate_guard.tools.simulator import WorldConfig, event_stream, simulate_world
from rebate_guard.tools.topics import ensure_topics
from streams.console.store import RedisConsoleStore
from tests.console_world import POLICY, Session, write_users
from tests.integration.helpers import (
    WorkerProcess,
    read_topic,
    redis_counters,
    running_worker,
    wait_for,
)
from tests.web import HttpServer

pytestmark = pytest.mark.integration

T = TypeVar("T")
#: Generous for a loaded 2-core box (the broker, Redis, the worker and the test share it).
SLOW = 90.0


def _console(settings: Settings, use: Callable[[RedisConsoleStore], Coroutine[Any, Any, T]]) -> T:
    """`use(store)` on the worker's console store in Redis, with a client of its own."""

    async def run() -> T:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            store = RedisConsoleStore(client, settings.app_id, ttl_s=3600, history_keep=0)
            return await use(store)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _queue(settings: Settings) -> list[tuple[str, int]]:
    """The review queue's (tx_id, cents held), in its order."""
    queue = _console(settings, lambda store: store.review_queue(10_000))
    return [(tx_id, cents) for tx_id, cents, _ in queue]


def _rebate(worker: WorkerProcess, tx_id: str) -> dict[str, Any]:
    """`GET /decisions/{tx_id}` with the API token: the decision and its balances now."""
    with urllib.request.urlopen(
        web_request(worker.settings, f"/decisions/{tx_id}"), timeout=10
    ) as r:
        return dict(json.loads(r.read()))


def _host(settings: Settings) -> str:
    return "127.0.0.1" if settings.web_host in ("", "0.0.0.0") else settings.web_host


def _settle(settings: Settings, worker: WorkerProcess, payments: int) -> list[tuple[str, int]]:
    """Until every transaction is decided and the review queue has stood still a while (the
    world's own labels and hold timeouts taken in); the queue then."""
    wait_for(
        lambda: redis_counters(settings).get("decisions", 0) >= payments,
        timeout=SLOW,
        what=f"{payments} decisions",
        worker=worker,
    )
    last: list[tuple[str, int]] = []
    still_since = time.monotonic()

    def still() -> bool:
        nonlocal last, still_since
        now = _queue(settings)
        if now != last:
            last, still_since = now, time.monotonic()
        return bool(now) and time.monotonic() - still_since >= 3.0

    wait_for(still, timeout=SLOW, what="a review queue that stands still", worker=worker)
    return last


def test_a_reviewers_labels_go_round_the_stack_and_release_or_void_the_holds(
    stack_settings: Settings, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)  # holds what it doubts, blocks nothing
    settings = stack_settings.replace(policy_file=str(policy), source_idle_s=2.0)
    write_users(settings)  # vera a viewer, rita a reviewer
    world = simulate_world(
        WorldConfig(seed=5, n_users=200, n_merchants=20, days=8, target_transactions=1000)
    )
    events = list(event_stream(world))
    payments = sum(1 for topic, _, _ in events if topic == "transactions")
    world_labels = sum(1 for topic, _, _ in events if topic == "labels")
    asyncio.run(ensure_topics(settings))
    asyncio.run(produce_events(settings, events))

    with running_worker(settings, tmp_path / "worker.log") as worker:
        queue = _settle(settings, worker, payments)
        assert len(queue) >= 2, "the test policy holds what it doubts"
        (legit_tx, legit_cents), (fraud_tx, fraud_cents) = queue[0], queue[1]
        assert legit_cents == max(cents for _, cents in queue)
        before = _rebate(worker, legit_tx)
        assert before["decision"]["action"] == "hold"
        assert before["rebate"]["held_cents"] == legit_cents > 0

        # A viewer may look but not label; the reviewer labels over HTTP.
        web = HttpServer(_host(worker.settings), worker.settings.web_port)
        vera = Session(web, "vera")
        assert vera.post(f"/console/review/{legit_tx}", do="legit")[0] == 403
        rita = Session(web, "rita")
        status, page = rita.get("/console/review")
        assert status == 200 and legit_tx in page
        status, where = rita.post(f"/console/review/{legit_tx}", do="legit")
        assert status == 303 and where.startswith("/console/review?msg="), (status, where)
        status, where = rita.post(f"/console/review/{fraud_tx}", do="fraud")
        assert status == 303 and where.startswith("/console/review?msg="), (status, where)

        # Both labels are on the topic, from review, by rita, keyed by tx_id as the contract
        # says. (The world's own labels are there too, some of them from its simulated
        # reviews: source `review` without a reviewer.)
        on_topic = read_topic(settings, settings.topic("labels"), expect=world_labels + 2)
        console = [(k, Label.loads(v)) for k, v in on_topic if Label.loads(v).reviewer]
        assert sorted((k, lb.tx_id, lb.label, lb.source, lb.reviewer) for k, lb in console) == [
            (t.encode(), t, verdict, "review", "rita")
            for t, verdict in sorted([(legit_tx, "legit"), (fraud_tx, "fraud")])
        ]

        # The worker takes them in: the ledger releases one hold and voids the other, and
        # both leave the review queue.
        def resolved() -> bool:
            queued = dict(_queue(settings))
            return legit_tx not in queued and fraud_tx not in queued

        wait_for(resolved, timeout=SLOW, what="both labelled holds out of the queue", worker=worker)
        wait_for(
            lambda: _rebate(worker, fraud_tx)["rebate"]["held_cents"] == 0,
            timeout=SLOW,
            what="the fraud hold voided",
            worker=worker,
        )
        released = _rebate(worker, legit_tx)["rebate"]
        assert released["held_cents"] == 0
        assert released["granted_cents"] == released["requested_cents"] == legit_cents
        assert released["voided_cents"] == 0
        assert released["last_adjustment"] is not None
        voided = _rebate(worker, fraud_tx)["rebate"]
        assert voided["granted_cents"] == 0 and voided["held_cents"] == 0
        assert voided["voided_cents"] == voided["requested_cents"] == fraud_cents

        # The console shows each label, and the audit log says who did what.
        labels = _console(settings, lambda store: store.labels([legit_tx, fraud_tx], []))["tx"]
        assert {t: (v["label"], v["source"], v["reviewer"]) for t, v in labels.items()} == {
            legit_tx: ("legit", "review", "rita"),
            fraud_tx: ("fraud", "review", "rita"),
        }
        audit = _console(settings, lambda store: store.audit_log(50))
        labelled = sorted(
            (e["who"], e["detail"]["label"], tuple(e["detail"]["tx_ids"]))
            for e in audit
            if e["action"] == "label"
        )
        assert labelled == sorted([("rita", "legit", (legit_tx,)), ("rita", "fraud", (fraud_tx,))])
        status, page = rita.get(f"/console/search?q={legit_tx}")
        assert status == 200 and "Labelled <strong>legit</strong> by review (rita)" in page
        assert worker.stop() == 0, worker.log()
