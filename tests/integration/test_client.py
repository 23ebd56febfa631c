"""The rebate engines' pull client against a real Redis: decisions by tx_id, waiting for one,
and the balances after the ledger's adjustments."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rebate_guard.client import DecisionClient
from rebate_guard.contract.records import RebateAdjustment
from rebate_guard.settings import Settings
from streams.store import RedisDecisionStore
from tests.factories import T0, decision

pytestmark = pytest.mark.integration


def _decision(tx_id: str, action: str, requested: int, granted: int) -> bytes:
    return decision(tx_id, action, requested, granted).dumps()


def _store(settings: Settings, *calls: tuple[str, list]) -> None:
    async def run() -> None:
        store = RedisDecisionStore(settings)
        try:
            for method, args in calls:
                await getattr(store, method)(args)
        finally:
            await store.close()

    asyncio.run(run())


def test_get_decision_answers_waits_and_follows_the_ledger(stack_settings: Settings) -> None:
    settings = stack_settings
    _store(settings, ("put_new", [("held", _decision("held", "hold", 500, 0))]))
    release = RebateAdjustment(
        adjustment_id="held:hold",
        tx_id="held",
        user_id="u",
        ts=T0 + 1,
        kind="release",
        cents=500,
        cause="label:legit",
        requested_cents=500,
        granted_cents=500,
        held_cents=0,
        voided_cents=0,
        policy_version="p",
        decided_at=2,
    )
    with DecisionClient(settings.redis_url, settings.app_id) as client:
        before = client.get_decision("held")
        assert before is not None and before.decision.action == "hold"
        assert (before.granted_cents, before.held_cents, before.last_adjustment) == (0, 500, None)
        _store(settings, ("put_adjustments", [("held:hold", "held", release.dumps())]))
        after = client.get_decision("held")
        assert after is not None and (after.granted_cents, after.held_cents) == (500, 0)
        assert after.last_adjustment == "held:hold" and after.decision == before.decision

        started = time.monotonic()
        assert client.get_decision("never", wait=0.3) is None
        assert time.monotonic() - started >= 0.3

        late = threading.Timer(
            0.2, _store, (settings, ("put_new", [("late", _decision("late", "allow", 90, 90))]))
        )
        late.start()
        try:
            waited = client.get_decision("late", wait=10)
        finally:
            late.join()
        assert waited is not None and waited.granted_cents == 90 and waited.voided_cents == 0
