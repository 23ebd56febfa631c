"""Graph layer cost: incremental updates, a full candidate scan, memory per edge.

Feeds a simulated world's signups, transactions and the platform events the graph reads
(bindings, commissions, points transfers; when the world has them) in event-time order into
the entity graph and the candidate groups, with no expiry, so the window holds everything;
then times a full candidate scan: rebuilding the groups from the window and analysing every
group a ring could be in (identity groups of 2+ users, every small merchant that could anchor
a money ring, every binder and receiver of points that could be a ring's).
Memory per edge is the resident-set growth while the graph was built, over its edges (it
includes the adjacency sets, the union-find and the per-user records). Prints a table.

    .venv/bin/python benchmarks/graph.py --world /tmp/w1m
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.layer import GRAPH_EVENT_KINDS, GraphConfig, GraphLayer  # noqa: E402
from graph.rings import (  # noqa: E402
    analyse_binder,
    analyse_identity_group,
    analyse_merchant_group,
    analyse_receiver,
)
from rebate_guard.contract.records import PlatformEvent, Signup, Transaction  # noqa: E402
from rebate_guard.tools.replay import EventFiles  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    args = parser.parse_args()
    gc.set_threshold(100_000, 50, 1_000)
    world = args.world
    platform = world / "platform_events.parquet"
    files = EventFiles(
        world / "transactions.parquet",
        world / "signups.parquet",
        None,
        progress=None,
        platform_events=platform if platform.exists() else None,
    )
    events = [
        e
        for e in files
        if isinstance(e, Signup | Transaction)
        or (isinstance(e, PlatformEvent) and e.kind in GRAPH_EVENT_KINDS)
    ]
    flows = sum(isinstance(e, PlatformEvent) for e in events)
    gc.collect()
    before = _rss_bytes()
    # Keep everything: the window is the whole world.
    layer = GraphLayer(GraphConfig(window_ms=10**15))
    graph, candidates = layer.graph, layer.candidates
    started = time.perf_counter()
    for event in events:
        if isinstance(event, PlatformEvent):
            layer.platform_event(event)  # (no scan: only `due` scans)
            continue
        touched = graph.signup(event) if isinstance(event, Signup) else graph.transaction(event)
        candidates.observe(graph, touched)
    update_s = time.perf_counter() - started
    gc.collect()
    per_edge = (_rss_bytes() - before) / max(1, len(graph.edges))

    started = time.perf_counter()
    candidates.rebuild(graph)
    roots = candidates.take_dirty(min_users=2)
    rebuild_s = time.perf_counter() - started
    candidates.dirty_merchants.update(n for n in graph.adjacent if n.startswith("m:"))
    merchants = candidates.take_dirty_merchants(graph)
    findings = []
    for root in roots:
        findings += analyse_identity_group(graph, candidates.group(root), now=0)
    for merchant in merchants:
        findings += analyse_merchant_group(graph, candidates.merchant_group(graph, merchant), now=0)
    candidates.dirty_binders.update(graph.bound)
    candidates.dirty_receivers.update(graph.givers)
    # One analysis per kind of anchor: a binding merchant's, a points receiver's.
    anchors: list[tuple[str, Callable[..., list[Any]]]]
    anchors = [(m, analyse_binder) for m in candidates.take_dirty_binders(graph)]
    anchors += [(r, analyse_receiver) for r in candidates.take_dirty_receivers(graph)]
    for anchor, analyse in anchors:
        findings += analyse(graph, anchor, now=0)
    scan_s = time.perf_counter() - started
    flagged = sum(1 for f in findings if f.score >= 0.5)

    rate = graph.updates / update_s
    groups = (
        f"{len(roots):,} identity and {len(merchants):,} merchant groups, "
        f"{len(anchors):,} binders and receivers"
    )
    print(
        f"{len(events):,} events ({flows:,} bindings, commissions, transfers), "
        f"{graph.updates:,} edge updates, {len(graph.edges):,} edges, "
        f"{len(graph.bindings):,} bindings, {len(graph.transfers):,} transfers"
    )
    print("| what | result |")
    print("|---|---|")
    print(
        f"| incremental updates (graph + groups) | {rate:,.0f} edge updates/s ({update_s:.1f} s) |"
    )
    print(f"| full candidate scan: rebuild the groups | {rebuild_s:.1f} s |")
    print(f"| full candidate scan: rebuild + analyse {groups} | {scan_s:.1f} s |")
    print(f"| findings scoring >= 0.5 in that scan (no ring book) | {flagged:,} |")
    print(f"| memory per edge (resident set growth / edges) | {per_edge:,.0f} bytes |")
    print(f"| graph time per event (updates only) | {update_s / len(events) * 1e6:.1f} us |")


if __name__ == "__main__":
    main()
