"""Admission for `POST /score`, and the answer of a request that cannot be decided.

Past `RG_SCORE_MAX_IN_FLIGHT` requests in flight the next one is not worked on: a worker
past its capacity would otherwise queue every request until all of them time out
(benchmarks/README.md). It, and any request whose decision cannot be had in time (Redis or
the broker down, the wait over), gets a provisional answer that fails closed: the decision
core's `fail_closed_decision`, which grants nothing. The real decision follows on the
decisions topic and by tx_id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rebate_guard.client import RebateStatus, rebate_status
from rebate_guard.contract.records import Transaction
from rebate_guard.core.decider import fail_closed_decision
from rebate_guard.settings import Settings
from streams.batch import Counters

log = logging.getLogger(__name__)


class Admission:
    def __init__(
        self,
        settings: Settings,
        *,
        counters: Counters,
        policy_version: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.policy_version = policy_version
        self.clock = clock
        #: `POST /score` requests being worked on.
        self.in_flight = 0

    @property
    def full(self) -> bool:
        """No more requests are worked on until one finishes."""
        limit = self.settings.score_max_in_flight
        return bool(limit) and self.in_flight >= limit

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """A request being worked on, for the duration of the block."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def overloaded(self, tx: Transaction, produce_failed: Exception | None) -> RebateStatus:
        """The answer of a request turned away (its transaction was produced, unless that
        failed: `produce_failed`)."""
        self.counters.overload += 1
        if produce_failed is not None:
            return self.fail_closed(tx, "broker", produce_failed)
        return self.fail_closed(tx, "overload", None)

    def fail_closed(self, tx: Transaction, part: str, exc: Exception | None) -> RebateStatus:
        """The provisional answer for `tx`, which could not be decided because `part`
        failed (`exc`, logged) or ran out (timeout, overload)."""
        action = self.settings.fail_closed_action
        if exc is not None:
            log.warning(
                "POST /score %s: %s unavailable (%s); answering %s", tx.tx_id, part, exc, action
            )
        self.counters.fail_closed += 1
        decision = fail_closed_decision(
            tx,
            part,
            action=action,
            policy_version=self.policy_version(),
            decided_at=int(self.clock() * 1000),
        )
        return rebate_status(decision, None, provisional=True)
