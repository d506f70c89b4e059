"""Bench infrastructure: a private redis-server, throw-away PostgreSQL databases and SQLite files.

Everything started here is stopped by the process id it was started with; databases created here
are dropped at the end (names start with `rxgate_bench_`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PG_ADMIN = os.environ.get("RXGATE_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Infra:
    def __init__(self, keep: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rxgate-bench-"))
        self.keep = keep
        self.redis_proc: subprocess.Popen | None = None
        self.redis_url = ""
        self.pg_dbs: list[str] = []

    # --- Redis -------------------------------------------------------------------------------
    def start_redis(self) -> str:
        """Own redis-server on a free port (`RXGATE_BENCH_REDIS_URL` uses an existing one instead)."""
        url = os.environ.get("RXGATE_BENCH_REDIS_URL")
        if url:
            self.redis_url = url
            return url
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found (set RXGATE_BENCH_REDIS_URL to use a running Redis)")
        port = free_port()
        self.redis_proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), "--logfile", str(self.tmp / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    # --- PostgreSQL --------------------------------------------------------------------------
    def pg_available(self) -> bool:
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - reported as "not measured"
            return False

    def new_pg_db(self) -> str:
        import psycopg

        name = f"rxgate_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.pg_dbs.append(name)
        base = PG_ADMIN.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def drop_pg_dbs(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for name in self.pg_dbs:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.pg_dbs = []

    def new_sqlite_url(self) -> str:
        return f"sqlite:///{self.tmp / ('bench-' + uuid.uuid4().hex[:8] + '.db')}"

    # --- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
            self.redis_proc = None
        if self.pg_dbs:
            try:
                self.drop_pg_dbs()
            except Exception:  # noqa: BLE001
                pass
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
