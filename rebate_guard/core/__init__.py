"""The decision core, below `streams/`: the trust weight and what it maps to (`policy`, with
the shipped `policies/default.toml`), the friction budget (`budget`), what happens to each
rebate after its decision (`ledger`), the `Decider` and `Scorer` (`decider`) and policy
backtests (`backtest`). The worker, replay and payment time use it alike.

Pure: imports the contract, `features`, `detectors`, `graph` and itself, no settings, no
`streams`, no `rebate_guard.tools`, no Faust, Redis or aiohttp (tests/unit/test_layers.py).
"""
