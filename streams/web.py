"""The worker's web server: a live status page, JSON stats, flagged rings and decisions
by tx_id, and the login in front of them (streams/auth.py)."""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from rebate_guard.client import rebate_status
from rebate_guard.contract.records import Decision
from rebate_guard.contract.validation import InvalidEvent, decode_json_object, parse_transaction
from streams.auth import HOME, SESSION_COOKIE, Guard
from streams.console.views import register_console

if TYPE_CHECKING:
    from streams.app import Runtime

STATIC = resources.files("streams") / "static"
STATUS_PAGE = (STATIC / "status.html").read_text("utf-8")
LOGIN_PAGE = (STATIC / "login.html").read_text("utf-8")
#: The pages' scripts and styles, and the vendored libraries (static/vendor/README.md),
#: served from files so the Content-Security-Policy can forbid inline script
#: (streams/auth.py): path under /static/ -> (content type, text).
KINDS = {".js": "text/javascript", ".css": "text/css"}
ASSETS = {
    f"{prefix}{item.name}": (KINDS[item.name[item.name.rfind(".") :]], item.read_text("utf-8"))
    for prefix, folder in (("", STATIC), ("vendor/", STATIC / "vendor"))
    for item in folder.iterdir()
    if item.is_file() and item.name[item.name.rfind(".") :] in KINDS
}


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def register_views(app: faust.App, runtime: Runtime, guard: Guard) -> None:
    @app.page("/login")
    class Login(View):
        """The login form; a right user and password get a session cookie and the console
        (429 while too many logins failed, streams/auth.py)."""

        async def get(self, request: Request) -> Response:
            return self.html(LOGIN_PAGE)

        async def post(self, request: Request) -> web.Response:
            form = await request.post()
            user, password = str(form.get("user", "")), str(form.get("password", ""))
            identity = await guard.login(request, user, password)  # type: ignore[arg-type]
            if identity is None:
                return _redirect("/login?failed")
            response = _redirect(HOME)
            guard.set_session(response, identity, secure=request.secure)  # type: ignore[attr-defined]
            return response

    @app.page("/logout")
    class Logout(View):
        async def post(self, request: Request) -> web.Response:
            response = _redirect("/login")
            response.del_cookie(SESSION_COOKIE, path="/")
            return response

    async def asset(name: str) -> web.Response:
        if name not in ASSETS:
            return web.Response(status=404, text="no such asset")
        kind, text = ASSETS[name]
        # Packaged with this release: the browser may keep them for the session.
        headers = {"Cache-Control": "private, max-age=3600"}
        return web.Response(text=text, content_type=kind, charset="utf-8", headers=headers)

    @app.page("/favicon.ico")
    class Favicon(View):
        """Browsers ask for it on every page: no icon, and no 401 in their console."""

        async def get(self, request: Request) -> web.Response:
            return web.Response(status=204)

    @app.page("/static/{name}")
    class Asset(View):
        async def get(self, request: Request, name: str) -> web.Response:
            return await asset(name)

    @app.page("/static/vendor/{name}")
    class VendorAsset(View):
        async def get(self, request: Request, name: str) -> web.Response:
            return await asset(f"vendor/{name}")

    register_console(app, runtime, guard)

    @app.page("/")
    class StatusPage(View):
        async def get(self, request: Request) -> Response:
            return self.html(STATUS_PAGE)

    @app.page("/api/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            stats: dict[str, Any] = await runtime.store.stats()
            stats["worker"] = dataclasses.asdict(runtime.processor.counters)
            stats["event_time"] = runtime.processor.reports.event_time()
            stats["models"] = runtime.processor.reports.models()
            stats["budget"] = runtime.processor.reports.budgets()
            stats["graph"] = runtime.processor.reports.graph_state()
            stats["policy"] = runtime.policy_status
            # How `POST /score`'s Redis calls were merged (`streams.coalesce`).
            stats["score_round_trips"] = {
                "lookups": runtime.requests.lookups.counts(),
                "stores": runtime.processor.payment_time.stores.counts(),
            }
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

    @app.page("/score")
    class Score(View):
        """A decision at payment time: POST the transaction (the contract's JSON); the
        answer is `GET /decisions/{tx_id}`'s, or a provisional fail-closed one (`hold`,
        nothing granted) when the decision cannot be had within `RG_SCORE_WAIT_MS`
        (`?wait_ms=` overrides, up to 10 s). Bad input: 400 with the reason."""

        async def post(self, request: Request) -> Response:
            body = await request.read()
            try:
                tx = parse_transaction(decode_json_object(body))
                wait_ms = int(request.query.get("wait_ms", runtime.settings.score_wait_ms))
                if not 0 <= wait_ms <= 10_000:
                    raise InvalidEvent("wait_ms must be within 0..10000")
            except ValueError as exc:  # InvalidEvent, or a wait_ms that is not a number
                return self.json({"error": str(exc)}, status=400)
            status = await runtime.score(tx, body, wait_ms / 1000)
            return self.json(status.to_json())

    @app.page("/decisions/{tx_id}")
    class DecisionByTx(View):
        """The decision on a transaction and its rebate's balances now (after labels,
        refunds and hold timeouts): what `rebate_guard.client.get_decision` returns."""

        async def get(self, request: Request, tx_id: str) -> Response:
            found = await runtime.store.get_many([tx_id])
            if tx_id not in found:
                return self.json({"error": f"no decision for tx_id {tx_id!r}"}, status=404)
            ledger = await runtime.store.get_ledger(tx_id)
            decision = Decision.loads(found[tx_id])
            return self.json(rebate_status(decision, ledger).to_json())
