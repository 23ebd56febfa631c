"""How good is ring detection? Flagged rings (`rings.parquet`) against the world's true rings.

- A true ring is **found** when the final version of some flagged ring has Jaccard >= 0.5
  with it on users; **ring precision** is the share of flagged rings (final versions) that
  match some true ring that way. A ring retired as withdrawn or superseded has no final
  version; one retired because all its accounts left the graph's window (`left_window` in
  its evidence) keeps its last active version: it stopped, it was not found wrong (a farm
  active in the first days of a 45-day world is out of a 30-day window by the end).
- **Look-alikes flagged**: the share of each look-alike group's users (families on one
  device, offices on one IP, viral referrers, loyal daily customers, ...) that appear in any
  version of any flagged ring.
- **Detection delay**, for rings of five or more: from the fifth member joining (the truth's
  `fifth_member_joined_ts`) to the first moment a flagged ring standing then (its latest
  version so far, not retired) matches, with Jaccard >= 0.5, the members who had joined by
  then: 0 when a ring flagged earlier already matches them as the fifth joins. A member joins
  at signup, or at their first fraudulent transaction when they signed up before the world
  starts, as the truth defines it. A ring still recruiting cannot be matched against members
  it does not have yet; the delay against the final membership (its first matching version,
  negative when flagged before the fifth joined) is reported beside it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from graph.layer import LEFT_WINDOW
from rebate_guard.contract.time import MINUTE_MS
from rebate_guard.tools.simulator import LOOKALIKES

MATCH = 0.5


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass
class KindQuality:
    rings: int
    found: int
    median_delay_min: float | None  # against the members joined by then
    median_delay_final_min: float | None  # against the final membership


@dataclass
class RingQuality:
    true_rings: int
    found: int
    flagged: int
    precise: int
    median_delay_min: float | None
    median_delay_final_min: float | None
    per_kind: dict[str, KindQuality] = field(default_factory=dict)
    #: look-alike group -> (users flagged, users)
    lookalikes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.found / self.true_rings if self.true_rings else 0.0

    @property
    def precision(self) -> float:
        return self.precise / self.flagged if self.flagged else 0.0

    @property
    def lookalike_share(self) -> float:
        flagged = sum(f for f, _ in self.lookalikes.values())
        users = sum(n for _, n in self.lookalikes.values())
        return flagged / users if users else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            recall=self.recall, precision=self.precision, lookalike_share=self.lookalike_share
        )
        return out

    def table(self) -> str:
        lines = [
            f"rings found: {self.found}/{self.true_rings} ({self.recall:.1%}); ring precision "
            f"{self.precise}/{self.flagged} ({self.precision:.1%}); look-alike users flagged "
            f"{self.lookalike_share:.2%}",
            f"median detection delay after the fifth member joined: "
            f"{_minutes(self.median_delay_min)} (against the final membership: "
            f"{_minutes(self.median_delay_final_min)})",
            "",
            "| kind | true rings | found | median delay | against final membership |",
            "|---|---|---|---|---|",
        ]
        for kind, q in sorted(self.per_kind.items()):
            lines.append(
                f"| {kind} | {q.rings} | {q.found} | {_minutes(q.median_delay_min)} "
                f"| {_minutes(q.median_delay_final_min)} |"
            )
        lines += ["", "| look-alike group | users flagged |", "|---|---|"]
        for group, (flagged, users) in sorted(self.lookalikes.items()):
            share = flagged / users if users else 0.0
            lines.append(f"| {group} | {flagged}/{users} ({share:.2%}) |")
        return "\n".join(lines)


def _minutes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} min"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def join_times(world: Path, users: set[str]) -> dict[str, int]:
    """When each of `users` joined, as the truth defines it: signup within the world, else
    their first fraudulent transaction."""
    txs = pl.read_parquet(world / "transactions.parquet", columns=["tx_id", "ts", "user_id"])
    start = txs.select(pl.col("ts").min()).item() or 0
    fraud = pl.read_parquet(world / "truth" / "tx_truth.parquet", columns=["tx_id", "is_fraud"])
    first = (
        txs.join(fraud, on="tx_id")
        .filter(pl.col("is_fraud") & pl.col("user_id").is_in(list(users)))
        .group_by("user_id")
        .agg(pl.col("ts").min())
    )
    joined = dict(zip(first["user_id"], first["ts"], strict=True))
    signups = pl.read_parquet(world / "signups.parquet", columns=["user_id", "ts"])
    for user, ts in signups.filter(pl.col("user_id").is_in(list(users))).iter_rows():
        if ts >= start:
            joined[user] = ts
    return joined


def _delay(
    members: frozenset[str],
    fifth: int,
    joined: dict[str, int],
    every_version: list[tuple[str, int, frozenset[str], bool]],
) -> float | None:
    """Minutes from `fifth` to the first moment a standing flagged ring matches the members
    joined by then; None if none ever does. The match can only start when a member joins or
    a ring is (re-)announced, so only those moments (and `fifth` itself) are looked at."""
    relevant = [v for v in every_version if v[2] & members]  # in ts order
    joins = [ts for u in members if (ts := joined.get(u)) is not None and ts > fifth]
    moments = sorted({fifth, *joins, *(v[1] for v in relevant if v[1] > fifth)})
    standing: dict[str, frozenset[str]] = {}
    applied = 0
    for now in moments:
        while applied < len(relevant) and relevant[applied][1] <= now:
            ring_id, _, users, active = relevant[applied]
            if active:
                standing[ring_id] = users
            else:
                standing.pop(ring_id, None)
            applied += 1
        present = frozenset(u for u in members if joined.get(u, now + 1) <= now)
        if len(present) >= 5 and any(jaccard(u, present) >= MATCH for u in standing.values()):
            return (now - fifth) / MINUTE_MS
    return None


def _left_window(evidence: Any) -> bool:
    """Whether a retirement is the ring's accounts leaving the window (`LEFT_WINDOW`): the
    ring stopped, its last active version is still the verdict."""
    if isinstance(evidence, str):
        try:
            evidence = json.loads(evidence)
        except ValueError:
            return False
    return isinstance(evidence, dict) and bool(evidence.get(LEFT_WINDOW))


def ring_quality(rings: pl.DataFrame, world: Path) -> RingQuality:
    """`rings`: every version of every flagged ring (`rings.parquet`); `world`: the world's
    directory (its files and `truth/`)."""
    truth = pl.read_parquet(world / "truth" / "rings_truth.parquet")
    true = [
        (r["kind"], frozenset(r["users"]), r["fifth_member_joined_ts"])
        for r in truth.iter_rows(named=True)
    ]
    if "status" not in rings.columns:
        rings = rings.with_columns(pl.lit("active").alias("status"))
    if "evidence" not in rings.columns:
        rings = rings.with_columns(pl.lit(None, pl.String).alias("evidence"))
    ordered = rings.sort("ts", "ring_id", "version")
    every_version = [
        (r["ring_id"], r["ts"], frozenset(r["users"]), r["status"] == "active")
        for r in ordered.iter_rows(named=True)
    ]
    versions = [(ring_id, ts, users) for ring_id, ts, users, active in every_version if active]
    final: dict[str, frozenset[str]] = {}
    for ring_id, _, users in versions:
        final[ring_id] = users
    for ring_id, evidence in (
        ordered.filter(pl.col("status") != "active").select("ring_id", "evidence").iter_rows()
    ):
        if not _left_window(evidence):
            final.pop(ring_id, None)  # retired: withdrawn or superseded, no longer flagged
    joined = join_times(world, {u for _, users, _ in true for u in users})

    per_kind: dict[str, list[tuple[bool, float | None, float | None]]] = {}
    for kind, members, fifth in true:
        found = any(jaccard(users, members) >= MATCH for users in final.values())
        delay = delay_final = None
        if fifth is not None:
            delay = _delay(members, fifth, joined, every_version)
            for _, ts, users in versions:
                if jaccard(users, members) >= MATCH:
                    delay_final = (ts - fifth) / MINUTE_MS
                    break
        per_kind.setdefault(kind, []).append((found, delay, delay_final))
    precise = sum(
        1 for users in final.values() if any(jaccard(users, m) >= MATCH for _, m, _ in true)
    )
    flagged_users = {u for _, _, users in versions for u in users}
    roles = pl.read_parquet(world / "truth" / "user_truth.parquet", columns=["user_id", "role"])
    lookalikes = {}
    for group in LOOKALIKES:
        group_users = set(roles.filter(pl.col("role") == group)["user_id"])
        if group_users:
            lookalikes[group] = (len(group_users & flagged_users), len(group_users))
    outcomes = [o for rows in per_kind.values() for o in rows]
    return RingQuality(
        true_rings=len(true),
        found=sum(1 for found, _, _ in outcomes if found),
        flagged=len(final),
        precise=precise,
        median_delay_min=_median([d for _, d, _ in outcomes if d is not None]),
        median_delay_final_min=_median([d for _, _, d in outcomes if d is not None]),
        per_kind={
            kind: KindQuality(
                rings=len(rows),
                found=sum(1 for f, _, _ in rows if f),
                median_delay_min=_median([d for _, d, _ in rows if d is not None]),
                median_delay_final_min=_median([d for _, _, d in rows if d is not None]),
            )
            for kind, rows in per_kind.items()
        },
        lookalikes=lookalikes,
    )


def write_json(quality: RingQuality, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(quality.to_json(), indent=2, sort_keys=True) + "\n")
