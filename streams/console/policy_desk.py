"""The console's policy work: drafts (validated as they are saved), their diff against the
live policy, a backtest of a draft against the live policy on the stored decision history,
publishing (the workers' validated hot reload) and false-positive suppressions, which are
policy versions too. Every change is audited with the document it made live."""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rebate_guard.contract.records import Label
from rebate_guard.contract.time import DAY_MS
from rebate_guard.core.backtest import HistoryRow, backtest, label_rows
from rebate_guard.core.policy import Policy, PolicyError, Suppression
from streams.console.actions import label_time
from streams.store import PolicyConflict

if TYPE_CHECKING:
    from streams.app import Runtime

#: What the audit log calls a change of the live policy.
PUBLISH = "publish"
SUPPRESS = "suppress"


def pretty(policy: Policy) -> str:
    """The policy's document as the console shows and diffs it."""
    return json.dumps(policy.document(), indent=2, sort_keys=True)


def diff(before: str, after: str, *, before_name: str, after_name: str) -> list[str]:
    return list(
        difflib.unified_diff(
            before.splitlines(), after.splitlines(), before_name, after_name, lineterm=""
        )
    )


def parse(text: str, fmt: str) -> Policy:
    if fmt not in ("json", "toml"):
        raise PolicyError(f"format is json or toml, not {fmt!r}")
    return Policy.from_text(text, fmt)


async def live(runtime: Runtime) -> Policy:
    """The live policy as Redis holds it (what every worker takes up), else this worker's."""
    text = await runtime.store.get_policy()
    return Policy.from_text(text) if text is not None else runtime.processor.policy


async def history(runtime: Runtime, limit: int = 50) -> list[dict[str, Any]]:
    """Published versions, newest first, each with its diff against the one before it."""
    entries = [
        e for e in await runtime.console.audit_log(5000) if e["action"] in (PUBLISH, SUPPRESS)
    ][:limit]
    for entry in entries:
        detail = entry["detail"]
        entry["diff"] = diff(
            detail.get("before_document", ""),
            detail.get("document", ""),
            before_name=detail.get("before", ""),
            after_name=detail.get("version", ""),
        )
    return entries


async def save_draft(runtime: Runtime, name: str, *, text: str, fmt: str, who: str) -> Policy:
    """Validates and stores a draft; `PolicyError` says what is wrong (nothing is stored)."""
    if not name.strip():
        raise PolicyError("a draft needs a name")
    policy = parse(text, fmt)
    entry = {
        "text": text,
        "fmt": fmt,
        "author": who,
        "saved_at": int(time.time() * 1000),
        "version": policy.version,
    }
    await runtime.console.put_draft(name, entry)
    await runtime.console.audit(who, "draft", {"name": name, "version": policy.version})
    return policy


async def drafts(runtime: Runtime, current: Policy) -> list[dict[str, Any]]:
    """Every draft with its validation and diff against `current` (the live policy)."""
    found = []
    live_text = pretty(current)
    for name, entry in sorted((await runtime.console.drafts()).items()):
        item = {"name": name, "backtest": None, **entry, "error": None, "diff": []}
        try:
            policy = parse(entry["text"], entry["fmt"])
            item["diff"] = diff(
                live_text,
                pretty(policy),
                before_name=current.version,
                after_name=policy.version,
            )
        except PolicyError as exc:  # a draft saved under an older release's rules
            item["error"] = str(exc)
        found.append(item)
    return found


async def draft_policy(runtime: Runtime, name: str) -> Policy:
    entry = (await runtime.console.drafts()).get(name)
    if entry is None:
        raise PolicyError(f"no draft named {name!r}")
    return parse(entry["text"], entry["fmt"])


async def publish(runtime: Runtime, policy: Policy, *, who: str, action: str = PUBLISH) -> None:
    """Makes `policy` live (every worker takes it up within a poll) and audits it with the
    document it replaced. A version already used by another document is refused."""
    before = await live(runtime)
    if policy.version == before.version:
        raise PolicyError(f"version {policy.version} is live already: give the draft a new one")
    try:
        await runtime.store.push_policy(policy.version, policy.to_json())
    except PolicyConflict as exc:
        raise PolicyError(str(exc)) from None
    detail = {
        "version": policy.version,
        "before": before.version,
        "document": pretty(policy),
        "before_document": pretty(before),
    }
    await runtime.console.audit(who, action, detail)
    await runtime.refresh_policy()


async def suppress(
    runtime: Runtime, *, user_id: str, days: int, reason: str, who: str, now_ms: int
) -> Policy:
    """A new live policy that allows `user_id`'s payments in full for `days` from `now_ms`
    (event time): the reviewer's ruling that the user was a false positive."""
    if not user_id.strip():
        raise PolicyError("which user? (user_id is empty)")
    if not 1 <= days <= 90:
        raise PolicyError("a suppression lasts 1 to 90 days")
    current = await live(runtime)
    doc = current.document()
    kept = [s for s in doc.get("suppressions", []) if s["user_id"] != user_id]
    entry = Suppression(user_id, now_ms + days * DAY_MS, reason, who)
    doc["suppressions"] = [*kept, asdict(entry)]
    doc["version"] = f"{current.version.split('+')[0]}+{SUPPRESS}-{int(time.time() * 1000)}"
    policy = Policy.from_document(doc)
    await publish(runtime, policy, who=who, action=SUPPRESS)
    return policy


def _warmup_ms(*policies: Policy) -> int:
    """History before the reported days that the budgets' cuts are computed from."""
    return max((p.budget.window_ms for p in policies if p.budget is not None), default=0)


async def backtest_draft(
    runtime: Runtime, name: str, *, draft: Policy, days: int, who: str
) -> None:
    """Re-decides the stored payments of the last `days` (event time) under the live policy
    and under `draft` (rebate_guard/core/backtest.py), with the labels known now; the report is
    kept with the draft and the run audited."""
    current = await live(runtime)
    now = label_time(runtime)
    since = now - days * DAY_MS
    keep = runtime.settings.console_history_keep
    raw = await runtime.console.history(since - _warmup_ms(current, draft), keep)
    rows = [HistoryRow.from_json(r) for r in raw]
    tx_ids = sorted({r.tx_id for r in rows})
    user_ids = sorted({r.user_id for r in rows})
    known = await runtime.console.labels(tx_ids, user_ids)
    labels = [
        Label(
            ts=v["ts"],
            label=v["label"],
            source=v["source"],
            tx_id=v["tx_id"],
            user_id=v["user_id"],
            reviewer=v["reviewer"],
        )
        for found in (known["tx"], known["user"])
        for v in found.values()
    ]
    # Seconds of CPU for a large history: in a thread, so the event loop keeps serving.
    report = await asyncio.to_thread(
        backtest, label_rows(rows, labels), live=current, draft=draft, since_ms=since
    )
    result = report.to_json()
    entry = (await runtime.console.drafts()).get(name)
    if entry is None:
        raise PolicyError(f"no draft named {name!r}")
    entry["backtest"] = {
        "days": days,
        "at": int(time.time() * 1000),
        "by": who,
        "live_version": current.version,
        "report": result,
    }
    await runtime.console.put_draft(name, entry)
    summary = {
        "name": name,
        "days": days,
        "rows": result["rows"],
        "changed": result["diff"]["changed"],
        "users_newly_hit": result["diff"]["users_newly_hit"],
    }
    await runtime.console.audit(who, "backtest", summary)
