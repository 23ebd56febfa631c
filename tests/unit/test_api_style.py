"""Public functions take at most two positional arguments; the rest are keyword-only (issue #19).

`walk` finds every public function of the modules in `MODULES`: module-level functions defined
there and the methods (static and class methods too) of their public classes, with `__init__`
when it is written by hand. Code the module did not write itself is skipped: the `__init__`
a dataclass generates (its fields are the record's, in declaration order) and the methods
`@record` generates. `self`/`cls` does not count.

`PENDING` lists the functions that still take more, because the files defining or calling
them are being rewritten by other work now; each is made keyword-only after that work is
merged, and the test then asks for its entry to go.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MAX_POSITIONAL = 2
#: Packages whose every module is checked (a module added to one is checked too).
PACKAGES = ("rebate_guard.core", "graph", "detectors", "features")


def _modules_of(package: str) -> tuple[str, ...]:
    found = importlib.import_module(package)
    return (package, *(m.name for m in pkgutil.walk_packages(found.__path__, f"{package}.")))


MODULES = (
    "rebate_guard.client",
    "rebate_guard.contract.order",
    "rebate_guard.contract.records",
    "rebate_guard.contract.time",
    "rebate_guard.contract.validation",
    "streams.console.policy_desk",
    *(module for package in PACKAGES for module in _modules_of(package)),
)
#: Function -> why it still takes more positional arguments (none left; an entry here must
#: name the file that still calls it positionally, and goes once that call is fixed).
PENDING: dict[str, str] = {}


def _written_here(function: Callable[..., Any], module: types.ModuleType) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and code.co_filename == module.__file__


def walk(module: types.ModuleType) -> Iterator[tuple[str, Callable[..., Any], bool]]:
    """(qualified name, function, is a method) of each public function of `module`."""
    prefix = module.__name__
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value) and _written_here(value, module):
            yield f"{prefix}.{name}", value, False
        elif inspect.isclass(value):
            for attr, member in vars(value).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                method = not isinstance(member, staticmethod)
                function = (
                    member.__func__ if isinstance(member, staticmethod | classmethod) else member
                )
                if inspect.isfunction(function) and _written_here(function, module):
                    yield f"{prefix}.{name}.{attr}", function, method


def positional(function: Callable[..., Any], *, method: bool) -> list[str]:
    """The parameters a caller may pass by position (`self`/`cls` left out)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds]
    return names[1:] if method else names


def offenders(modules: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for module_name in modules:
        for name, function, method in walk(importlib.import_module(module_name)):
            params = positional(function, method=method)
            if len(params) > MAX_POSITIONAL:
                found[name] = params
    return found


def test_public_functions_take_keyword_only_arguments_past_the_second() -> None:
    found = offenders(MODULES)
    new = {name: params for name, params in found.items() if name not in PENDING}
    assert not new, f"make the arguments past the second keyword-only (`*,`): {new}"
    done = sorted(set(PENDING) - set(found))
    assert not done, f"keyword-only now: remove from PENDING: {done}"


def test_the_walk_sees_functions_methods_and_constructors() -> None:
    names = {name for module in MODULES for name, _, _ in walk(importlib.import_module(module))}
    for expected in (
        "rebate_guard.client.rebate_status",
        "rebate_guard.client.web_request",
        "rebate_guard.client.DecisionClient.__init__",
        "rebate_guard.client.DecisionClient.from_env",
        "rebate_guard.core.policy.Policy.decide",
        "rebate_guard.core.policy.Policy.from_text",
        "rebate_guard.contract.validation.parse_ts",
        "rebate_guard.contract.records.Record.loads",
        "rebate_guard.core.budget.largest_cut",
        "graph.rings.ramp",
        "graph.layer.RingBook.record",
        "rebate_guard.core.decider.Decider.decide",
        "rebate_guard.core.backtest.Money.add",
        "detectors.drift.DriftWatch.labelled",
        "features.windows.touch",
    ):
        assert expected in names
    # Generated code is not the module's API: a dataclass's __init__, `@record`'s asdict.
    assert "rebate_guard.contract.records.Transaction.__init__" not in names
    assert "rebate_guard.core.policy.Thresholds.__init__" not in names
    assert "rebate_guard.contract.records.Transaction.asdict" not in names


def _sample_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module with one function of each kind, compiled under its own file name."""
    source = """
from dataclasses import dataclass

def three(a, b, c): ...
def keyword(a, b, *, c): ...
def _private(a, b, c, d): ...

class Thing:
    def __init__(self, a, b, c): ...
    def method(self, a, b, c): ...
    def fine(self, a, b, *, c): ...
    @staticmethod
    def static(a, b, c): ...
    @classmethod
    def make(cls, a, b, c): ...

@dataclass
class Row:
    a: int
    b: int
    c: int
"""
    module = types.ModuleType("api_style_sample")
    module.__file__ = "api_style_sample.py"
    monkeypatch.setitem(sys.modules, module.__name__, module)  # the dataclass looks it up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def test_the_rule_catches_positional_arguments_past_the_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _sample_module(monkeypatch)
    assert offenders((module.__name__,)) == {
        "api_style_sample.three": ["a", "b", "c"],
        "api_style_sample.Thing.__init__": ["a", "b", "c"],
        "api_style_sample.Thing.method": ["a", "b", "c"],
        "api_style_sample.Thing.static": ["a", "b", "c"],
        "api_style_sample.Thing.make": ["a", "b", "c"],
    }
