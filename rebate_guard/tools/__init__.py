"""Tools apart from the product core: the local stack (`stack`, `runner`, `producer`,
`topics`), the simulator (`simulator`) and the offline tools (`replay`, `evaluate`,
`generalization`, `ring_quality`, `report`, `io`).

They may import the contract, the decision core, settings and `streams` (the runner spawns
workers); nothing in the product core (`contract`, `core`, `client`, `keys`, `settings`) or
in `streams/` imports them (tests/unit/test_layers.py).
"""
