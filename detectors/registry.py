"""Every detector in `detectors/`, found by walking the package (as river's tests find its
estimators): a class defined here that has every member the `Detector` protocol declares.
Nothing lists them by hand, so a new detector is found, and contract-tested with the
parameter sets it declares (`_unit_test_params`), without being registered anywhere.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Protocol, TypeGuard

import detectors
from detectors.base import Detector

#: What `Detector` declares for a detector to do (it is a Protocol: implementations do not
#: subclass it, they have its members); `_unit_test_params` is not one of them, so a detector
#: that does not declare its test parameters is still found (and fails the contract tests).
DETECTOR_MEMBERS = tuple(
    sorted(
        {*Detector.__annotations__}
        | {n for n, v in vars(Detector).items() if inspect.isfunction(v) and not n.startswith("_")}
    )
)


def is_detector(cls: type) -> TypeGuard[type[Detector]]:
    """`cls` implements `Detector`: it has every member in `DETECTOR_MEMBERS`, and is not
    itself a protocol (a class is one when `Protocol` is among its bases) nor abstract (a
    base whose subclasses are the detectors, `detectors.rule_say.FiringSay`)."""
    return (
        Protocol not in cls.__bases__
        and not inspect.isabstract(cls)
        and all(hasattr(cls, m) for m in DETECTOR_MEMBERS)
    )


def all_detectors() -> list[type[Detector]]:
    """The detector classes defined in the package's modules, by module then name.

    Returns
    -------
    list of type
        Every class in `detectors/` with the members `Detector` declares.

    Examples
    --------
    >>> [cls.__name__ for cls in all_detectors()]  # doctest: +NORMALIZE_WHITESPACE
    ['AnomalyScore', 'GaussianAnomaly', 'ForestClassifier', 'OnlineClassifier',
     'RingKindSay', 'RingSay', 'RiskModel', 'RuleSay', 'RuleScore']
    """
    found: list[type[Detector]] = []
    for module_info in sorted(pkgutil.iter_modules(detectors.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{detectors.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and is_detector(cls):
                found.append(cls)
    return found
