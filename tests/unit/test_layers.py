"""The layers read top-down: no import runs upward (issue #19).

Every `import` and `from ... import` is read with `ast`, at module level and inside functions
(and under `if TYPE_CHECKING:`), so a lazy import counts as much as one at the top:

- `rebate_guard.contract` (records, validation, event order, time units) imports nothing of
  the project outside itself, and no Faust, Redis, aiohttp or Polars;
- `features`, `detectors` and `graph` import, of the project, only each other and the contract:
  no `streams`, nothing else of `rebate_guard`, no Faust, Redis or aiohttp;
- nothing outside `streams/` imports Faust, but for `FAUST_OUTSIDE_STREAMS`, each with why;
- `rebate_guard.client`, the library rebate engines import, loads no Faust, NetworkX,
  `redis.asyncio` or `streams`, itself or through any project module it imports;
- `benchmarks` import nothing from `tests` (what both need, such as the feature oracle, lives
  in `oracle/`);
- `oracle`, the independent computations the engine is checked against, imports of the project
  only the contract, so it shares no logic with what it checks.
- `rebate_guard.core` (trust weight, policy, friction budget, ledger, the `Decider`, backtests)
  imports, of the project, only the contract, `features`, `detectors`, `graph` and itself: no
  `rebate_guard.settings` (the worker, replay and the CLI pass it the policy and the model),
  no `streams`, no `rebate_guard.tools`, no Faust, Redis or aiohttp;
- `streams` does not import `rebate_guard.tools`;
- nothing in the product core (`PRODUCT_CORE`: contract, core, client, keys, settings)
  imports `rebate_guard.tools`.

`rebate_guard.tools` (local stack, simulator, replay, evaluation, report) sits on top with the
CLI: it may import the core, the contract, settings and `streams` (the runner spawns workers,
the producer writes through `streams.sink`). The package's top holds only the entry point and
the product core's modules (`TOP_MODULES`); everything else lives in a subpackage.

`test_each_rule_catches_a_bad_import` shows every rule failing on a bad import added at
module level and inside a function.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = (
    "rebate_guard",
    "streams",
    "features",
    "detectors",
    "graph",
    "tests",
    "benchmarks",
    "oracle",
)
CONTRACT = "rebate_guard.contract"
PURE = ("features", "detectors", "graph")
CORE = "rebate_guard.core"
TOOLS = "rebate_guard.tools"
PRODUCT_CORE = (CONTRACT, CORE, "rebate_guard.client", "rebate_guard.keys", "rebate_guard.settings")
#: The modules at the top of `rebate_guard`, besides its subpackages.
TOP_MODULES = {
    "rebate_guard.cli",
    "rebate_guard.client",
    "rebate_guard.keys",
    "rebate_guard.settings",
}

#: Modules outside `streams/` that import Faust, and why they must.
FAUST_OUTSIDE_STREAMS = {
    "benchmarks.throughput": "measures the Faust worker itself, end to end",
    "tests.unit.test_runner": "holds streams.transport.QuietWorker against faust.Worker",
    "tests.unit.test_web_auth": "drives the worker's web views with faust.web requests",
}


def sources(root: Path = ROOT) -> dict[str, str]:
    """Every Python module of the project (tracked or not, outside virtualenvs), by name."""
    found: dict[str, str] = {}
    for top in PROJECT:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path.read_text(encoding="utf-8")
    return found


@functools.cache
def imports(
    module: str, source: str, *, is_package: bool = False, eager: bool = False
) -> frozenset[str]:
    """The absolute names `source` imports anywhere in it (`eager`: only where they run when
    the module is imported: not in a function, not under `if TYPE_CHECKING:`);
    `from a import b` counts as `a` and `a.b` (b may be a module)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if eager and (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
        ):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(out)


def graph_of(modules: Mapping[str, str], *, eager: bool = False) -> dict[str, frozenset[str]]:
    packages = {name for name in modules if _is_package(name, modules)}
    return {
        name: imports(name, source, is_package=name in packages, eager=eager)
        for name, source in modules.items()
    }


def _is_package(name: str, modules: Mapping[str, str]) -> bool:
    return any(other.startswith(name + ".") for other in modules)


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _project(name: str) -> bool:
    return _within(name, PROJECT)


def layer_violations(
    modules: Mapping[str, str], layer: Iterable[str], allowed: Iterable[str], banned: Iterable[str]
) -> list[str]:
    """Imports by the modules of `layer` of project modules outside `allowed` (the package
    `rebate_guard` itself, light, is fine), or of `banned`."""
    allowed, banned = list(allowed), list(banned)
    return [
        f"{module} imports {name}"
        for module, names in sorted(graph_of(modules).items())
        if _within(module, layer)
        for name in sorted(names)
        if (_project(name) and name != "rebate_guard" and not _within(name, allowed))
        or _within(name, banned)
    ]


def contract_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(
        modules, [CONTRACT], [CONTRACT], ["faust", "mode", "redis", "aiohttp", "polars"]
    )


def pure_layer_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(
        modules, PURE, [*PURE, CONTRACT], ["faust", "mode", "redis", "aiohttp", "streams"]
    )


def benchmark_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(modules, ["benchmarks"], [p for p in PROJECT if p != "tests"], [])


def oracle_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(modules, ["oracle"], ["oracle", CONTRACT], [])


def core_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(
        modules,
        [CORE],
        [CORE, CONTRACT, *PURE],
        ["faust", "mode", "redis", "aiohttp", "streams", TOOLS, "rebate_guard.settings"],
    )


def streams_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(modules, ["streams"], ["rebate_guard", "streams", *PURE], [TOOLS])


def product_core_violations(modules: Mapping[str, str]) -> list[str]:
    return layer_violations(modules, PRODUCT_CORE, PROJECT, [TOOLS])


def faust_violations(modules: Mapping[str, str]) -> list[str]:
    graph = graph_of(modules)
    return [
        f"{module} imports {name}"
        for module, names in sorted(graph.items())
        if not _within(module, ["streams"]) and module not in FAUST_OUTSIDE_STREAMS
        for name in sorted(names)
        if _within(name, ["faust"])
    ]


def client_violations(modules: Mapping[str, str], client: str = "rebate_guard.client") -> list[str]:
    """What importing the client loads: its own imports wherever they are, and those that run
    on import in the project modules it loads (a lazy import of one of them, such as
    `Settings.graph_config`'s of `graph.layer`, runs only in the worker that calls it)."""
    everywhere, eager = graph_of(modules), graph_of(modules, eager=True)
    seen: set[str] = set()
    todo = [client]
    while todo:
        module = todo.pop()
        if module in seen or module not in eager:
            continue
        seen.add(module)
        for name in everywhere[module] if module == client else eager[module]:
            parts = name.split(".")
            # `import a.b.c` runs a, a.b and a.b.c.
            todo.extend(".".join(parts[: i + 1]) for i in range(len(parts)) if _project(name))
    banned = ("faust", "mode", "networkx", "redis.asyncio", "streams")
    return [
        f"{module} imports {name}"
        for module in sorted(seen)
        for name in sorted(everywhere[module] if module == client else eager[module])
        if _within(name, banned)
    ]


RULES = {
    "contract": contract_violations,
    "pure layer": pure_layer_violations,
    "core": core_violations,
    "streams": streams_violations,
    "product core": product_core_violations,
    "faust": faust_violations,
    "client": client_violations,
    "benchmarks": benchmark_violations,
    "oracle": oracle_violations,
}


@pytest.fixture(scope="module")
def project() -> dict[str, str]:
    return sources()


@pytest.mark.parametrize("rule", RULES)
def test_layers_hold(project: dict[str, str], rule: str) -> None:
    assert RULES[rule](project) == []


def test_the_top_of_the_package_holds_only_the_entry_point_and_the_product_core(
    project: dict[str, str],
) -> None:
    top = {
        name
        for name in project
        if name.startswith("rebate_guard.") and name.count(".") == 1 and name not in (CORE, TOOLS)
    }
    assert top - {CONTRACT} == TOP_MODULES


def test_the_faust_exceptions_still_need_to_be_exceptions(project: dict[str, str]) -> None:
    graph = graph_of(project)
    for module in FAUST_OUTSIDE_STREAMS:
        assert any(_within(name, ["faust"]) for name in graph[module]), module


#: For each rule, a module where a bad import breaks it, and the import.
BAD_IMPORTS = {
    "contract": [
        ("rebate_guard.contract.records", "from rebate_guard.core.policy import Policy"),
        ("rebate_guard.contract.order", "import polars as pl"),
        ("rebate_guard.contract.time", "from streams.store import RedisDecisionStore"),
    ],
    "pure layer": [
        ("features.user", "from rebate_guard.core.decider import Scorer"),
        ("graph.layer", "import redis"),
        ("detectors.risk", "from streams import shards"),
        ("features.windows", "import faust"),
    ],
    "core": [
        ("rebate_guard.core.decider", "from streams.store import RedisDecisionStore"),
        ("rebate_guard.core.policy", "from rebate_guard.tools.io import read_frame"),
        ("rebate_guard.core.budget", "from rebate_guard.settings import Settings"),
        ("rebate_guard.core.ledger", "import redis"),
        ("rebate_guard.core.backtest", "from aiohttp import web"),
    ],
    "streams": [
        ("streams.app", "from rebate_guard.tools.stack import LocalStack"),
        ("streams.console.policy_desk", "from rebate_guard.tools import replay"),
    ],
    "product core": [
        ("rebate_guard.settings", "from rebate_guard.tools.simulator import WorldConfig"),
        ("rebate_guard.client", "import rebate_guard.tools.runner"),
        ("rebate_guard.keys", "from rebate_guard.tools.io import read_frame"),
        ("rebate_guard.contract.records", "from rebate_guard.tools import io"),
    ],
    "faust": [
        ("rebate_guard.core.decider", "import faust"),
        ("graph.rings", "from faust.web import View"),
    ],
    "client": [
        ("rebate_guard.client", "import redis.asyncio"),
        ("rebate_guard.core.ledger", "import networkx"),
        ("rebate_guard.keys", "from streams.store import RedisDecisionStore"),
    ],
    "benchmarks": [
        ("benchmarks.feature_oracle", "from tests.unit.test_feature_oracle import NAMED"),
        ("benchmarks.rings", "import tests.factories"),
    ],
    "oracle": [
        ("oracle.features", "from features.engine import FeatureEngine"),
        ("oracle.features", "from rebate_guard.tools.replay import compute_features"),
    ],
}


#: The cases: a lazy import in a module the client loads does not run with it, so for the
#: client only its own module takes one inside a function.
CASES = [
    (rule, module, line, where)
    for rule, cases in BAD_IMPORTS.items()
    for module, line in cases
    for where in ("module", "function")
    if not (rule == "client" and where == "function" and module != "rebate_guard.client")
]


@pytest.mark.parametrize(("rule", "module", "line", "where"), CASES)
def test_each_rule_catches_a_bad_import(
    project: dict[str, str], rule: str, module: str, line: str, where: str
) -> None:
    bad = line if where == "module" else f"def _late():\n    {line}\n"
    broken = {**project, module: project[module] + "\n" + bad + "\n"}
    assert RULES[rule](project) == []
    assert RULES[rule](broken) != []


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in done.stdout.split()} | set(done.stdout.split())


def test_what_importing_the_light_modules_loads() -> None:
    """The same, at run time: the package's top loads nothing else of the project, the pure
    layers no Faust, and the client none of the worker (`redis` itself loads
    `redis.asyncio`, so that one is held statically above)."""
    assert not _loaded_after("import rebate_guard") & {*PROJECT[1:], "faust", "polars", "numpy"}
    assert not _loaded_after("import rebate_guard.contract.order") & {
        "faust",
        "redis",
        "aiohttp",
        "polars",
        "numpy",
        "streams",
        "features",
    }
    assert not _loaded_after("import features.engine, detectors.risk, graph.layer") & {
        "faust",
        "redis",
        "aiohttp",
        "streams",
    }
    assert not _loaded_after("import rebate_guard.core.decider, rebate_guard.core.backtest") & {
        "faust",
        "redis",
        "aiohttp",
        "streams",
        TOOLS,
        "rebate_guard.settings",
    }
    assert not _loaded_after("import rebate_guard.client") & {
        "faust",
        "networkx",
        "streams",
        "polars",
        "aiohttp",
        "graph",
        "features",
    }
