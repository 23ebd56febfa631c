"""The console's policy routes: the live policy, drafts, backtests, publishing (admins) and
false-positive suppressions (reviewers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from rebate_guard.core.policy import PolicyError
from streams.auth import ADMIN, REVIEWER, VIEWER, Guard, Identity
from streams.console import policy_desk
from streams.console.actions import label_time
from streams.console.views import int_param, render_page, see_other

if TYPE_CHECKING:
    from streams.app import Runtime

POLICY = "/console/policy"


def register_policy(app: faust.App, runtime: Runtime, guard: Guard) -> None:
    def need(request: Request, role: str) -> Identity:
        return guard.require(request, role)  # type: ignore[arg-type]

    @app.page(POLICY)
    class PolicyPage(View):
        async def get(self, request: Request) -> Response:
            who = need(request, VIEWER)
            live = await policy_desk.live(runtime)
            live_text = policy_desk.pretty(live)
            editing = {"name": request.query.get("draft", ""), "fmt": "json", "text": live_text}
            drafts = await policy_desk.drafts(runtime, live)
            for d in drafts:
                if d["name"] == editing["name"]:
                    editing = {"name": d["name"], "fmt": d["fmt"], "text": d["text"]}
            html = render_page(
                guard,
                request,
                "policy.html",
                POLICY,
                who,
                title="Policy",
                may_edit=who.at_least(ADMIN),
                live=live,
                live_text=live_text,
                status=runtime.policy_status,
                drafts=drafts,
                editing=editing,
                history=await policy_desk.history(runtime),
            )
            return self.html(html)

    @app.page(f"{POLICY}/draft")
    class SaveDraft(View):
        async def post(self, request: Request) -> web.Response:
            who = need(request, ADMIN)
            form = await request.post()
            name, fmt = str(form.get("name", "")).strip(), str(form.get("fmt", "json"))
            try:
                policy = await policy_desk.save_draft(
                    runtime, name, text=str(form.get("text", "")), fmt=fmt, who=who.user
                )
            except PolicyError as exc:
                return see_other(POLICY, error=f"draft not saved: {exc}")
            return see_other(POLICY, msg=f"draft {name} saved (version {policy.version})")

    @app.page(f"{POLICY}/draft/{{name}}")
    class DraftAction(View):
        async def post(self, request: Request, name: str) -> web.Response:
            who = need(request, ADMIN)
            form = await request.post()
            do = str(form.get("do", ""))
            try:
                if do == "delete":
                    await runtime.console.delete_draft(name)
                    await runtime.console.audit(who.user, "delete draft", {"name": name})
                    return see_other(POLICY, msg=f"draft {name} deleted")
                policy = await policy_desk.draft_policy(runtime, name)
                if do == "backtest":
                    days = int_param(str(form.get("days", "7")), 7, 1, 90)
                    await policy_desk.backtest_draft(
                        runtime, name, draft=policy, days=days, who=who.user
                    )
                    return see_other(POLICY, msg=f"backtested {name} over {days} days")
                if do == "publish":
                    await policy_desk.publish(runtime, policy, who=who.user)
                    await runtime.console.delete_draft(name)
                    return see_other(POLICY, msg=f"published {policy.version}")
            except PolicyError as exc:
                return see_other(POLICY, error=str(exc))
            return see_other(POLICY, error=f"unknown draft action {do!r}")

    @app.page("/console/suppress")
    class Suppress(View):
        async def post(self, request: Request) -> web.Response:
            who = need(request, REVIEWER)
            form: Any = await request.post()
            user_id = str(form.get("user_id", "")).strip()
            try:
                policy = await policy_desk.suppress(
                    runtime,
                    user_id=user_id,
                    days=int(form.get("days", "7")),
                    reason=str(form.get("reason", "")),
                    who=who.user,
                    now_ms=label_time(runtime),
                )
            except (PolicyError, ValueError) as exc:
                return see_other("/console/review", error=f"not suppressed: {exc}")
            return see_other(
                "/console/review", msg=f"{user_id} suppressed: policy {policy.version}"
            )
