"""The worker's web server: a live status page, JSON stats, flagged rings and decisions
by tx_id."""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

from rebate_guard.client import rebate_status

if TYPE_CHECKING:
    from streams.app import Runtime

STATUS_PAGE = (resources.files("streams") / "static" / "status.html").read_text("utf-8")


def register_views(app: faust.App, runtime: Runtime) -> None:
    @app.page("/")
    class StatusPage(View):
        async def get(self, request: Request) -> Response:
            return self.html(STATUS_PAGE)

    @app.page("/api/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            stats: dict[str, Any] = await runtime.store.stats()
            stats["worker"] = dataclasses.asdict(runtime.processor.counters)
            stats["event_time"] = runtime.processor.event_time()
            stats["models"] = runtime.processor.models()
            stats["graph"] = runtime.processor.graph_state()
            stats["policy"] = runtime.policy_status
            return self.json(stats)

    @app.page("/api/rings")
    class Rings(View):
        """The rings that stand (from Redis: whichever worker owns the graph), newest
        first; `?kind=` filters by kind, `?limit=` caps the list (default 100)."""

        async def get(self, request: Request) -> Response:
            kind = request.query.get("kind")
            try:
                limit = int(request.query.get("limit", "100"))
                if limit < 1:
                    raise ValueError
            except ValueError:
                return self.json({"error": "limit must be a positive integer"}, status=400)
            rings = await runtime.store.rings()
            if kind:
                rings = [r for r in rings if r["kind"] == kind]
            rings.sort(key=lambda r: (-r["ts"], r["ring_id"]))
            return self.json({"count": len(rings), "rings": rings[:limit]})

    @app.page("/decisions/{tx_id}")
    class DecisionByTx(View):
        """The decision on a transaction and its rebate's balances now (after labels,
        refunds and hold timeouts): what `rebate_guard.client.get_decision` returns."""

        async def get(self, request: Request, tx_id: str) -> Response:
            found = await runtime.store.get_many([tx_id])
            if tx_id not in found:
                return self.json({"error": f"no decision for tx_id {tx_id!r}"}, status=404)
            ledger = await runtime.store.get_ledger(tx_id)
            return self.json(rebate_status(found[tx_id], ledger).to_json())
