"""The solvency page on the real stack, as `make up` shows it: a `rebate-guard worker` process
on the local Tansu broker and Redis, a growth stall's platform events produced to the broker,
and a viewer who logs in over HTTP and sees the ratio climb past the policy's lines with the
worker's alerts. No mocks."""

from __future__ import annotations

import asyncio
import re
from html import unescape
from pathlib import Path

import pytest
import redis

from rebate_guard.contract.records import CRITICAL, PLATFORM_EVENTS, PlatformAlert
from rebate_guard.keys import Keys
from rebate_guard.settings import Settings
from rebate_guard.tools.producer import produce_events
from rebate_guard.tools.topics import ensure_topics
from tests.console_world import Session, write_users
from tests.integration.helpers import running_worker, wait_for
from tests.solvency_world import PERIOD_MS, stall_events
from tests.web import HttpServer

pytestmark = pytest.mark.integration

#: Generous for a loaded 2-core box (the broker, Redis, the worker and the test share it).
SLOW = 90.0
REGION = "<script>alert(1)</script>"


def test_a_growth_stall_on_the_stack_shows_on_the_solvency_page(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.replace(source_idle_s=2.0)
    write_users(settings)  # vera a viewer
    events = stall_events(REGION)
    asyncio.run(ensure_topics(settings))
    keyed = [  # as the contract keys them
        (PLATFORM_EVENTS, e.user_id or e.merchant_id or e.event_id, e.asdict()) for e in events
    ]
    asyncio.run(produce_events(settings, keyed))
    keys = Keys(settings.app_id)
    hours = len({e.ts // PERIOD_MS for e in events})
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with running_worker(settings, tmp_path / "worker.log") as worker:
            # Every hour but the last closes once event time has passed it; the alerts of a
            # batch are stored after its readings.
            def closed_and_alerted() -> bool:
                alerts = [PlatformAlert.loads(a) for a in client.lrange(keys.alerts, 0, -1)]
                critical = any(a.scope == "platform" and a.level == CRITICAL for a in alerts)
                return critical and client.llen(keys.solvency_series("platform")) >= hours - 1

            wait_for(closed_and_alerted, timeout=SLOW, what="the stall's books", worker=worker)
            served = worker.settings  # the worker's own port
            host = "127.0.0.1" if served.web_host in ("", "0.0.0.0") else served.web_host
            web = HttpServer(host, served.web_port)
            status, page = Session(web, "vera").get("/console/solvency")
    finally:
        client.close()
    assert status == 200
    points = re.search(r'<svg id="ratio-chart"[^>]* data-points="(\d+)"', page)
    assert points is not None and int(points.group(1)) >= hours - 1
    assert "past the warning line 3:1" in page and "past the critical line 5:1" in page
    assert "<script>alert" not in page and f"region:{REGION}" in unescape(page)
