"""Faust side of RebateGuard: the event contract, the worker app and its agents."""
