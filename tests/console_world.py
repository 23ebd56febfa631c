"""A served worker with a small simulated world decided through its real processor
(broker-free: loopback), and console users of each role: what the console's tests, HTTP and
browser alike, look at."""

from __future__ import annotations

import json
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Label, PlatformEvent, Signup, Transaction
from rebate_guard.settings import Settings
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from streams.auth import ADMIN, REVIEWER, SESSION_COOKIE, VIEWER
from streams.batch import RawEvent
from streams.processor import BatchProcessor
from streams.sink import key_partition
from streams.users import User, UsersFile
from tests.web import TOKEN, HttpServer, Served, served

PASSWORD = "console test pw"
PEOPLE = {"vera": VIEWER, "rita": REVIEWER, "adam": ADMIN}
IDLE_S = 2.0
#: Holds whatever is not trusted enough to allow or scale, and blocks nothing: a queue to
#: review (the default policy blocks most of what it doubts).
POLICY = """
version = "console-test-1"
[thresholds]
allow_at = 0.9
scale_at = 0.8
hold_at = 0.0
"""


class Clock:
    """The processor's wall clock, moved by hand (sources fall idle when the test says)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Feed:
    """Contract events into the served worker's processor, keyed as the contract says."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.proc: BatchProcessor = server.worker.runtime.processor
        self.clock = Clock()
        self.proc.clock = self.clock
        self.offsets: dict[tuple[str, int], int] = {}

    async def _put(self, event: Event) -> None:
        if isinstance(event, Transaction):
            kind, key = "transactions", event.user_id
        elif isinstance(event, Signup):
            kind, key = "signups", event.user_id
        elif isinstance(event, PlatformEvent):  # keyed as the contract keys them
            kind, key = "platform-events", event.user_id or event.merchant_id or event.event_id
        else:
            assert isinstance(event, Label)
            kind, key = "labels", event.tx_id or event.user_id or ""
        partition = key_partition(key.encode(), self.proc.n_partitions)
        offset = self.offsets.get((kind, partition), 0)
        self.offsets[(kind, partition)] = offset + 1
        topic = self.proc.settings.topic(kind)
        value = json.dumps(event.asdict()).encode()
        await self.proc.handle(kind, [RawEvent(topic, partition, offset, key.encode(), value)])

    async def _put_all(self, events: list[Event]) -> None:
        for event in events:
            await self._put(event)
        self.clock.now += IDLE_S + 1  # every source falls idle: all that came is decided
        await self.proc.tick()

    def put(self, events: list[Event]) -> None:
        self.server.run(self._put_all(events))


def world_events(seed: int = 5, transactions: int = 1_500) -> list[Event]:
    config = WorldConfig(
        seed=seed, n_users=200, n_merchants=20, days=12, target_transactions=transactions
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_world(simulate_world(config), Path(tmp))
        return list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))


def console_settings(tmp_path: Path) -> Settings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = Settings(
        api_token=TOKEN,
        data_dir=tmp_path,
        policy_file=str(policy),
        partitions=2,
        topic_prefix="p.",
        source_idle_s=IDLE_S,
    )
    write_users(settings)
    return settings


def write_users(settings: Settings) -> None:
    """The console's users file with `PEOPLE`, each with a password `Session` knows."""
    UsersFile(settings.console_users_path).write(
        {name: User.create(name, role, f"{PASSWORD} {name}") for name, role in PEOPLE.items()}
    )


@contextmanager
def console_world(tmp_path: Path, events: list[Event]) -> Iterator[tuple[Served, Feed]]:
    with served(console_settings(tmp_path)) as server:
        feed = Feed(server)
        feed.put(events)
        yield server, feed


class Session:
    """One person's logged-in session over plain HTTP (cookie and CSRF token), with a
    served worker or a worker process."""

    def __init__(self, server: HttpServer, user: str) -> None:
        self.server = server
        form = urllib.parse.urlencode({"user": user, "password": f"{PASSWORD} {user}"})
        status, response, _ = server.call("POST", "/login", form.encode(), _FORM)
        assert status == 303 and response.headers["Location"] == "/console/", status
        cookie = SimpleCookie(response.headers["Set-Cookie"])[SESSION_COOKIE]
        self.cookie = f"{SESSION_COOKIE}={cookie.value}"

    def get(self, path: str) -> tuple[int, str]:
        status, _, body = self.server.call("GET", path, headers={"Cookie": self.cookie})
        return status, body.decode()

    def csrf(self) -> str:
        status, body = self.get("/console/")
        assert status == 200
        marker = '<meta name="csrf" content="'
        start = body.index(marker) + len(marker)
        return body[start : body.index('"', start)]

    def post(self, path: str, **fields: Any) -> tuple[int, str]:
        """A form POST with this session's CSRF token; (status, Location or body)."""
        form = urllib.parse.urlencode({"csrf": self.csrf(), **fields}).encode()
        headers = {**_FORM, "Cookie": self.cookie}
        status, response, body = self.server.call("POST", path, form, headers)
        return status, response.headers.get("Location") or body.decode()


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
