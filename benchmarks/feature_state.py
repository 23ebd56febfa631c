"""Feature engine cost, split: parse, engine per transaction, and state bytes per key.

    .venv/bin/python benchmarks/feature_state.py --world /tmp/w200k

The world comes from `rebate-guard simulate --out DIR`. Times the three phases of
`rebate-guard features` separately (reading and parsing the files; the engine alone; nothing
else), then measures each family's state at the end of the world: keys held and bytes per key
(every object reachable from the family's state, counted once), and what a checkpoint of
that state costs.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.engine import FeatureEngine
from rebate_guard.contract.records import Signup, Transaction
from rebate_guard.tools.replay import EventFiles


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from `root` (each counted once; classes excluded)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    args = parser.parse_args()
    gc.set_threshold(100_000, 50, 1_000)  # as the CLI does for long-lived state
    w = args.world
    started = time.perf_counter()
    files = EventFiles(
        w / "transactions.parquet", w / "signups.parquet", w / "labels.parquet", progress=None
    )
    events = list(files)
    parse_s = time.perf_counter() - started
    n_tx = sum(isinstance(e, Transaction) for e in events)
    engine = FeatureEngine()
    started = time.perf_counter()
    for event in events:
        if isinstance(event, Transaction):
            engine.vector(event)
        elif isinstance(event, Signup):
            engine.signup(event)
        else:
            engine.label(event)
    engine_s = time.perf_counter() - started
    print(f"{len(events):,} events ({n_tx:,} transactions), {len(engine.names)} features")
    print("| phase | seconds | per event | transactions/s |")
    print("|---|---|---|---|")
    print(f"| read + parse | {parse_s:.1f} | {parse_s / len(events) * 1e6:.1f} µs | |")
    print(
        f"| engine | {engine_s:.1f} | {engine_s / n_tx * 1e6:.1f} µs per tx | "
        f"{n_tx / engine_s:,.0f} |"
    )
    families = {
        "user profiles": engine.user.profiles,
        "user activity": engine.user.activity,
        "merchants": engine.merchant.state,
        "categories": engine.entities.category.state,
        "devices": engine.entities.device.state,
        "ips": engine.entities.ip.state,
        "cards": engine.entities.card.state,
        "referrers": engine.entities.referral.state,
        "referral tree": engine.tree.entries,
    }
    print()
    print("| state | keys | MB | bytes/key |")
    print("|---|---|---|---|")
    for name, state in families.items():
        size = deep_size(state)
        per_key = size / len(state) if state else 0
        print(f"| {name} | {len(state):,} | {size / 1e6:,.1f} | {per_key:,.0f} |")
    label_map = engine.merchant.payment_merchant
    size = deep_size(label_map)
    per_key = size / max(len(label_map), 1)
    print(f"| tx -> merchant (labels) | {len(label_map):,} | {size / 1e6:,.1f} | {per_key:,.0f} |")
    print(f"\nkeys swept while running: {engine.swept:,}")
    # What a worker checkpoint costs at this state size (the worker pickles all of it).
    started = time.perf_counter()
    blob = pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)
    dump_s = time.perf_counter() - started
    started = time.perf_counter()
    pickle.loads(blob)
    load_s = time.perf_counter() - started
    print(
        f"checkpoint of the feature state: {len(blob) / 1e6:,.1f} MB, "
        f"pickled in {dump_s:.2f}s, restored in {load_s:.2f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
