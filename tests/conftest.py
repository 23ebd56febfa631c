"""Shared pytest fixtures.

`local_stack` is one embedded Tansu broker + Redis server for the whole test session;
`stack_settings` points `Settings` at it with a per-test `app_id`, `topic_prefix` and
`data_dir`, so tests never share topics, consumer groups or local state.
Tests that stop the shared Redis (`local_stack.stop_redis()`) must start it again
(`local_stack.start_redis()`, in a `finally`); tests that stop the whole stack should start
a `LocalStack` of their own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebate_guard.settings import Settings
from rebate_guard.tools.stack import LocalStack


def unique_name(node_name: str, max_len: int = 40) -> str:
    """A topic- and group-safe name from a test's node name, plus a short random suffix."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", node_name).strip("-").lower()[:max_len] or "test"
    return f"{slug}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(workdir=tmp_path_factory.mktemp("stack"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack_settings(
    local_stack: LocalStack, request: pytest.FixtureRequest, tmp_path: Path
) -> Settings:
    name = unique_name(request.node.name)
    base = Settings(
        app_id=f"rg-{name}",
        topic_prefix=f"{name}.",
        partitions=2,
        data_dir=tmp_path / "data",
        api_token=uuid.uuid4().hex,  # what the worker's web server requires
    )
    return local_stack.settings(base)
