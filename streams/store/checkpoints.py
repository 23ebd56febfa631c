"""Checkpoints in Redis: chunks under a generation that one pointer makes current
(`checkpoint_plan`). The worker writes them through `RedisDecisionStore.save_checkpoint`, a
forked checkpoint writer through `save_checkpoint_sync`."""

from __future__ import annotations

import json
import uuid

import redis as syncredis

from rebate_guard.keys import Keys

# Redis strings hold at most 512 MB; checkpoints are written in chunks well below that.
CHECKPOINT_CHUNK = 64 * 1024 * 1024


def save_checkpoint_sync(redis_url: str, app_id: str, name: str, blob: bytes) -> None:
    """`RedisDecisionStore.save_checkpoint` with a blocking client of its own: for a forked
    checkpoint writer, which must not touch the parent's event loop or connections."""
    client = syncredis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        base = Keys(app_id).checkpoint(name)
        old = client.get(base)
        chunks, pointer = checkpoint_plan(base, blob)
        pipe = client.pipeline(transaction=False)
        for key, chunk in chunks.items():
            pipe.set(key, chunk)
        pipe.execute()
        client.set(base, pointer)
        if old is not None:
            client.delete(*chunk_keys(base, old))
    finally:
        client.close()


def checkpoint_plan(base: str, blob: bytes) -> tuple[dict[str, bytes], str]:
    """Chunks under a fresh generation, and the pointer that makes them current.

    Writers store the chunks first, then flip the pointer with one SET, then delete the old
    generation: a crash at any point leaves one complete checkpoint readable.
    """
    generation = uuid.uuid4().hex
    pieces = [blob[i : i + CHECKPOINT_CHUNK] for i in range(0, len(blob), CHECKPOINT_CHUNK)]
    chunks = {f"{base}:{generation}:{i}": piece for i, piece in enumerate(pieces or [b""])}
    return chunks, json.dumps({"generation": generation, "chunks": len(chunks)})


def chunk_keys(base: str, pointer: bytes | str) -> list[str]:
    meta = json.loads(pointer)
    return [f"{base}:{meta['generation']}:{i}" for i in range(meta["chunks"])]
