"""The worker on a real Tansu broker and Redis: decisions exactly once, dead letters, kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from rebate_guard.client import web_request
from rebate_guard.contract.records import Decision, RebateAdjustment
from rebate_guard.core.ledger import reconcile
from rebate_guard.core.policy import default_policy
from rebate_guard.settings import Settings
from rebate_guard.tools.producer import produce_events
from rebate_guard.tools.topics import ensure_topics
from streams.sink import KafkaSink
from tests.factories import DAY, HOUR, MINUTE, T0, label, signup, tx
from tests.integration.helpers import (
    WorkerProcess,
    read_topic,
    redis_counters,
    running_worker,
    stored_decisions,
    wait_for,
    wait_for_decisions,
    worker_stats,
)

pytestmark = pytest.mark.integration


def _traffic(n: int, users: int = 200) -> list[tuple[str, str, dict]]:
    events: list[tuple[str, str, dict]] = []
    for u in range(users):
        events.append(
            ("signups", f"u{u}", signup(f"u{u}", T0 - u * MINUTE, device_id=f"d{u % 150}"))
        )
    for i in range(n):
        user = f"u{i % users}"
        event = tx(
            f"t{i}",
            T0 + i * 1000,
            user_id=user,
            amount_cents=500 + (i * 37) % 9000,
            device_id=f"d{(i % users) % 150}",
            rebate_rate=0.06 + (i % 25) / 100,
        )
        events.append(("transactions", user, event))
    return events


def _produce_raw(settings: Settings, topic: str, values: list[bytes]) -> None:
    async def run() -> None:
        sink = KafkaSink(settings)
        await sink.start()
        try:
            await sink.send_many(settings.topic(topic), [(b"k", v) for v in values])
        finally:
            await sink.stop()

    asyncio.run(run())


def test_every_transaction_decided_exactly_once_in_topic_and_redis(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    asyncio.run(ensure_topics(settings))
    events = _traffic(3000)
    # The same transactions again (a producer retry storm): they must not be decided twice.
    events += [e for e in events if e[0] == "transactions"][:500]
    asyncio.run(produce_events(settings, events))
    bad = [b"{not json", json.dumps(tx("neg", amount_cents=-3)).encode(), b"[]"]
    _produce_raw(settings, "transactions", bad)

    with running_worker(settings, tmp_path / "worker.log") as worker:
        wait_for(
            lambda: (
                redis_counters(settings).get("decisions", 0) >= 3000
                and redis_counters(settings).get("dead_letters", 0) >= 3
            ),
            timeout=120,
            what="3000 decisions and 3 dead letters",
            worker=worker,
        )
        decisions = read_topic(settings, settings.topic("decisions"), expect=3000)
        letters = read_topic(settings, settings.topic("dead-letters"), expect=3)
        assert worker.stop() == 0, worker.log()

    counters = redis_counters(settings)
    assert counters["decisions"] == 3000
    stored = stored_decisions(settings)
    assert sorted(stored) == sorted(f"t{i}" for i in range(3000))
    assert counters["rebate_granted_cents"] == sum(d.rebate_granted_cents for d in stored.values())
    topic_ids = [Decision.loads(v).tx_id for _, v in decisions]
    assert set(topic_ids) == set(stored)
    # In a run without crashes, a repeated transaction is answered once per delivery, always
    # with the stored decision.
    for key, value in decisions:
        assert key is not None and Decision.loads(value) == stored[key.decode()]
    reasons = sorted(json.loads(v)["reason"] for _, v in letters)
    assert len(reasons) == 3
    assert any("not valid JSON" in r for r in reasons)
    assert any("must be positive" in r for r in reasons)
    assert any("expected a JSON object" in r for r in reasons)


def test_kill_9_mid_stream_loses_no_decision_and_grants_nothing_twice(
    stack_settings: Settings, tmp_path: Path
) -> None:
    # A policy that holds whatever it does not pay (no blocks): this traffic is bursty new
    # accounts, so the ledger gets holds to release and void across the kill.
    holding = tmp_path / "holding.json"
    holding.write_text(
        json.dumps({"version": "it-holds", "thresholds": {"scale_at": 0.5, "hold_at": 0.0}})
    )
    settings = stack_settings.replace(batch_max=200, policy_file=str(holding))
    asyncio.run(ensure_topics(settings))
    traffic = _traffic(19_000)
    # Refunds (every 10th payment, within the hour: the rebate is voided) and labels (every
    # 7th payment, a day later; fraud or legit), so the ledger has work across the kill.
    payments = [e for topic, _, e in traffic if topic == "transactions"]
    for i, p in enumerate(payments[::10]):
        refund = tx(
            f"r{i}",
            p["ts"] + 30 * MINUTE,
            user_id=p["user_id"],
            kind="refund",
            ref_tx_id=p["tx_id"],
            amount_cents=p["amount_cents"],
            device_id=p["device_id"],
        )
        traffic.append(("transactions", p["user_id"], refund))
    for i, p in enumerate(payments[::7]):
        verdict = "fraud" if i % 2 else "legit"
        traffic.append(("labels", p["user_id"], label(p["tx_id"], p["ts"] + DAY, label=verdict)))
    total = sum(1 for topic, _, _ in traffic if topic == "transactions")
    # The first worker sees only the first hours' traffic, so the kill lands before the
    # stream's end however fast it runs; the rest arrives while no worker is up.
    cut = T0 + 8_000 * 1000
    before = [event for event in traffic if event[2]["ts"] < cut]
    asyncio.run(produce_events(settings, before))
    log = tmp_path / "worker.log"

    with running_worker(settings, log) as first:
        wait_for_decisions(settings, 2000, first, timeout=120)
        first.kill9()
    at_kill = redis_counters(settings).get("decisions", 0)
    assert 2000 <= at_kill < total
    asyncio.run(produce_events(settings, [event for event in traffic if event[2]["ts"] >= cut]))

    with running_worker(settings, log) as second:
        wait_for_decisions(settings, total, second)
        decisions = read_topic(settings, settings.topic("decisions"), expect=total)
        assert second.stop() == 0, second.log()

    counters = redis_counters(settings)
    stored = stored_decisions(settings)
    assert len(stored) == total and counters["decisions"] == total
    # Granted money counted once per transaction, never for a redelivery.
    assert counters["rebate_granted_cents"] == sum(d.rebate_granted_cents for d in stored.values())
    seen: dict[str, int] = {}
    for key, value in decisions:
        assert key is not None
        decision = Decision.loads(value)
        assert decision == stored[key.decode()], "a re-produced decision differs from Redis"
        seen[decision.tx_id] = seen.get(decision.tx_id, 0) + 1
    assert len(seen) == total, f"{total - len(seen)} decisions missing from the topic"
    # The ledger: every standing adjustment adds up on its standing decision, each slot
    # once, and the topic carries exactly the standing ones.
    adjustments = _stored_adjustments(settings)
    books = reconcile(stored.values(), sorted(adjustments.values(), key=_made_order))
    # (Held, not granted, under that policy; clawbacks across crashes are the shard-protocol
    # test's, tests/unit/test_shards.py.)
    assert {a.kind for a in adjustments.values()} >= {"release", "void"}
    assert sum(1 for b in books.values() if b[2]) < sum(1 for b in books.values() if b[0])
    on_topic = read_topic(settings, settings.topic("rebate-adjustments"), expect=len(adjustments))
    for _, value in on_topic:
        adjustment = RebateAdjustment.loads(value)
        assert adjustment == adjustments[adjustment.adjustment_id]
    assert {RebateAdjustment.loads(v).adjustment_id for _, v in on_topic} == set(adjustments)


def _made_order(a: RebateAdjustment) -> tuple[int, int]:
    """A transaction's adjustments in the order they were made: by event time, and at one
    instant a hold's resolution before a clawback (a refund of a held payment makes both)."""
    return a.ts, 0 if a.adjustment_id.endswith(":hold") else 1


def _stored_adjustments(settings: Settings) -> dict[str, RebateAdjustment]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(f"{settings.app_id}:adjustment:*", count=5000))
        values = client.mget(keys) if keys else []
        return {a.adjustment_id: a for a in (RebateAdjustment.loads(v) for v in values)}
    finally:
        client.close()


def _policy_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    command = [sys.executable, "-m", "rebate_guard.cli", "policy", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def _live_policy_version(worker: WorkerProcess) -> str | None:
    try:
        return str(worker_stats(worker)["policy"]["version"])
    except OSError:
        return None


def test_a_pushed_policy_decides_the_next_transactions_without_a_restart(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    asyncio.run(ensure_topics(settings))
    first = _traffic(300, users=50)
    asyncio.run(produce_events(settings, first))
    shipped = default_policy().version  # what the worker starts with, Redis holding none
    blocking = tmp_path / "blocking.toml"
    # Thresholds that block nothing: only the list can block.
    blocking.write_text(
        'version = "it-2"\n[thresholds]\nhold_at = 0.0\n[lists]\nblock_users = ["u1"]\n'
    )
    broken = tmp_path / "broken.toml"
    broken.write_text('version = "it-3"\n[thresholds]\nhold_at = 2\n')
    later = [
        (topic, key, {**event, "tx_id": f"late-{event['tx_id']}", "ts": event["ts"] + DAY})
        for topic, key, event in first
        if topic == "transactions"
    ]
    with running_worker(settings, tmp_path / "worker.log") as worker:
        wait_for_decisions(settings, 300, worker)
        rejected = _policy_cli(settings, "push", str(broken))
        assert rejected.returncode == 2 and "hold_at: must be within [0, 1]" in rejected.stderr
        pushed = _policy_cli(settings, "push", str(blocking))
        assert pushed.returncode == 0, pushed.stderr
        assert f"policy it-2 is live (was {shipped})" in pushed.stdout
        wait_for(
            lambda: _live_policy_version(worker) == "it-2",
            timeout=30,
            what="the worker to take up policy it-2",
            worker=worker,
        )
        asyncio.run(produce_events(settings, later))
        wait_for_decisions(settings, 300 + len(later), worker)
        assert worker.stop() == 0, worker.log()

    stored = stored_decisions(settings)
    before = [d for tx_id, d in stored.items() if not tx_id.startswith("late-")]
    after = [d for tx_id, d in stored.items() if tx_id.startswith("late-")]
    assert len(before) == 300 and len(after) == len(later)
    assert {d.policy_version for d in before} == {shipped}
    assert {d.policy_version for d in after} == {"it-2"}
    assert all(
        d.action == "block" and d.reasons[0] == "blocklist:user" for d in after if d.user_id == "u1"
    )
    others = [d for d in after if d.user_id != "u1"]
    assert all("blocklist:user" not in d.reasons for d in others)
    assert others and all(d.action != "block" for d in others)
    shown = _policy_cli(settings, "show", "--version", shipped)
    assert shown.returncode == 0 and f'"version": "{shipped}"' in shown.stdout


def _score(settings: Settings, body: bytes, query: str = "") -> tuple[int, dict]:
    """`POST /score` on the worker `settings` point at, with their API token."""
    request = web_request(settings, f"/score{query}", body=body)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_score_decides_at_payment_time_once_per_tx_id(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    asyncio.run(ensure_topics(settings))
    asyncio.run(produce_events(settings, _traffic(50, users=10)))
    payment = tx("pay-1", T0 + HOUR, user_id="u3", amount_cents=4_200, rebate_rate=0.12)
    with running_worker(settings, tmp_path / "worker.log") as worker:
        wait_for_decisions(settings, 50, worker)
        status, first = _score(worker.settings, json.dumps(payment).encode(), "?wait_ms=10000")
        assert status == 200 and first["provisional"] is False, first
        assert first["decision"]["tx_id"] == "pay-1"
        assert first["rebate"]["requested_cents"] == 504
        stored = stored_decisions(settings)["pay-1"]
        assert first["decision"] == stored.asdict()
        counted = worker_stats(worker)["worker"]
        assert counted["decided_at_payment"] == 1, counted  # not the stream's wait
        # The stream reaches it later and publishes the decision made at payment time, once.
        decisions = read_topic(settings, settings.topic("decisions"), expect=51)
        published = [Decision.loads(v) for k, v in decisions if k == b"pay-1"]
        assert [d.asdict() for d in published] == [first["decision"]]
        # A retry: the same answer.
        status, again = _score(worker.settings, json.dumps(payment).encode())
        assert status == 200 and again == first
        wrong_token = worker.settings.replace(api_token="not-the-token")
        status, refused = _score(wrong_token, json.dumps({**payment, "tx_id": "pay-2"}).encode())
        assert status == 401 and "Bearer" in refused["error"]  # and pay-2 is never decided
        status, bad = _score(worker.settings, b"{not json")
        assert status == 400 and "not valid JSON" in bad["error"]
        status, bad = _score(worker.settings, json.dumps({**payment, "amount_cents": -5}).encode())
        assert status == 400 and "must be positive" in bad["error"]
        wait_for_decisions(settings, 51, worker)
        assert worker.stop() == 0, worker.log()
    assert redis_counters(settings)["decisions"] == 51  # decided once, for both requests
