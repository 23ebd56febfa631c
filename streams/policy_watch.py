"""The live policy: taken up from Redis between batches (hot reload), validated first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from rebate_guard.core.policy import Policy, PolicyError
from streams.store import DecisionStore

log = logging.getLogger(__name__)


class PolicyWatcher:
    """Polls Redis for the policy document; a new valid one is applied (`apply`, under
    `lock`: never in the middle of a batch). `status`: what the status page shows."""

    def __init__(
        self,
        store: DecisionStore,
        *,
        current: Callable[[], Policy],
        apply: Callable[[Policy], None],
        lock: asyncio.Lock,
    ) -> None:
        self.store = store
        self.current = current
        self.apply = apply
        self.lock = lock
        #: The policy document last taken from Redis.
        self._text: bytes | None = None
        self.status: dict[str, Any] = {
            "version": current().version,
            "source": "start",
            "rejected": None,
        }

    async def refresh(self) -> None:
        """Takes up a new live policy from Redis (hot reload, between batches). It is
        validated first: one that fails is logged and reported, and the current policy
        stays. With no policy in Redis yet, this worker's starting one becomes the live
        one. Redis being down only delays this to the next poll."""
        start = self.current()
        try:
            text = await self.store.get_policy()
            if text is None:
                await self.store.seed_policy(start.version, start.to_json())
                text = await self.store.get_policy()
        except Exception as exc:  # I/O: the next poll tries again
            log.warning("cannot read the policy from Redis (%s); keeping %s", exc, start.version)
            return
        if text is None or text == self._text:
            return
        self._text = text
        try:
            policy = Policy.from_text(text)
        except PolicyError as exc:
            log.error("rejected the policy in Redis, keeping %s: %s", start.version, exc)
            self.status["rejected"] = str(exc)
            return
        if policy != start:
            async with self.lock:
                self.apply(policy)
            log.info("policy %s -> %s (from Redis)", start.version, policy.version)
        self.status = {"version": policy.version, "source": "redis", "rejected": None}
