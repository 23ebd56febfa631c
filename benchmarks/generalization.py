"""Held-out generalization: RebateGuard on simulated platforms it was never tuned on.

Generates worlds of the simulator family (profile "random": every platform knob, look-alike,
label process and abuse tactic drawn from the seed), replays each through the scoring path
with the shipped policy (or `--policy`), and prints per-world figures and the summary against
issue #17's targets (mean over the worlds; worst world within 1.5x). Tune only on
worlds below seed 100 (`--split tuning`: seeds 0-9; others with `--seeds`); report
`--split heldout` (seeds 100-119), never used for tuning.

    .venv/bin/python benchmarks/generalization.py --split heldout --jobs 2 \\
        --json benchmarks/results/generalization-heldout.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors.base import LEARNERS  # noqa: E402
from rebate_guard.tools.generalization import (  # noqa: E402
    HELDOUT_SEEDS,
    TUNING_SEEDS,
    WorldResult,
    per_world_table,
    run_world,
    table,
    write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("heldout", "tuning"), default="heldout")
    parser.add_argument("--seeds", type=int, nargs="*", help="instead of the split's seeds")
    parser.add_argument("--profile", default="random")
    parser.add_argument("--transactions", type=int, help="per world (the profile's default)")
    parser.add_argument("--days", type=int, help="per world (the profile's default)")
    parser.add_argument("--policy", type=Path, help="policy file (default: the shipped one)")
    parser.add_argument("--learner", choices=LEARNERS, default="logreg", help="the classifier")
    parser.add_argument("--jobs", type=int, default=2, help="worlds run at once")
    parser.add_argument("--json", type=Path, help="write every world's figures here")
    args = parser.parse_args()
    seeds = args.seeds or (HELDOUT_SEEDS if args.split == "heldout" else TUNING_SEEDS)
    run = partial(
        run_world,
        profile=args.profile,
        transactions=args.transactions,
        days=args.days,
        policy=args.policy,
        learner=args.learner,
    )
    started = time.perf_counter()
    results: list[WorldResult] = []
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for result in pool.imap_unordered(run, seeds):
            results.append(result)
            print(
                f"seed {result.seed}: {result.transactions:,} tx, legit withheld "
                f"{result.legit_withheld:.2%}, fraud withheld {result.fraud_withheld:.1%} "
                f"({result.seconds:.0f} s)",
                file=sys.stderr,
            )
    split = "given seeds" if args.seeds else f"{args.split} seeds {seeds[0]}-{seeds[-1]}"
    print(
        f"profile {args.profile!r}, {split}, {len(results)} worlds, policy "
        f"{args.policy or 'shipped default'}, learner {args.learner}, "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print(per_world_table(results))
    print()
    print(table(results))
    if args.json:
        write_json(
            results,
            args.json,
            profile=args.profile,
            split=args.split,
            seeds=list(seeds),
            policy=str(args.policy or "default"),
        )
        print(f"\njson: {args.json}")


if __name__ == "__main__":
    main()
