"""`rebate-guard`: one command, subcommands for each job.

up        the main job: local broker + Redis, worker, simulator and dashboard
worker    a Faust worker (scale by running more; partitions split between them)
simulate  a seeded rebate-platform world, to files or to the broker at a rate
replay    contract files through the scoring path, offline (backtests)
features  the feature vector of every transaction, offline (same code as the worker)
evaluate  ROC AUC, average precision, top-k users per day, per scenario, of decisions
report    a replay directory as a self-contained HTML report (charts, tables, ring graphs)
policy    check a policy file, push it live (hot reload), show the live one
topics    create the contract topics (idempotent)
users     the console's users and their roles: add, list, remove, role
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rebate_guard.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"rebate-guard: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command in LONG_LIVED_STATE:
        _tune_gc()
    handler = args.handler
    try:
        return int(handler(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"rebate-guard {args.command}: {exc}", file=sys.stderr)
        return 2


# Commands that hold millions of window objects: the feature state has no reference cycles, so
# the cyclic collector's frequent full passes over it are pure cost (~20% of replay time).
LONG_LIVED_STATE = ("worker", "replay", "features")


def _tune_gc() -> None:
    gc.set_threshold(100_000, 50, 1_000)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rebate-guard", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole pipeline locally (Ctrl-C stops it)")
    up.add_argument(
        "--rate", type=float, help="events per second of the back-fill (RG_SIMULATE_RATE)"
    )
    up.add_argument("--workers", type=int, default=1, help="worker processes")
    up.add_argument("--seed", type=int, default=7)
    up.add_argument(
        "--backfill-days",
        type=int,
        help="days of the platform's payments back-filled before live traffic (default 1; reviews "
        "label payments 2-9 days later: 10 gives the classifier ~700 labels, ~7 min at 500/s)",
    )
    up.set_defaults(handler=_up)

    worker = sub.add_parser("worker", help="run a Faust worker")
    worker.set_defaults(handler=_worker)

    sim = sub.add_parser("simulate", help="generate a simulated world")
    sim.add_argument("--out", type=Path, help="write contract files into this directory")
    sim.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    sim.add_argument(
        "--profile",
        choices=("default", "random"),
        default="default",
        help="the world family: today's world, or every knob randomised by the seed",
    )
    sim.add_argument(
        "--transactions", type=int, help="about this many (default: the profile's, 100k / 80k)"
    )
    sim.add_argument("--days", type=int, help="window length (default: the profile's, 28 / 45)")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument(
        "--stall-day",
        type=float,
        help="the platform's growth stalls on this day of the window: new signups and new "
        "money fall to a tenth, existing users keep paying and redeeming",
    )
    sim.add_argument("--produce", action="store_true", help="produce to the broker instead")
    sim.add_argument("--rate", type=float, help="events per second when producing")
    sim.set_defaults(handler=_simulate)

    offline = (
        ("replay", "run contract files through the scoring path", "output directory"),
        ("features", "feature vectors per transaction, offline", "e.g. features.parquet"),
    )
    for name, help_text, out_help in offline:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--transactions", type=Path, required=True)
        cmd.add_argument("--signups", type=Path)
        cmd.add_argument("--labels", type=Path)
        cmd.add_argument("--out", type=Path, required=True, help=out_help)
        cmd.add_argument("--quiet", action="store_true", help="no progress bar")
        cmd.add_argument(
            "--platform-events",
            type=Path,
            help="the platform's money and points events (platform_events.*), which the "
            "features learn as the worker's do; replay also decides the points requests and "
            "writes the solvency monitor's solvency.parquet and platform_alerts.parquet "
            "(docs/economics.md)",
        )
        if name == "replay":
            cmd.add_argument(
                "--policy",
                type=Path,
                help="rebate policy file (TOML or JSON; default: RG_POLICY_FILE or the "
                "shipped one)",
            )
        cmd.set_defaults(handler=_replay)

    ev = sub.add_parser("evaluate", help="how well decisions rank fraud (labels or truth)")
    ev.add_argument("--decisions", type=Path, required=True, help="decisions.parquet (replay)")
    against = ev.add_mutually_exclusive_group(required=True)
    against.add_argument("--labels", type=Path, help="labels.parquet: labelled sample only")
    against.add_argument("--truth", type=Path, help="the world's truth dir or tx_truth.parquet")
    ev.add_argument("--top-k", type=int, default=10, help="users per day in the review queue")
    ev.add_argument("--json", type=Path, help="also write the figures here")
    ev.add_argument(
        "--adjustments",
        type=Path,
        help="adjustments.parquet (replay): also the money withheld in the end, after labels, "
        "refunds and hold timeouts",
    )
    ev.add_argument(
        "--rings",
        type=Path,
        help="rings.parquet (replay): also rate ring detection against the truth's rings "
        "(needs --truth DIR of a simulated world)",
    )
    ev.add_argument(
        "--budget",
        type=float,
        help="the policy's legit_friction: compare the legitimate money withheld with it "
        "(default: from the budget.json replay wrote next to the decisions, if in budget mode)",
    )
    ev.set_defaults(handler=_evaluate)

    report = sub.add_parser(
        "report", help="a replay directory as one self-contained HTML file (charts, rings)"
    )
    report.add_argument("replay_dir", type=Path, metavar="REPLAY_DIR", help="replay's --out")
    report.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file")
    report.add_argument(
        "--top-rings", type=int, default=10, help="rings drawn, by rebate money at risk"
    )
    report.add_argument(
        "--world",
        type=Path,
        help="the replayed contract files' directory, with truth/ if simulated (default: "
        "from the inputs.json replay wrote)",
    )
    report.add_argument("--truth", type=Path, help="the world's truth dir (overrides --world's)")
    report.add_argument("--labels", type=Path, help="labels file, used when there is no truth")
    report.add_argument(
        "--policy",
        type=Path,
        help="the policy replay ran with, for the solvency lines drawn (default: "
        "RG_POLICY_FILE or the shipped one)",
    )
    report.set_defaults(handler=_report)

    policy = sub.add_parser("policy", help="check, push (hot reload) or show the rebate policy")
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a policy file (TOML or JSON)")
    check.add_argument("file", type=Path)
    push = actions.add_parser(
        "push",
        help="validate a policy file and make it the live one: workers take it up within "
        "RG_POLICY_POLL_S, without a restart",
    )
    push.add_argument("file", type=Path)
    show = actions.add_parser("show", help="print the live policy (JSON)")
    show.add_argument("--version", help="a past version's document instead")
    policy.set_defaults(handler=_policy)

    topics = sub.add_parser("topics", help="create the contract topics (idempotent)")
    topics.set_defaults(handler=_topics)

    _users_parser(sub)
    return parser


def _users_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from streams.roles import ROLES

    users = sub.add_parser(
        "users",
        help="the console's users (RG_CONSOLE_USERS_FILE); running workers take changes up at once",
    )
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user (the password is asked for, or read)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    add.add_argument(
        "--replace", action="store_true", help="a user of that name is replaced (new password)"
    )
    actions.add_parser("list", help="the users and their roles")
    remove = actions.add_parser("remove", help="remove a user (their sessions end)")
    remove.add_argument("name")
    role = actions.add_parser("role", help="change a user's role (their sessions end)")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    users.set_defaults(handler=_users)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from rebate_guard.tools.runner import run_worker

    return run_worker(settings)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from rebate_guard.tools.runner import run_up

    if args.rate is not None:
        settings = settings.replace(simulate_rate=args.rate)
    if args.backfill_days is not None and args.backfill_days < 1:
        print("rebate-guard up: --backfill-days must be >= 1", file=sys.stderr)
        return 2
    return run_up(settings, workers=args.workers, seed=args.seed, backfill_days=args.backfill_days)


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from rebate_guard.tools.simulator import config_json, simulate_world, world_config, write_world

    config = world_config(
        args.profile, seed=args.seed, transactions=args.transactions, days=args.days
    )
    if args.stall_day is not None:
        try:
            config = dataclasses.replace(config, stall_day=args.stall_day)
        except ValueError as exc:
            print(f"rebate-guard simulate: {exc}", file=sys.stderr)
            return 2
    if args.produce:
        from rebate_guard.tools.producer import produce_world

        rate = args.rate if args.rate is not None else settings.simulate_rate
        world = simulate_world(config)
        sent = asyncio.run(produce_world(settings, world, rate=rate))
        print(f"produced {sent:,} events at up to {rate:,.0f}/s")
        return 0
    if args.out is None:
        print("rebate-guard simulate: give --out DIR or --produce", file=sys.stderr)
        return 2
    world = simulate_world(config)
    paths = write_world(world, args.out, args.format)
    paths["config"] = args.out / "truth" / "config.json"
    paths["config"].write_text(json.dumps(config_json(config), indent=2) + "\n")
    for name, path in paths.items():
        print(f"{name:>14}: {path}")
    print(
        f"{world.transactions.height:,} transactions, {world.signups.height:,} signups, "
        f"{world.labels.height:,} labels, {world.platform_events.height:,} platform events"
    )
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from features.engine import FeatureEngine
    from graph.layer import GraphLayer
    from rebate_guard.core.decider import Decider, Scorer
    from rebate_guard.core.policy import Policy
    from rebate_guard.tools.replay import compute_features, replay

    inputs = {
        "transactions": args.transactions,
        "signups": args.signups,
        "labels": args.labels,
        "platform_events": args.platform_events,
    }
    progress = None if args.quiet else sys.stderr
    if args.command == "features":
        config = settings.engine_config()
        summary = compute_features(**inputs, out=args.out, progress=progress, config=config)
    else:
        policy = Policy.load(args.policy) if args.policy else settings.policy()
        scorer = Scorer(
            features=FeatureEngine(settings.engine_config()),
            decider=Decider(model=settings.risk_model(), policy=policy),
            graph=GraphLayer(),
        )
        summary = replay(
            **inputs,
            out_dir=args.out,
            progress=progress,
            scorer=scorer,
        )
    rows = "feature rows" if args.command == "features" else "decisions"
    print(
        f"{summary.events:,} events in {summary.seconds:.1f}s ({summary.events_per_s:,.0f}/s): "
        f"{summary.decisions:,} {rows}, {summary.duplicates:,} duplicate tx_ids, "
        f"{summary.dead_letters:,} dead letters"
    )
    for name, path in summary.outputs.items():
        print(f"{name:>14}: {path}")
    for group, state in (summary.budget or {}).get("groups", {}).items():
        achieved = state["achieved_legit_friction"]
        print(
            f"budget {group}: cut {state['cut']}, block cut {state['block_cut']}, "
            f"{state['payments']:,} payments in the window, legit friction "
            f"{'n/a' if achieved is None else f'{achieved:.2%}'} (upper bound) against "
            f"{state['legit_friction']:.2%}"
        )
    return 0


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from rebate_guard.tools.evaluate import evaluate, write_json

    result = evaluate(
        args.decisions,
        labels=args.labels,
        truth=args.truth,
        top_k=args.top_k,
        adjustments=args.adjustments,
        budget=args.budget,
    )
    print(result.table())
    if args.json is not None:
        write_json(result, args.json)
        print(f"\njson: {args.json}")
    if args.rings is not None:
        import polars as pl

        from rebate_guard.tools import ring_quality

        truth = args.truth
        if truth is None or not (truth / "rings_truth.parquet").exists():
            print("--rings needs --truth: a simulated world's truth directory", file=sys.stderr)
            return 2
        quality = ring_quality.ring_quality(pl.read_parquet(args.rings), truth.parent)
        print("\n" + quality.table())
        if args.json is not None:
            rings_json = args.json.with_name(args.json.stem + ".rings.json")
            ring_quality.write_json(quality, rings_json)
            print(f"\njson: {rings_json}")
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from rebate_guard.core.policy import Policy
    from rebate_guard.tools.report import write_report

    shown = write_report(
        args.replay_dir,
        args.out,
        top_n=args.top_rings,
        world=args.world,
        truth=args.truth,
        labels=args.labels,
        policy=Policy.load(args.policy) if args.policy else settings.policy(),
    )
    print(f"report: {args.out} ({shown['transactions']} transactions, {len(shown['rings'])} rings)")
    print(shown["source_note"])
    return 0


def _policy(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from redis.exceptions import RedisError

    from rebate_guard.core.policy import Policy
    from streams.store import RedisDecisionStore

    if args.action == "check":
        policy = Policy.load(args.file)  # PolicyError (a ValueError): printed, exit 2
        print(f"{args.file}: valid, version {policy.version}")
        return 0

    async def talk() -> int:
        store = RedisDecisionStore(settings)
        try:
            return await act(store)
        except (OSError, RedisError) as exc:
            print(f"rebate-guard policy: Redis at {settings.redis_url}: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()

    async def act(store: RedisDecisionStore) -> int:
        if args.action == "push":
            policy = Policy.load(args.file)
            before = await store.push_policy(policy.version, policy.to_json())
            was = Policy.from_text(before).version if before else "none"
            print(
                f"policy {policy.version} is live (was {was}); workers take it up "
                f"within {settings.policy_poll_s:g} s"
            )
            return 0
        if args.version:
            text = await store.client.get(store.keys.policy_version(args.version))
        else:
            text = await store.get_policy()
        if text is None:
            what = f"version {args.version}" if args.version else "live policy"
            print(f"rebate-guard policy: no {what} in Redis", file=sys.stderr)
            return 1
        print(json.dumps(json.loads(text), indent=2, sort_keys=True))
        return 0

    return asyncio.run(talk())


def _users(args: argparse.Namespace, settings: Settings) -> int:
    # A UsersError is a ValueError: main prints it and exits 2.
    from streams.users import User, UsersError, UsersFile

    users = UsersFile(settings.console_users_path)
    if args.action == "list":
        for name, user in sorted(users.read().items()):
            print(f"{user.role:<9} {name}")
        print(f"bootstrap: {settings.console_user!r}, admin (RG_CONSOLE_USER)")
        return 0
    if args.name == settings.console_user:
        raise UsersError(
            f"{args.name!r} is the bootstrap user (RG_CONSOLE_USER, role admin): its "
            "password is RG_CONSOLE_PASSWORD"
        )
    if args.action == "add":
        password = _new_password(args)
        with users.editing() as found:
            if args.name in found and not args.replace:
                raise UsersError(f"{args.name!r} exists: --replace, or `users role`")
            found[args.name] = User.create(args.name, args.role, password)
        print(f"{args.name!r} can log in as {args.role} ({users.path})")
        return 0
    with users.editing() as found:
        if args.name not in found:
            raise UsersError(f"no user {args.name!r} in {users.path}")
        if args.action == "remove":
            del found[args.name]
        else:
            found[args.name] = found[args.name].with_role(args.role)
    print(f"{args.name!r} {'removed' if args.action == 'remove' else 'is now ' + args.role}")
    return 0


def _new_password(args: argparse.Namespace) -> str:
    """The new user's password, from stdin or asked twice; UsersError when weak."""
    import getpass

    from streams.users import UsersError, check_name, weak_password

    check_name(args.name)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise UsersError("the passwords differ")
    weak = weak_password(args.name, password)
    if weak:
        raise UsersError(f"password refused: {weak}")
    return password


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from rebate_guard.tools.topics import ensure_topics

    logging.basicConfig(level=logging.INFO)
    asyncio.run(ensure_topics(settings))
    print(f"topics ready on {settings.kafka_bootstrap}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
