"""Ring quality of the graph layer alone on a simulated world (faster than a full replay).

Feeds the world's signups and transactions, in the replay's event-time order, to a
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

from graph.layer import GraphLayer, RingEvent  # noqa: E402
from rebate_guard.contract.records import Signup, Transaction  # noqa: E402
from rebate_guard.tools.replay import EventFiles, ring_frame  # noqa: E402
from rebate_guard.tools.ring_quality import ring_quality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/rings.parquet"))
    args = parser.parse_args()
    world: Path = args.world
    files = EventFiles(
        world / "transactions.parquet",
        world / "signups.parquet",
        world / "labels.parquet",
        progress=None,
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
        else:
            continue
        fed, last_ts = fed + 1, event.ts
    if last_ts is not None:
        events += layer.scan(last_ts)
    took = time.perf_counter() - started
    frame = ring_frame(events)
    frame.write_parquet(args.out)
    print(f"{fed:,} signups and transactions in {took:.1f} s; {len(events):,} ring events")
    print(f"({layer.analysed:,} group analyses, {layer.skipped:,} skipped as unchanged)\n")
    print(ring_quality(frame, world).table())


if __name__ == "__main__":
    main()
