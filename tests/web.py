"""The worker's real web server (Faust's aiohttp driver, the auth guard in front), broker-free:
its views over an in-memory store, served on a loop of its own in a thread, so that plain
HTTP clients and a browser can talk to it from the test."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from rebate_guard.settings import Settings
from rebate_guard.tools.stack import free_port
from streams.app import Worker, create_worker
from streams.sink import MemorySink
from streams.store import MemoryDecisionStore

TOKEN = "unit-test-token"
T = TypeVar("T")


@dataclass
class HttpServer:
    """A web server to talk plain HTTP to: the worker's, served here or in a process."""

    host: str
    port: int

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        """One request, redirects not followed: (status, response, body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response, response.read()
        finally:
            conn.close()


@dataclass
class Served(HttpServer):
    worker: Worker
    store: MemoryDecisionStore
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop (where the worker's state lives)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


@contextlib.contextmanager
def served(
    settings: Settings | None = None, pages: Callable[[Worker], None] | None = None
) -> Iterator[Served]:
    """The worker's server; `pages(worker)` may add views of the test's own before it starts."""
    base = settings if settings is not None else Settings(api_token=TOKEN)
    port = free_port()
    store = MemoryDecisionStore()
    worker = create_worker(base.replace(web_port=port), store, MemorySink())
    if pages is not None:
        pages(worker)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Served(base.web_host, port, worker, store, loop)
    web = worker.app.web
    web.init_server()
    server.run(web.start_server())
    try:
        yield server
    finally:
        server.run(web.stop_server())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
