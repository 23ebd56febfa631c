"""RebateGuard: trust-weighted rebates for cashback platforms."""

__version__ = "0.1.0"
