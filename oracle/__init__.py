"""Independent computations the engine is checked against, outside `tests/` so the tests and
the benchmarks can both use them (benchmarks import nothing from `tests/`; issue #19).

Not part of the installed package: of the project, an oracle imports only
`rebate_guard.contract`, so it shares no logic with the engine it checks.
"""
