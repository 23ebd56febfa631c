"""Walking the referral tree kept in Redis, for many users at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from features.referral import TreeEntry, depth_walk
from streams.shards import DepthKey, DepthRequest


async def run_walks(
    requests: dict[DepthKey, DepthRequest],
    fetch: Callable[[list[str]], Awaitable[dict[str, TreeEntry]]],
) -> dict[DepthKey, int]:
    """Walks the referral tree for each request against an async lookup: one round trip
    per tree level for all of them together. Fresh walks each call, so a retry after a
    failed lookup starts over cleanly."""
    walks = {
        key: depth_walk(referrer, user_id, signup_ts=signup_ts)
        for key, (referrer, user_id, signup_ts) in requests.items()
    }
    done: dict[DepthKey, int] = {}
    asking = {key: next(walk) for key, walk in walks.items()}
    while asking:
        entries = await fetch(sorted(set(asking.values())))
        still: dict[tuple[str, int], str] = {}
        for key, user in asking.items():
            try:
                still[key] = walks[key].send(entries.get(user))
            except StopIteration as finished:
                done[key] = finished.value
        asking = still
    return done
