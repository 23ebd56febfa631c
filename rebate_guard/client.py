"""For rebate engines: the decision on a transaction, by tx_id, straight from Redis.

    from rebate_guard.client import DecisionClient

    client = DecisionClient.from_env()          # RG_REDIS_URL, RG_APP_ID
    status = client.get_decision("t-123", wait=0.5)
    if status is None:
        ...                                     # not decided within 0.5 s: hold the rebate
    elif status.granted_cents:
        pay(status.granted_cents)

A decision is written once per tx_id and never changes (`decision`); what happened to its
rebate since (labels, refunds, hold timeouts: `rebate_guard.core.ledger`) is in the balances:
`granted_cents`, `held_cents`, `voided_cents`, always adding up to `requested_cents`. The
same answer is on the worker's `GET /decisions/{tx_id}` and, pushed, on the `decisions` and
`rebate-adjustments` topics.

Waiting polls Redis (every 2 ms at first, backing off to 20 ms): simple, no subscription to
keep, and a decision usually lands within tens of milliseconds of the payment reaching the
pipeline.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import redis

from rebate_guard.contract.records import Decision
from rebate_guard.core.ledger import opening_balances
from rebate_guard.keys import Keys, ledger_balances
from rebate_guard.settings import Settings

POLL_FIRST_S = 0.002
POLL_MAX_S = 0.02


@dataclass(frozen=True)
class RebateStatus:
    decision: Decision
    requested_cents: int
    granted_cents: int
    held_cents: int
    voided_cents: int
    #: The adjustment that set these balances (None: as decided).
    last_adjustment: str | None
    #: A fail-closed answer of `POST /score` (nothing granted, nothing stored): the
    #: pipeline's decision follows by tx_id and on the decisions topic.
    provisional: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "provisional": self.provisional,
            "decision": self.decision.asdict(),
            "rebate": {
                "requested_cents": self.requested_cents,
                "granted_cents": self.granted_cents,
                "held_cents": self.held_cents,
                "voided_cents": self.voided_cents,
                "last_adjustment": self.last_adjustment,
            },
        }


def rebate_status(
    decision: Decision, ledger: dict[str, Any] | None, provisional: bool = False
) -> RebateStatus:
    """A decision with its rebate's balances now: as decided, or after its latest
    adjustment (`ledger`, the hash `RedisDecisionStore.get_ledger` returns)."""
    if ledger is None:
        return RebateStatus(decision, *opening_balances(decision), None, provisional)
    return RebateStatus(
        decision,
        ledger["requested_cents"],
        ledger["granted_cents"],
        ledger["held_cents"],
        ledger["voided_cents"],
        ledger.get("last_adjustment"),
    )


def web_request(settings: Settings, path: str, body: bytes | None = None) -> urllib.request.Request:
    """A request to the worker's web server at `RG_WEB_HOST`:`RG_WEB_PORT` carrying the API
    token it requires (`Authorization: Bearer`); with `body`, a POST (`/score`)."""
    host = "127.0.0.1" if settings.web_host in ("", "0.0.0.0") else settings.web_host
    return urllib.request.Request(
        f"http://{host}:{settings.web_port}{path}",
        data=body,
        headers={"Authorization": f"Bearer {settings.api_token}"},
    )


class DecisionClient:
    def __init__(self, redis_url: str, app_id: str, timeout_s: float = 2.0) -> None:
        self.keys = Keys(app_id)
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    @classmethod
    def from_env(cls) -> DecisionClient:
        settings = Settings.from_env()
        return cls(settings.redis_url, settings.app_id)

    def get_decision(self, tx_id: str, wait: float = 0.0) -> RebateStatus | None:
        """The decision on `tx_id` with its rebate's balances now; waits up to `wait`
        seconds for it to be made; None if there is none by then. Redis errors raise
        (`redis.RedisError`): the caller decides what a missing answer means (holding the
        rebate is the safe default)."""
        deadline = time.monotonic() + max(0.0, wait)
        pause = POLL_FIRST_S
        key = self.keys.decision(tx_id)
        while True:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(key)
            pipe.hgetall(self.keys.ledger(tx_id))
            value, ledger = pipe.execute()
            if value is not None:
                balances = ledger_balances(ledger) if ledger else None
                return rebate_status(Decision.loads(value), balances)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_S)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> DecisionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
