"""Ring quality of the graph layer alone on a simulated world (faster than a full replay).

Feeds the world's signups, transactions and platform events (when the world has them; not
with `--no-platform-events`), in the replay's event-time order, to a
`GraphLayer` (the same code the replay and the worker's graph shard run), finishes with the
end-of-input scan as replay does, writes the ring events to `--out` and prints the ring-quality
table of `rebate-guard evaluate --rings` (found, precision, look-alikes, detection delay).

    .venv/bin/rebate-guard simulate --out /tmp/w1m --transactions 1000000
    .venv/bin/python benchmarks/rings.py --world /tmp/w1m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.layer import GRAPH_EVENT_KINDS, GraphLayer, RingEvent  # noqa: E402
from rebate_guard.contract.records import PlatformEvent, Signup, Transaction  # noqa: E402
from rebate_guard.tools.replay import EventFiles, ring_frame  # noqa: E402
from rebate_guard.tools.ring_quality import ring_quality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/rings.parquet"))
    parser.add_argument("--no-platform-events", action="store_true")
    args = parser.parse_args()
    world: Path = args.world
    platform = world / "platform_events.parquet"
    files = EventFiles(
        world / "transactions.parquet",
        world / "signups.parquet",
        world / "labels.parquet",
        progress=None,
        platform_events=None if args.no_platform_events or not platform.exists() else platform,
    )
    layer = GraphLayer()
    events: list[RingEvent] = []
    fed, last_ts = 0, None
    started = time.perf_counter()
    for event in files:
        if isinstance(event, Transaction):
            events += layer.transaction(event)
        elif isinstance(event, Signup):
            events += layer.signup(event)
        elif isinstance(event, PlatformEvent) and event.kind in GRAPH_EVENT_KINDS:
            events += layer.platform_event(event)
        else:
            continue
        fed, last_ts = fed + 1, event.ts
    if last_ts is not None:
        events += layer.scan(last_ts)
    took = time.perf_counter() - started
    frame = ring_frame(events)
    frame.write_parquet(args.out)
    per_event = took / max(1, fed) * 1e6
    print(
        f"{fed:,} signups, transactions and platform events the graph reads in {took:.1f} s "
        f"({per_event:.1f} us each); {len(events):,} ring events"
    )
    print(f"({layer.analysed:,} group analyses, {layer.skipped:,} skipped as unchanged)\n")
    print(ring_quality(frame, world).table())


if __name__ == "__main__":
    main()
