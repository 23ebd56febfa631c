"""What the status page and the console read about this worker's shards: event time, the
models and their drift, the friction budgets, the graph; and the drift log lines."""

from __future__ import annotations

import logging
from typing import Any

from streams.alignment import START
from streams.registry import ShardRegistry, graph_unit, user_unit
from streams.shards import UserShard

log = logging.getLogger(__name__)


class ShardReports:
    def __init__(self, shards: ShardRegistry) -> None:
        self.shards = shards
        #: Drift counts already logged, per user partition (a log line when they change).
        self._drift_logged: dict[int, tuple[int, int]] = {}

    def event_time(self) -> dict[str, Any]:
        """Where event time stands: the lowest user-shard watermark, and what waits."""
        users, entities, graphs = (
            self.shards.users.values(),
            self.shards.entities.values(),
            self.shards.graphs.values(),
        )
        marks = [s.aligner.watermark for s in users if s.aligner.watermark > START]
        late_user = sum(s.late for s in users)
        late_entity = sum(s.late for s in entities)
        late_graph = sum(s.late for s in graphs)
        late_books = sum(s.late for s in self.shards.solvencies.values())
        return {
            "watermark": min(marks) if marks else None,
            "pending": sum(len(s.aligner.buffer) + len(s.queue) for s in users),
            "sources": sum(len(s.aligner.sources) for s in users),
            "idle_sources": sum(len(s.aligner.idle_sources) for s in users),
            # Events released after event time had passed them, counted in each stage they
            # reached late (an input event at its user shard; a request at an entity shard).
            "late": late_user + late_entity + late_graph + late_books,
            "late_by_stage": {
                "user": late_user,
                "entity": late_entity,
                "graph": late_graph,
                "solvency": late_books,
            },
        }

    def models(self) -> dict[str, Any]:
        """The models of this worker's user shards: the state that scores, and drift."""
        return {
            user_unit(p): {"version": s.decider.model_version, **s.decider.drift.summary()}
            for p, s in sorted(self.shards.users.items())
        }

    def budgets(self) -> dict[str, Any]:
        """The friction budget of each of this worker's user shards (each has its own, over
        its own users' payments): mode, cuts, and the friction they achieved."""
        users = sorted(self.shards.users.items())
        return {user_unit(p): s.decider.budget_report() for p, s in users}

    def graph_state(self) -> dict[str, Any] | None:
        """The graph shard this worker owns, if any: its size and what it has found."""
        if not self.shards.graphs:
            return None
        shard = next(iter(self.shards.graphs.values()))
        layer = shard.layer
        return {
            "unit": graph_unit(shard.partition),
            "watermark": shard.aligner.watermark if shard.aligner.watermark > START else None,
            "edges": len(layer.graph.edges),
            "users": len(layer.graph.users),
            "rings": len(layer.book.rings),
            "groups_analysed": layer.analysed,
            "groups_skipped": layer.skipped,
            "groups_oversized": layer.oversized,
        }

    def log_drift(self, shard: UserShard) -> None:
        """A warning when the drift counts of `shard`'s model change."""
        watch = shard.decider.drift
        counts = (watch.score_drifts, watch.error_drifts)
        before = self._drift_logged.get(shard.partition, (0, 0))
        if counts != before:
            self._drift_logged[shard.partition] = counts
            log.warning(
                "drift on %s (model %s): score distribution %d time(s), latest at ts %s; "
                "error rate %d time(s), latest at ts %s",
                user_unit(shard.partition),
                shard.decider.model_version,
                counts[0],
                watch.last_score_drift_ts,
                counts[1],
                watch.last_error_drift_ts,
            )
