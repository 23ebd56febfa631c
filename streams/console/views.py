"""The console's routes, all under `/console/`: thin handlers that check the role
(streams/auth.py), ask `data`/`actions`/`policy_desk` for what to show or do, and render a
template. Writes are POSTed forms carrying the session's CSRF token, answered with a redirect
(post/redirect/get) whose `msg` the next page shows as text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import faust
from aiohttp import web
from faust.web import Request, Response, View

from graph.rings import KINDS
from rebate_guard.contract.records import FRAUD, LEGIT
from rebate_guard.core.solvency import PLATFORM
from streams.auth import REVIEWER, VIEWER, Guard, Identity
from streams.console import actions, data, solvency
from streams.console.render import render
from streams.roles import role_at_least

if TYPE_CHECKING:
    from streams.app import Runtime

#: Longest scope a solvency page is asked for (a region's name comes from events).
MAX_SCOPE = 300
#: The rings page's kind filter: every kind the graph finds (`graph.rings.KINDS`).
RING_KINDS = KINDS
QUEUE_SHOWN = 100


def see_other(path: str, msg: str = "", error: str = "") -> web.Response:
    query = urlencode({k: v for k, v in (("msg", msg), ("error", error)) if v})
    return web.Response(status=303, headers={"Location": f"{path}?{query}" if query else path})


def int_param(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value or default), low), high)
    except ValueError:
        return default


def render_page(
    guard: Guard, request: Request, template: str, here: str, who: Identity, **context: Any
) -> str:
    """A console page: the template with what every page shows (who is logged in, the
    session's CSRF token for its forms, the message of the last action)."""
    return render(
        template,
        here=here,
        identity=who,
        csrf=guard.csrf_token(request),  # type: ignore[arg-type]
        message=request.query.get("msg", ""),
        error=request.query.get("error", ""),
        may_review=who.at_least(REVIEWER),
        **context,
    )


def register_console(app: faust.App, runtime: Runtime, guard: Guard) -> None:
    def page(request: Request, template: str, here: str, who: Identity, **context: Any) -> str:
        return render_page(guard, request, template, here, who, **context)

    def reviewers() -> list[str]:
        """Who a held payment may be assigned to: the users who may label it."""
        people = guard.users.current().items()
        named = [name for name, u in people if role_at_least(u.role, REVIEWER)]
        return sorted({*named, guard.user})

    def unmasked(request: Request, who: Identity) -> bool:
        return who.may_unmask and request.query.get("unmask") == "1"

    def need(request: Request, role: str) -> Identity:
        return guard.require(request, role)  # type: ignore[arg-type]

    @app.page("/console/")
    class Overview(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            o = await data.overview(runtime)
            platform = await solvency.platform_now(runtime.console)
            html = page(request, "overview.html", "/console/", who, title="Overview", o=o,
                        solvency=platform)  # fmt: skip
            return self.html(html)

    @app.page("/console/api/series")
    class Series(View):
        async def get(self, request: Request) -> Response:
            need(request, VIEWER)
            minutes = int_param(request.query.get("minutes"), 60, 1, 48 * 60)
            return self.json(await data.series(runtime, minutes))

    @app.page("/console/rings")
    class Rings(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            kind = request.query.get("kind") or None
            min_amount = request.query.get("min", "0")
            try:
                min_cents = round(float(min_amount) * 100)
            except ValueError:
                min_cents = 0
            found = await data.rings(runtime, kind, min_cents)
            html = page(
                request, "rings.html", "/console/rings", who, title="Rings", rings=found,
                kinds=RING_KINDS, kind=kind or "", min_amount=min_amount,
            )  # fmt: skip
            return self.html(html)

    @app.page("/console/rings/{ring_id}")
    class RingPage(View):
        async def get(self, request: Request, ring_id: str) -> Response:
            who = need(request, VIEWER)
            show = unmasked(request, who)
            found = await data.ring(runtime, ring_id, show)
            if found is None:
                return self.html(f"no standing ring {ring_id!r}".replace("<", "&lt;"), status=404)
            if show:
                await runtime.console.audit(who.user, "unmask", {"ring_id": ring_id})
            title = f"Ring {ring_id}"
            html = page(request, "ring.html", "/console/rings", who, title=title, found=found,
                        unmasked=show)  # fmt: skip
            return self.html(html)

    @app.page("/console/rings/{ring_id}/label")
    class RingLabel(View):
        async def post(self, request: Request, ring_id: str) -> web.Response:
            who = need(request, REVIEWER)
            form = await request.post()
            verdict = str(form.get("label", ""))
            found = await data.ring(runtime, ring_id, False)
            here = f"/console/rings/{quote(ring_id, safe='')}"
            if found is None:
                return see_other("/console/rings", error=f"no standing ring {ring_id}")
            try:
                users = tuple(found["ring"]["users"])
                await actions.publish_labels(
                    runtime, verdict=verdict, reviewer=who.user, user_ids=users,
                    why={"ring_id": ring_id},
                )  # fmt: skip
            except actions.ActionError as exc:
                return see_other(here, error=str(exc))
            return see_other(here, msg=f"labelled {len(users)} users of {ring_id} {verdict}")

    @app.page("/console/solvency")
    class Solvency(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            scope = request.query.get("scope", PLATFORM)[:MAX_SCOPE]
            found = await solvency.page(runtime, scope)
            html = page(request, "solvency.html", "/console/solvency", who, title="Solvency",
                        s=found)  # fmt: skip
            return self.html(html)

    @app.page("/console/search")
    class Search(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            show = unmasked(request, who)
            query = request.query.get("q", "").strip()
            found = await data.search(runtime, query)
            if show:
                await runtime.console.audit(who.user, "unmask", {"search": query})
            html = page(request, "search.html", "/console/search", who, title="Search",
                        found=found, unmasked=show)  # fmt: skip
            return self.html(html)

    @app.page("/console/review")
    class Review(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            q = await data.review_queue(runtime, QUEUE_SHOWN)
            html = page(request, "review.html", "/console/review", who, title="Review", q=q,
                        reviewers=reviewers())  # fmt: skip
            return self.html(html)

    @app.page("/console/review/{tx_id}")
    class ReviewItem(View):
        async def post(self, request: Request, tx_id: str) -> web.Response:
            who = need(request, REVIEWER)
            form = await request.post()
            do = str(form.get("do", ""))
            if do == "claim":
                holder = await actions.claim(runtime, tx_id, who.user)
                return see_other("/console/review", msg=f"{tx_id} is claimed by {holder}")
            if do == "assign":
                assignee = str(form.get("assignee", ""))
                if assignee not in reviewers():
                    return see_other("/console/review", error=f"{assignee!r} is no reviewer")
                await actions.assign(runtime, tx_id, assignee, who.user)
                return see_other("/console/review", msg=f"{tx_id} is assigned to {assignee}")
            if do not in (FRAUD, LEGIT):
                return see_other("/console/review", error=f"unknown review action {do!r}")
            await actions.publish_labels(runtime, verdict=do, reviewer=who.user, tx_ids=(tx_id,))
            outcome = "released when the label is taken in" if do == LEGIT else "voided"
            return see_other("/console/review", msg=f"labelled {tx_id} {do}: its hold is {outcome}")

    @app.page("/console/audit")
    class Audit(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            entries = await runtime.console.audit_log(
                int_param(request.query.get("limit"), 200, 1, 5000)
            )
            html = page(
                request, "audit.html", "/console/audit", who, title="Audit", entries=entries
            )
            return self.html(html)

    from streams.console.policy_views import register_policy

    register_policy(app, runtime, guard)
