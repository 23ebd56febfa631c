"""The contract at the bottom of every layer: the event records (`records`), how untrusted
input becomes them (`validation`), the event-time order (`order`) and time units (`time`).

Imports nothing of the project and no Faust, Redis, aiohttp or Polars (tests/unit/test_layers.py).
"""
