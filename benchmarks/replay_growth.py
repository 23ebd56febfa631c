"""Replay's cost per event as history grows: rate, CPU, RSS and state sizes per slice of events.

    PYTHONPATH=. .venv/bin/python benchmarks/replay_growth.py --world /tmp/w1m --slice 100000
    PYTHONPATH=. .venv/bin/python benchmarks/replay_growth.py --simulate 250000 --seed 11
    PYTHONPATH=. .venv/bin/python benchmarks/replay_growth.py --card 5000 --days 183
    ... --profile-slices      # cProfile an early and a late slice: what grew per event

Runs the loop of `rebate-guard replay` (`rebate_guard.tools.replay.replay`: `EventFiles`
merged in event-time order, `Scorer(graph=GraphLayer()).apply` per event, decisions kept as
rows) and, every `--slice` events, prints: the slice's rate (wall) and CPU per event, where
that CPU went (parse, features, graph updates, graph scans, ring lookups, the decider and,
inside it, the model), RSS, and the size of every piece of state that could grow with history
(keys and entries of each feature family, the entity graph, the candidate groups, the ring
book, the decider's remembered vectors, ledger, friction budget and daily caps, the
detectors' state, the outputs). The component timers wrap the objects' methods (instance
attributes) and cost ~0.2 µs per call; `--no-split` leaves them out.

Before the replay it runs the ceilings of issue #20 item 5 over the same files: a bare Python
loop over the transactions file's rows, and `EventFiles` alone (read, merge, sort, parse:
what replay costs with nothing scored). Worlds: `--world DIR` (contract files from
`rebate-guard simulate --out DIR`), `--simulate N` (the simulator, `--profile`, `--seed`),
or `--card CUSTOMERS` (`benchmarks/card_world.py`'s card-fraud world, `--days`).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph.layer import GraphLayer
from rebate_guard.contract.records import Transaction
from rebate_guard.core.decider import Scorer
from rebate_guard.tools.replay import ChunkedRows, EventFiles, ReplayOutputs, fewer_collections

CONTAINERS = (dict, list, set, frozenset, deque, tuple)


# --- the world -------------------------------------------------------------------------------
def world_paths(args: argparse.Namespace, scratch: Path) -> dict[str, Path]:
    """The contract files to replay: given, simulated, or the card world written out."""
    if args.world is not None:
        w = args.world
    elif args.simulate is not None:
        w = scratch / "world"
        command = [sys.executable, "-m", "rebate_guard.cli", "simulate", "--out", str(w)]
        command += ["--profile", args.profile, "--seed", str(args.seed)]
        subprocess.run([*command, "--transactions", str(args.simulate)], check=True)
    else:
        from benchmarks.card_world import CardWorldConfig, generate, write_events

        config = CardWorldConfig(customers=args.card, terminals=2 * args.card, days=args.days)
        return write_events(generate(config), scratch / "card")
    return {
        "transactions": w / "transactions.parquet",
        "signups": w / "signups.parquet",
        "labels": w / "labels.parquet",
    }


# --- what each part of the state holds -------------------------------------------------------
def entries(root: Any, limit: int = 50_000_000) -> int:
    """Items held in every container reachable from `root` (dicts, lists, sets, deques,
    tuples; each counted once): how much a piece of state holds, whatever its shape."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, int, float, bool, type, bytes)):
            continue
        seen.add(id(obj))
        if isinstance(obj, CONTAINERS):
            total += len(obj)
        stack.extend(gc.get_referents(obj))
    return total


def state_parts(scorer: Scorer, outputs: ReplayOutputs) -> dict[str, Any]:
    """Every piece of state that may grow with history, by name (what the table shows)."""
    engine, decider = scorer.features, scorer.decider
    users, entities = engine.users.user, engine.entities
    parts: dict[str, Any] = {
        "f.user_profiles": users.profiles,
        "f.user_activity": users.activity,
        # Its parts, one per user (entries include the one list of users): which one grows.
        "f.user_activity: payment logs": [a.payments for a in users.activity.values()],
        "f.user_activity: 24 h distincts": [
            (a.merchants_24h, a.devices_24h, a.ips_24h) for a in users.activity.values()
        ],
        "f.user_activity: merchant pairs": [a.pairs_7d for a in users.activity.values()],
        "f.user_activity: refund lookback": [a.recent_payments for a in users.activity.values()],
        "f.merchants": entities.merchant.state,
        "f.merchant_payment_of_tx": entities.merchant.payment_merchant,
        "f.categories": entities.category.state,
        "f.devices": entities.device.state,
        "f.ips": entities.ip.state,
        "f.cards": entities.card.state,
        "f.referrers": entities.referral.state,
        "f.referral_tree": engine.tree.entries,
        "f.referral_depths": engine.tree.memo.depths,
        "d.remembered": decider.remembered.kept,
        "d.by_user": decider.remembered.by_user,
        "d.granted": decider.granted,
        "d.granted_24h": decider.granted_24h,
        "d.user_labels": decider.user_labels,
        "ledger.entries": decider.ledger.entries,
        "ledger.by_user": decider.ledger.by_user,
        "ledger.holds": decider.ledger.holds,
        "budget.recorded": decider.budget.recorded,
        "budget.epochs": decider.budget.epochs,
        "model": decider.model,
        "drift": decider.drift,
        # The outputs (`state_sizes`: rows so far / rows still Python values, the rest in
        # Polars chunks); replay takes the scorer's adjustments and ring events each event.
        "out.decisions (rows / in Python)": outputs.decisions,
        "out.adjustments (rows / in Python)": outputs.adjustments,
        "out.ring_events (rows / in Python)": outputs.rings,
    }
    layer = scorer.graph
    if layer is not None:
        graph, candidates, book = layer.graph, layer.candidates, layer.book
        parts |= {
            "g.edges": graph.edges,
            "g.nodes": graph.adjacent,
            "g.users": graph.users,
            "g.payments": graph.payments,
            "g.touched_days": graph.touched_days,
            "g.regular_payers": graph.regular_payers,
            "g.rebate_rates": graph.rebate_rates,
            "c.parent": candidates.parent,
            "c.members": candidates.members,
            "c.touches": candidates.touches,
            "c.signup_ips": candidates.signup_ips,
            "c.analysed_as": layer.analysed_as,
            "book.rings": book.rings,
            "book.by_user": book.by_user,
        }
    return parts


def state_sizes(
    scorer: Scorer, outputs: ReplayOutputs, *, deep: bool
) -> dict[str, tuple[int, int]]:
    """name -> (keys, entries): the top container's length and everything it holds (-1:
    not counted this slice; the census walks every object, seconds on a big state). An
    output table: (rows, rows still held as Python values)."""
    out = {}
    for name, part in state_parts(scorer, outputs).items():
        if isinstance(part, ChunkedRows):
            out[name] = (len(part), part.held)
            continue
        keys = len(part) if isinstance(part, CONTAINERS) else 0
        out[name] = (keys, entries(part) if deep else -1)
    return out


# --- where the time goes ---------------------------------------------------------------------
@dataclass
class Timers:
    """Seconds spent in each wrapped method since the last `take`."""

    seconds: dict[str, float] = field(default_factory=dict)

    def wrap(self, owner: Any, method: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, method)
        seconds = self.seconds
        seconds.setdefault(name, 0.0)
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[name] += clock() - started

        setattr(owner, method, timed)

    def take(self) -> dict[str, float]:
        out = dict(self.seconds)
        for name in self.seconds:
            self.seconds[name] = 0.0
        return out


#: Disjoint parts of the loop (they add up to the scorer's time); the model is inside
#: `decider`. graph.update: the entity graph and the candidate groups taking an event in;
#: graph.scan: the scheduled scans, expiry, rebuilds and retirements (`GraphLayer.due`).
TOP_PARTS = ("features", "graph.update", "graph.scan", "ring_score", "decider")


def instrument(scorer: Scorer) -> Timers:
    timers = Timers()
    engine, decider = scorer.features, scorer.decider
    for method in ("vector", "signup", "label"):
        timers.wrap(engine, method, "features")
    for method in ("decide", "label"):
        timers.wrap(decider, method, "decider")
    timers.wrap(decider.model, "assess", "model.assess")
    timers.wrap(decider.model, "learn_scored", "model.learn_scored")
    timers.wrap(decider.model, "learn_one", "model.learn")
    layer = scorer.graph
    if layer is not None:
        timers.wrap(layer.graph, "transaction", "graph.update")
        timers.wrap(layer.graph, "signup", "graph.update")
        timers.wrap(layer.candidates, "observe", "graph.update")
        timers.wrap(layer, "due", "graph.scan")
        timers.wrap(layer, "ring_score", "ring_score")
        timers.wrap(layer.candidates, "rebuild", "scan.rebuild")
        timers.wrap(layer.graph, "expire", "scan.expire")
        timers.wrap(layer, "scan", "scan.analyse")
    return timers


# --- the replay, sliced ----------------------------------------------------------------------
@dataclass
class Slice:
    done: int
    transactions: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    parts_s: dict[str, float]
    sizes: dict[str, tuple[int, int]]
    profiled: bool = False
    #: CPU seconds the cyclic GC took during the slice.
    gc_s: float = 0.0


@dataclass
class GcClock:
    """CPU seconds spent in the cyclic GC's collections since the last `take`."""

    seconds: float = 0.0
    started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.process_time()
        else:
            self.seconds += time.process_time() - self.started

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sliced_replay(
    paths: dict[str, Path],
    slice_events: int,
    *,
    outputs: ReplayOutputs,
    split: bool,
    profile_at: tuple[int, ...] = (),
    deep_every: int = 1,
    default_gc: bool = False,
) -> tuple[list[Slice], dict[int, pstats.Stats]]:
    """Replays the world as `replay` does, measuring every `slice_events` events; the slices
    numbered in `profile_at` (0-based; -1: the last whole one) run under cProfile.
    `default_gc`: with Python's GC thresholds, not replay's (`fewer_collections`).
    `outputs`: where the rows go (`ReplayOutputs.spilling_to`, as replay's do)."""
    scorer = Scorer(graph=GraphLayer())
    timers = instrument(scorer) if split else Timers()
    files = EventFiles(paths["transactions"], paths.get("signups"), paths.get("labels"), None)
    out = outputs
    slices: list[Slice] = []
    profiles: dict[int, pstats.Stats] = {}
    events: Iterator[Any] = iter(files)
    index = 0
    collections = GcClock()
    gc.callbacks.append(collections)
    with nullcontext() if default_gc else fewer_collections():
        while True:
            profiler = cProfile.Profile() if index in profile_at else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            n = transactions = 0
            try:
                for event in events:
                    decision = scorer.apply(event, decided_at=int(time.time() * 1000))
                    out.collect(decision, scorer)
                    transactions += isinstance(event, Transaction)
                    n += 1
                    if n == slice_events:
                        break
            except KeyboardInterrupt:  # stopped (SIGTERM too): report the slices done
                break
            if profiler is not None:
                profiler.disable()
                profiles[index] = pstats.Stats(profiler)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if n == 0:
                break
            done = (slices[-1].done if slices else 0) + n
            parts, gc_s = timers.take(), collections.take()
            sizes = state_sizes(scorer, out, deep=index % deep_every == 0 or n < slice_events)
            slices.append(
                Slice(
                    done,
                    transactions,
                    wall,
                    cpu,
                    rss_mb(),
                    parts,
                    sizes,
                    profiled=profiler is not None,
                    gc_s=gc_s,
                )
            )
            print(
                f"  {done:,} events: {n / wall:,.0f}/s, {cpu / n * 1e6:,.0f} CPU µs/event,"
                f" {rss_mb():,.0f} MB",
                file=sys.stderr,
            )
            index += 1
            if n < slice_events:
                break
    gc.callbacks.remove(collections)
    return slices, profiles


def ceilings(paths: dict[str, Path]) -> list[tuple[str, int, float, float]]:
    """(what, events, wall s, CPU s) of the bare loops over the same files."""
    out = []
    frame = pl.read_parquet(paths["transactions"])
    wall, cpu = time.perf_counter(), time.process_time()
    n = 0
    for _row in frame.iter_rows(named=True):
        n += 1
    out.append(("bare loop over transactions.parquet rows", n, *_since(wall, cpu)))
    files = EventFiles(paths["transactions"], paths.get("signups"), paths.get("labels"), None)
    wall, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in files)
    out.append(("EventFiles: read, merge, sort, parse (nothing scored)", n, *_since(wall, cpu)))
    return out


def _since(wall: float, cpu: float) -> tuple[float, float]:
    return time.perf_counter() - wall, time.process_time() - cpu


# --- printing --------------------------------------------------------------------------------
def print_ceilings(rows: list[tuple[str, int, float, float]], replay_rate: float) -> None:
    print("| loop | events | events/s | CPU µs/event | replay's rate / this |")
    print("|---|---|---|---|---|")
    for what, n, wall, cpu in rows:
        rate = n / wall
        print(f"| {what} | {n:,} | {rate:,.0f} | {cpu / n * 1e6:.1f} | {replay_rate / rate:.3f} |")


def print_slices(slices: list[Slice], split: bool) -> None:
    head = ["events done", "tx", "events/s", "CPU µs/event", "CPU µs/tx", "GC µs", "RSS MB"]
    if split:
        head += [f"{p} µs" for p in TOP_PARTS] + ["parse+loop µs", "model µs"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in slices:
        n = s.done - (slices[slices.index(s) - 1].done if slices.index(s) else 0)
        row = [f"{s.done:,}", f"{s.transactions:,}", f"{n / s.wall_s:,.0f}"]
        row += [
            f"{s.cpu_s / n * 1e6:.0f}",
            f"{s.cpu_s / s.transactions * 1e6:.0f}" if s.transactions else "-",
        ]
        row.append(f"{s.gc_s / n * 1e6:.1f}")
        row.append(f"{s.rss_mb:,.0f}")
        if split:
            parts = s.parts_s
            scored = sum(parts.get(p, 0.0) for p in TOP_PARTS)
            row += [f"{parts.get(p, 0.0) / n * 1e6:.1f}" for p in TOP_PARTS]
            row.append(f"{(s.wall_s - scored) / n * 1e6:.1f}")
            model = sum(v for k, v in parts.items() if k.startswith("model."))
            row.append(f"{model / n * 1e6:.1f}")
        if s.profiled:
            row[2] += " (profiled)"
        print("| " + " | ".join(row) + " |")
    if split:
        print()
        inside = sorted(k for k in slices[0].parts_s if k.startswith(("scan.", "model.")))
        print("| events done | " + " | ".join(f"{k} µs" for k in inside) + " |")
        print("|" + "---|" * (len(inside) + 1))
        previous = 0
        for s in slices:
            n, previous = s.done - previous, s.done
            cells = [f"{s.parts_s.get(k, 0.0) / n * 1e6:.1f}" for k in inside]
            print(f"| {s.done:,} | " + " | ".join(cells) + " |")


def print_sizes(slices: list[Slice]) -> None:
    """State sizes (keys / entries) at a few points, and their growth first -> last."""
    counted = [s for s in slices if next(iter(s.sizes.values()))[1] >= 0]
    picks = sorted({0, len(counted) // 4, len(counted) // 2, len(counted) - 1})
    chosen = [counted[i] for i in picks]
    print("| state (keys / entries) | " + " | ".join(f"{s.done:,} ev" for s in chosen) + " | x |")
    print("|" + "---|" * (len(chosen) + 2))
    for name in chosen[0].sizes:
        cells = [f"{s.sizes[name][0]:,} / {s.sizes[name][1]:,}" for s in chosen]
        first, last = chosen[0].sizes[name][1], chosen[-1].sizes[name][1]
        growth = f"{last / first:.1f}" if first else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {growth} |")


def print_profile_growth(early: pstats.Stats, late: pstats.Stats, n: int, top: int) -> None:
    """The functions whose total (own + callees) and own time per event grew most between
    two profiled slices of `n` events each."""
    before: dict[Any, Any] = early.stats  # type: ignore[attr-defined]
    after: dict[Any, Any] = late.stats  # type: ignore[attr-defined]
    rows: list[tuple[str, list[float]]] = []
    for key in set(before) | set(after):
        # Per event: cumulative µs, own µs, calls; then µs per call.
        _, e_calls, e_own, e_cum, _ = before.get(key, (0, 0, 0.0, 0.0, {}))
        _, l_calls, l_own, l_cum, _ = after.get(key, (0, 0, 0.0, 0.0, {}))
        cells = [e_cum / n * 1e6, l_cum / n * 1e6, e_own / n * 1e6, l_own / n * 1e6]
        cells += [e_calls / n, l_calls / n]
        cells += [
            e_cum / e_calls * 1e6 if e_calls else 0.0,
            l_cum / l_calls * 1e6 if l_calls else 0.0,
        ]
        file, line, name = key
        where = f"{Path(file).parent.name}/{Path(file).name}:{line} {name}"
        rows.append((where, cells))
    head = ("cum µs/ev", "own µs/ev", "calls/ev", "µs/call")
    for title, growth in (
        ("total (own + callees)", lambda c: c[1] - c[0]),
        ("own", lambda c: c[3] - c[2]),
    ):
        print(f"\nWhose {title} time per event grew most, early slice -> late slice:\n")
        print("| function | " + " | ".join(f"{h} early | {h} late" for h in head) + " |")
        print("|---|" + "---|" * 2 * len(head))
        for where, cells in sorted(rows, key=lambda r: -growth(r[1]))[:top]:
            text = [f"{v:.1f}" for v in cells[:4]] + [f"{v:.3f}" for v in cells[4:6]]
            text += [f"{v:.2f}" for v in cells[6:]]
            print(f"| {where} | " + " | ".join(text) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    world = parser.add_mutually_exclusive_group(required=True)
    world.add_argument("--world", type=Path, help="a directory of contract files")
    world.add_argument("--simulate", type=int, metavar="N", help="simulate N transactions")
    world.add_argument("--card", type=int, metavar="CUSTOMERS", help="the card-fraud world")
    parser.add_argument("--profile", default="default", help="the simulator's profile")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--days", type=int, default=150, help="the card world's days")
    parser.add_argument("--slice", type=int, default=50_000, help="events per slice")
    parser.add_argument("--no-split", action="store_true", help="no per-component timers")
    parser.add_argument(
        "--deep-every", type=int, default=4, help="count state entries every N slices"
    )
    parser.add_argument("--no-ceilings", action="store_true")
    parser.add_argument(
        "--default-gc", action="store_true", help="Python's GC thresholds, not replay's"
    )
    parser.add_argument(
        "--profile-slices",
        action="store_true",
        help="cProfile the second slice and the last whole one; print what grew",
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile table")
    args = parser.parse_args(argv)
    # `timeout` stops a long run with SIGTERM: the slices done are still printed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    gc.set_threshold(100_000, 50, 1_000)  # as the CLI does for replay
    with tempfile.TemporaryDirectory() as scratch:
        paths = world_paths(args, Path(scratch))
        total = pl.scan_parquet(paths["transactions"]).select(pl.len()).collect().item()
        late = -1
        if args.profile_slices:
            # The last whole slice: the events EventFiles will yield, at most.
            n_events = total + sum(
                pl.scan_parquet(paths[k]).select(pl.len()).collect().item()
                for k in ("signups", "labels")
                if paths.get(k) is not None and paths[k].exists()
            )
            late = n_events // args.slice - 1
        profile_at = (1, late) if args.profile_slices else ()
        ceiling_rows = [] if args.no_ceilings else ceilings(paths)
        gc.collect()
        (Path(scratch) / "parts").mkdir()
        slices, profiles = sliced_replay(
            paths,
            args.slice,
            outputs=ReplayOutputs.spilling_to(Path(scratch) / "parts"),
            split=not args.no_split,
            profile_at=profile_at,
            deep_every=args.deep_every,
            default_gc=args.default_gc,
        )
    done = slices[-1].done
    seconds = sum(s.wall_s for s in slices)  # the census between slices left out
    print(f"\n{done:,} events ({total:,} transactions) in {seconds:.1f} s: {done / seconds:,.0f}/s")
    print(f"slices of {args.slice:,} events; RSS at the end {slices[-1].rss_mb:,.0f} MB\n")
    if ceiling_rows:
        print_ceilings(ceiling_rows, done / seconds)
        print()
    print_slices(slices, split=not args.no_split)
    print()
    print_sizes(slices)
    if args.profile_slices and len(profiles) == 2:
        (_, early), (_, late_stats) = sorted(profiles.items())
        print_profile_growth(early, late_stats, args.slice, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
