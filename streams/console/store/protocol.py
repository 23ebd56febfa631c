"""What the worker and the console's views need of the console's store: `ConsoleStore`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rebate_guard.contract.records import Label
from streams.console.store.index import Indexed
from streams.console.store.solvency import SolvencyBooks


class ConsoleStore(Protocol):
    async def record(self, entries: Sequence[Indexed]) -> None: ...
    async def record_history(self, entries: Sequence[Indexed]) -> None:
        """Only the history rows of `entries`: decisions made at payment time are recorded
        then (`record`) without one, and their rows come when the stream reaches them."""
        ...

    async def resolve_holds(self, tx_ids: Sequence[str]) -> None: ...
    async def record_labels(self, labels: Sequence[Label]) -> None: ...
    async def series(self, since_s: int, until_s: int) -> list[dict[str, int]]:
        """Buckets from `since_s` to `until_s` (decision time), oldest first; each has `t`
        (its start, s)."""
        ...

    async def review_queue(self, limit: int) -> list[tuple[str, int, bool]]:
        """(tx_id, cents held, in the review sample): the sample first, most money first in
        each part (`index.queue_score`)."""
        ...

    async def queue_size(self) -> int: ...
    async def links(self, user_ids: Sequence[str]) -> dict[str, dict[tuple[str, str], int]]:
        """Per user: (kind, id) of each merchant, device, ip and card they paid with ->
        how many of their newest (`ENTITY_KEEP`) payments did."""
        ...

    async def claims(self, tx_ids: Sequence[str]) -> dict[str, str]: ...
    async def claim(self, tx_id: str, user: str) -> str:
        """Claims `tx_id` for `user` unless someone has; returns who holds the claim."""
        ...

    async def set_claim(self, tx_id: str, user: str) -> None:
        """Gives `tx_id` to `user`, whoever held it (an assignment)."""
        ...

    async def by_entity(self, kind: str, entity_id: str, limit: int) -> list[str]:
        """The entity's newest tx_ids, newest first."""
        ...

    async def history(self, since_ms: int, limit: int) -> list[bytes]:
        """History rows of payments at or after `since_ms` (event time), at most the newest
        `limit`, oldest first."""
        ...

    async def labels(self, tx_ids: Sequence[str], user_ids: Sequence[str]) -> dict[str, Any]:
        """{"tx": {tx_id: label}, "user": {user_id: label}} for those that have one."""
        ...

    async def record_rings(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Each (ring id, event JSON) the graph published: the ring's version history."""
        ...

    async def ring_versions(self, ring_id: str) -> list[dict[str, Any]]:
        """The ring's published versions, newest first (each once)."""
        ...

    async def audit(self, who: str, action: str, detail: dict[str, Any]) -> None: ...
    async def audit_log(self, limit: int) -> list[dict[str, Any]]: ...
    async def put_draft(self, name: str, entry: dict[str, Any]) -> None: ...
    async def drafts(self) -> dict[str, dict[str, Any]]: ...
    async def delete_draft(self, name: str) -> None: ...
    async def solvency_books(self, alerts: int) -> SolvencyBooks:
        """The solvency monitor's figures now and at the last closed period, for the platform
        and the regions, and the newest `alerts` platform alerts (as the worker stored them)."""
        ...

    async def solvency_series(self, scope: str, limit: int) -> list[bytes]:
        """The newest `limit` closed readings of `scope` (platform or a region), oldest first."""
        ...
