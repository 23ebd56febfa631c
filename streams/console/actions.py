"""What people do in the console, each audited: claim a held payment, label a payment or a
ring's members (events on the `labels` topic with source `review` and the reviewer, which
the models learn from and the ledger settles holds by, as any label), and publish a policy.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rebate_guard.contract.records import LABEL_VALUES, LABELS, REVIEW_SOURCE, Label

if TYPE_CHECKING:
    from streams.app import Runtime

REVIEW = REVIEW_SOURCE


class ActionError(ValueError):
    """A request the console refuses, with why (shown to the person)."""


def label_time(runtime: Runtime) -> int:
    """When a review label becomes known, in the stream's event time: where event time
    stands now (the platform's clock may run ahead of or behind the stream's); the wall
    clock before any event came in."""
    watermark = runtime.processor.reports.event_time()["watermark"]
    return int(watermark) if watermark is not None else int(time.time() * 1000)


async def publish_labels(
    runtime: Runtime,
    *,
    verdict: str,
    reviewer: str,
    tx_ids: tuple[str, ...] = (),
    user_ids: tuple[str, ...] = (),
    why: dict[str, str] | None = None,
) -> list[Label]:
    """Labels `tx_ids` and `user_ids` with `verdict`, produced to the labels topic (keyed
    as the contract keys labels: by tx_id, else user_id) and audited."""
    if verdict not in LABEL_VALUES:
        raise ActionError(f"a label is one of {', '.join(LABEL_VALUES)}, not {verdict!r}")
    if not tx_ids and not user_ids:
        raise ActionError("nothing to label")
    ts = label_time(runtime)
    labels = [
        Label(ts=ts, label=verdict, source=REVIEW, tx_id=t, user_id=None, reviewer=reviewer)
        for t in tx_ids
    ] + [
        Label(ts=ts, label=verdict, source=REVIEW, tx_id=None, user_id=u, reviewer=reviewer)
        for u in user_ids
    ]
    topic = runtime.settings.topic(LABELS)
    records = [((label.tx_id or label.user_id or "").encode(), label.dumps()) for label in labels]
    await runtime.sink.send_many(topic, records)
    detail = {"label": verdict, "tx_ids": list(tx_ids), "user_ids": list(user_ids), "ts": ts}
    await runtime.console.audit(reviewer, "label", {**detail, **(why or {})})
    return labels


async def claim(runtime: Runtime, tx_id: str, reviewer: str) -> str:
    """Claims a held payment for `reviewer`; who holds the claim (the first claimer)."""
    holder = await runtime.console.claim(tx_id, reviewer)
    if holder == reviewer:
        await runtime.console.audit(reviewer, "claim", {"tx_id": tx_id})
    return holder


async def assign(runtime: Runtime, tx_id: str, assignee: str, by: str) -> None:
    """Gives a held payment to `assignee` (a reviewer or admin), taking it from whoever held
    it; audited with the previous holder."""
    before = (await runtime.console.claims([tx_id])).get(tx_id)
    await runtime.console.set_claim(tx_id, assignee)
    await runtime.console.audit(by, "assign", {"tx_id": tx_id, "to": assignee, "from": before})
