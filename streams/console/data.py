"""What each console page shows, assembled from the decision store, the console store and
the worker's live state. No HTML here (render.py) and no routing (views.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rebate_guard.contract.records import Decision
from streams.console.render import mask
from streams.console.store import held_cents

if TYPE_CHECKING:
    from streams.app import Runtime

#: Ring graph node kinds that are PII (masked for viewers who may not see them).
PII_KINDS = frozenset({"device", "ip", "card"})
#: Decisions listed per entity on the search and ring pages.
SHOWN = 50


async def decisions(runtime: Runtime, tx_ids: Sequence[str]) -> list[Decision]:
    found = await runtime.store.get_many(list(tx_ids))
    return [Decision.loads(found[t]) for t in tx_ids if t in found]


async def overview(runtime: Runtime) -> dict[str, Any]:
    stats = await runtime.store.stats()
    counters = stats["counters"]
    rings = await runtime.store.rings()
    processor = runtime.processor
    reports = processor.reports  # the shards' state, read only
    models = reports.models()
    budgets = reports.budgets()
    event_time = reports.event_time()
    groups: dict[str, dict[str, Any]] = {}
    # The review sample's labels in each shard's window, by group and shard (those with any).
    reviews: list[dict[str, Any]] = []
    for unit, report in budgets.items():
        for name, group in (report.get("groups") or {}).items():
            into = groups.setdefault(name, {"budget": group["legit_friction"], "units": []})
            into["units"].append(group.get("achieved_legit_friction"))
            sample = group.get("review_sample") or {}
            if sample.get("reviewed"):
                reviews.append({"group": name, "unit": unit, **sample})
    return {
        "counters": counters,
        "actions": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("action:")},
        "fail_closed": processor.counters.fail_closed,
        "late": event_time["late"],
        "watermark": event_time["watermark"],
        "drifts": sum(m["score_drifts"] + m["error_drifts"] for m in models.values()),
        # Per user shard: `<model>.l<labels learned>.t<transactions learned>`.
        "models": {unit: m["version"] for unit, m in models.items()},
        "policy": runtime.policy_status,
        "rings_by_kind": dict(Counter(r["kind"] for r in rings)),
        "rings_at_risk": sum(r["rebate_at_risk_cents"] for r in rings),
        "queue": await runtime.console.queue_size(),
        "friction": groups,
        "reviews": sorted(reviews, key=lambda r: str(r["group"])),  # stable: shard order
        "review_share": review_share(runtime),
    }


async def series(runtime: Runtime, minutes: int) -> dict[str, list[Any]]:
    """The overview's time series as uPlot wants them: parallel columns."""
    now = int(runtime.processor.clock())  # the clock decisions are stamped with
    buckets = await runtime.console.series(now - minutes * 60, now)
    names = ("decisions", "requested", "granted", "held", "withheld")
    columns: dict[str, list[Any]] = {"t": [b["t"] for b in buckets]}
    for name in names:
        columns[name] = [b.get(name, 0) for b in buckets]
    return columns


async def rings(runtime: Runtime, kind: str | None, min_cents: int) -> list[dict[str, Any]]:
    found = await runtime.store.rings()
    found = [r for r in found if (not kind or r["kind"] == kind)]
    found = [r for r in found if r["rebate_at_risk_cents"] >= min_cents]
    found.sort(key=lambda r: (-r["rebate_at_risk_cents"], r["ring_id"]))
    return found


async def ring(runtime: Runtime, ring_id: str, unmask: bool) -> dict[str, Any] | None:
    """A ring, its graph (users, merchants, devices, IPs, cards; referral and payment edges)
    and its members' newest decisions."""
    standing = {r["ring_id"]: r for r in await runtime.store.rings()}
    found = standing.get(ring_id)
    if found is None:
        return None
    users: list[str] = found["users"]
    merchants: set[str] = set(found["merchants"])
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []

    def node(kind: str, value: str, member: bool) -> str:
        node_id = f"{kind}:{value}"
        label = value if unmask or kind not in PII_KINDS else mask(value)
        nodes.setdefault(node_id, {"id": node_id, "kind": kind, "label": label, "member": member})
        return node_id

    for user in users:
        node("user", user, True)
    for merchant in merchants:
        node("merchant", merchant, True)
    referrals = await runtime.store.get_referrals(users)
    for user, (referrer, _) in sorted(referrals.items()):
        source = node("user", referrer, referrer in users)
        edges.append({"source": source, "target": f"user:{user}", "kind": "referral", "n": 1})
    links = await runtime.console.links(users)
    # A device, IP or card is drawn when two or more members used it: what ties them.
    used_by = Counter(link for user in users for link in links.get(user, {}))
    for user in users:
        for (kind, value), n in sorted(links.get(user, {}).items()):
            if kind == "merchant" and value not in merchants:
                continue  # payments outside the ring: not drawn
            if kind != "merchant" and used_by[(kind, value)] < 2:
                continue
            target = node(kind, value, kind == "merchant")
            kind_of_edge = "payment" if kind == "merchant" else kind
            edges.append({"source": f"user:{user}", "target": target, "kind": kind_of_edge, "n": n})
    member_decisions: list[Decision] = []
    for user in users[:SHOWN]:
        newest = await runtime.console.by_entity("user", user, 5)
        member_decisions += await decisions(runtime, newest)
    member_decisions.sort(key=lambda d: (-d.ts, d.tx_id))
    return {
        "ring": found,
        "versions": await runtime.console.ring_versions(ring_id),
        "graph": {"nodes": list(nodes.values()), "edges": edges},
        "decisions": member_decisions[:SHOWN],
        "held_cents": sum(held_cents(d) for d in member_decisions),
    }


async def search(runtime: Runtime, query: str) -> dict[str, Any]:
    """Everything the query names: a transaction by tx_id, and a user, merchant or device by
    id, each with its newest decisions, labels and the rings it is in."""
    found: dict[str, Any] = {"query": query, "tx": None, "entities": []}
    if not query:
        return found
    tx = next(iter(await decisions(runtime, [query])), None)
    if tx is not None:
        ledger = await runtime.store.get_ledger(query)
        label = (await runtime.console.labels([query], []))["tx"].get(query)
        found["tx"] = {"decision": tx, "ledger": ledger, "label": label}
    all_rings = await runtime.store.rings()
    for kind in ("user", "merchant", "device"):
        tx_ids = await runtime.console.by_entity(kind, query, SHOWN)
        if not tx_ids:
            continue
        member = "users" if kind == "user" else "merchants"
        entity = {
            "kind": kind,
            "decisions": await decisions(runtime, tx_ids),
            "rings": [r for r in all_rings if query in r.get(member, [])]
            if kind != "device"
            else [],
            "label": (await runtime.console.labels([], [query]))["user"].get(query)
            if kind == "user"
            else None,
        }
        found["entities"].append(entity)
    return found


def review_share(runtime: Runtime) -> float:
    """The share of withheld payments the live policy puts in the review sample (0: none)."""
    terms = runtime.processor.policy.budget
    return terms.review_share if terms is not None else 0.0


async def review_queue(runtime: Runtime, limit: int) -> dict[str, Any]:
    """The first `limit` held payments of the queue: those in the review sample first (as
    their decisions say, `REVIEW_SAMPLE`), then the others, each part most money first. The
    sample's labels measure how much of the withheld money is legitimate
    (`rebate_guard.core.budget`), which only a review of the drawn payments, not of the
    biggest, measures without bias; so the whole sample comes before any other hold."""
    queue = await runtime.console.review_queue(limit)
    share = review_share(runtime)
    tx_ids = [tx_id for tx_id, _, _ in queue]
    found = {d.tx_id: d for d in await decisions(runtime, tx_ids)}
    claims = await runtime.console.claims(tx_ids)
    items = [
        {
            "tx_id": tx_id,
            "held_cents": cents,
            "decision": found.get(tx_id),
            "claim": claims.get(tx_id),
            "sampled": in_sample,
        }
        for tx_id, cents, in_sample in queue
    ]
    shown = sum(in_sample for _, _, in_sample in queue)
    sample = {"share": share, "in_sample": shown} if share > 0 else None
    flagged = await rings(runtime, None, 0)
    return {
        "items": items,
        "size": await runtime.console.queue_size(),
        "rings": flagged[:20],
        "sample": sample,
    }
