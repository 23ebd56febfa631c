"""`rebate-guard up`, the main job, as a user runs it: live dashboard, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rebate_guard.tools.stack import free_port
from tests.integration.helpers import ROOT

pytestmark = pytest.mark.integration


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _listening(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                packed = bytes.fromhex(address)
                if table == "tcp":  # one little-endian word
                    found.add(socket.inet_ntop(socket.AF_INET, packed[::-1]))
                else:  # four little-endian words
                    words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and ") Z " not in stat.read_text()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_live_decisions_and_stops_everything(tmp_path: Path, stop_signal) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RG_WEB_PORT": str(port),
        "RG_DATA_DIR": str(tmp_path / "data"),
        "RG_PARTITIONS": "2",
        # A platform of ~5,800 users: its back-fill (~7k events) takes ~20 s at 400/s.
        "RG_SIMULATE_LIVE_RATE": "0.02",
    }
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "rebate_guard.cli", "up", "--rate", "400"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    token_file = tmp_path / "data" / "api-token"  # none configured: `up` makes one
    try:
        stats: dict = {}
        token: str | None = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            if token is None and token_file.exists():
                token = token_file.read_text().strip()
            try:
                status, body = _get(f"{base}/api/stats", token)
                stats = json.loads(body) if status == 200 else {}
            except OSError:
                stats = {}
            if stats.get("counters", {}).get("decisions", 0) >= 200:
                break
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "up.log").read_text()[-3000:])
        assert token and f"password {token}" in (tmp_path / "up.log").read_text()
        assert _listening(port) == {"127.0.0.1"}  # RG_WEB_HOST's default, not every interface
        for path in ("/api/stats", "/router/", "/decisions/no-such-tx"):
            assert _get(f"{base}{path}", None)[0] == 401
            assert _get(f"{base}{path}", "wrong")[0] == 401
        status, page = _get(f"{base}/", token)
        assert status == 200 and b"RebateGuard" in page
        event_time = stats["event_time"]  # the worker's watermark has moved into the traffic
        assert event_time["watermark"] is not None and event_time["sources"] >= 3
        # Each user shard's models: the state that scores (it has learned transactions).
        versions = [m["version"] for m in stats["models"].values()]
        assert versions and any(not v.endswith(".t0") for v in versions)
        recent = stats["recent"][0]
        status, body = _get(f"{base}/decisions/{recent['tx_id']}", token)
        answer = json.loads(body)
        assert status == 200 and answer["decision"] == recent
        rebate = answer["rebate"]  # the balances now add up to what was requested
        assert rebate["requested_cents"] == recent["rebate_requested_cents"]
        assert (
            rebate["granted_cents"] + rebate["held_cents"] + rebate["voided_cents"]
            == (rebate["requested_cents"])
        )
        status, body = _get(f"{base}/decisions/no-such-tx", token)
        assert status == 404 and "no decision" in json.loads(body)["error"]
        family = _descendants(up.pid)
        assert len(family) >= 3  # broker, Redis, worker
    finally:
        up.send_signal(stop_signal)
        try:
            code = up.wait(timeout=40)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)], "processes left behind after up stopped"
