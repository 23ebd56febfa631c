"""Checkpoints in Redis: a chain of pieces (a full checkpoint, then the deltas written since,
`streams.shards.deltas`), each in chunks under a generation of its own, made current by one
pointer. The worker writes them through `RedisDecisionStore.save_checkpoint`, a forked
checkpoint writer through `save_checkpoint_sync`.

The pointer is JSON: the full piece's `generation` and `chunks`, each delta's [generation,
chunks] in `deltas`, and the `tip` (the last piece's generation). A piece's chunks are stored
first, then the pointer names them in one command: a full piece replaces the pointer (and the
old chain's chunks are deleted after), a delta is appended by `APPEND_DELTA` only if the
chain's tip is the one it extends. A crash at any point, a forked writer dying halfway
included, leaves one complete chain readable, and its offsets are the ones of the state it
restores (each shard's offsets are in its own pieces).
"""

from __future__ import annotations

import json
import uuid

import redis as syncredis

from rebate_guard.keys import Keys
from streams.shards.checkpoints import chain_blob
from streams.store.protocol import CheckpointConflict

# Redis strings hold at most 512 MB; checkpoints are written in chunks well below that.
CHECKPOINT_CHUNK = 64 * 1024 * 1024

#: KEYS[1] the pointer; ARGV: the tip the delta extends, its generation, its chunk count.
#: 1 if appended; 0 if the chain's tip is another (a full checkpoint or another writer's
#: delta came in between), and then nothing changed.
APPEND_DELTA = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local meta = cjson.decode(current)
if (meta['tip'] or meta['generation']) ~= ARGV[1] then return 0 end
local deltas = meta['deltas'] or {}
deltas[#deltas + 1] = {ARGV[2], tonumber(ARGV[3])}
meta['deltas'] = deltas
meta['tip'] = ARGV[2]
redis.call('SET', KEYS[1], cjson.encode(meta))
return 1
"""


def save_checkpoint_sync(
    redis_url: str,
    app_id: str,
    name: str,
    blob: bytes,
    *,
    generation: str | None = None,
    extends: str | None = None,
) -> None:
    """`RedisDecisionStore.save_checkpoint` with a blocking client of its own: for a forked
    checkpoint writer, which must not touch the parent's event loop or connections."""
    client = syncredis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        base = Keys(app_id).checkpoint(name)
        old = client.get(base) if extends is None else None
        chunks, pointer = checkpoint_plan(base, blob, generation=generation)
        pipe = client.pipeline(transaction=False)
        for key, chunk in chunks.items():
            pipe.set(key, chunk)
        pipe.execute()
        if extends is not None:
            args = [extends, json.loads(pointer)["generation"], len(chunks)]
            if not client.eval(APPEND_DELTA, 1, base, *args):
                client.delete(*chunks)
                raise CheckpointConflict(f"checkpoint {name!r} no longer ends at {extends}")
            return
        client.set(base, pointer)
        if old is not None:
            client.delete(*chunk_keys(base, old))
    finally:
        client.close()


def checkpoint_plan(
    base: str, blob: bytes, *, generation: str | None = None
) -> tuple[dict[str, bytes], str]:
    """Chunks under a fresh generation (or `generation`), and the pointer that makes them
    the whole chain (a full checkpoint)."""
    generation = generation or uuid.uuid4().hex
    pieces = [blob[i : i + CHECKPOINT_CHUNK] for i in range(0, len(blob), CHECKPOINT_CHUNK)]
    chunks = {f"{base}:{generation}:{i}": piece for i, piece in enumerate(pieces or [b""])}
    meta = {"generation": generation, "chunks": len(chunks), "deltas": [], "tip": generation}
    return chunks, json.dumps(meta)


def piece_keys(base: str, pointer: bytes | str) -> list[list[str]]:
    """The chunk keys of each piece of the chain, in order."""
    meta = json.loads(pointer)
    pieces = [(meta["generation"], meta["chunks"]), *(meta.get("deltas") or [])]
    return [[f"{base}:{g}:{i}" for i in range(int(n))] for g, n in pieces]


def chunk_keys(base: str, pointer: bytes | str) -> list[str]:
    return [key for keys in piece_keys(base, pointer) for key in keys]


def joined(pieces: list[list[bytes]]) -> bytes:
    """The chain's blob (`load_checkpoint` reads it) from each piece's chunks."""
    return chain_blob([b"".join(chunks) for chunks in pieces])
