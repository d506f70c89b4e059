"""Whether the broker and the database answer: `rxgate health` (exit 0/1) and the audit API's `/health`.

`health_status(settings)` never raises and never writes (on SQLite it takes and releases the write lock); URLs in the result
have their passwords hidden.
"""

from __future__ import annotations

import time
from typing import Any

from workers.settings import Settings


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return url.split("@")[-1] if "@" in url else url


def check_broker(url: str, timeout: float = 2.0, settings: Settings | None = None) -> dict[str, Any]:
    import redis

    started = time.perf_counter()
    try:
        if settings is not None:  # the service's own client: follows Sentinel when configured
            from workers.queue.sentinel import broker_client

            client = broker_client(settings, socket_timeout=timeout, socket_connect_timeout=timeout)
        else:
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        client.ping()
        version = client.info("server").get("redis_version", "?")
        return {"ok": True, "url": _hide_password(url), "detail": f"redis {version}",
                "ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure is "does not answer", with the reason
        return {"ok": False, "url": _hide_password(url), "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}


def check_amqp(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """RabbitMQ (the Celery broker with amqp://): one connection opened and closed."""
    from kombu import Connection

    started = time.perf_counter()
    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            version = conn.connection.server_properties.get("version", b"?")
        version = version.decode() if isinstance(version, bytes) else str(version)
        return {"ok": True, "url": _hide_password(url), "detail": f"rabbitmq {version}",
                "ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure is "does not answer", with the reason
        return {"ok": False, "url": _hide_password(url), "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}


def check_database(url: str, timeout: float = 5.0) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    started = time.perf_counter()
    engine = None
    try:
        if url.startswith("sqlite"):
            from pathlib import Path

            from sqlalchemy.engine import make_url

            path = make_url(url).database or ":memory:"
            if path != ":memory:" and not Path(path).is_file():
                # connecting would create an empty file that then looks healthy: a typo is "down", by name
                return {"ok": False, "url": _hide_password(url),
                        "detail": f"no database file {path} (rxgate serve creates it; check RXGATE_DATABASE_URL)"}
            engine = create_engine(url, connect_args={"timeout": timeout})
        else:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            engine = create_engine(parsed, connect_args={"connect_timeout": int(max(timeout, 1))})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if engine.dialect.name == "sqlite" and (engine.url.database or ":memory:") != ":memory:":
            # WAL lets a SELECT through while another connection holds the write lock (BEGIN EXCLUSIVE,
            # a stuck writer): every message would then wait. Probe the write lock (taken and released,
            # nothing written) so a locked database reports unhealthy.
            raw = engine.raw_connection()
            try:
                raw.driver_connection.isolation_level = None
                raw.driver_connection.execute("BEGIN IMMEDIATE")
                raw.driver_connection.execute("ROLLBACK")
            finally:
                raw.close()
        return {"ok": True, "url": _hide_password(url), "detail": engine.dialect.name,
                "ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001
        reason = getattr(exc, "orig", None) or exc
        first = str(reason).strip().splitlines()[0][:200] if str(reason).strip() else ""
        return {"ok": False, "url": _hide_password(url), "detail": f"{type(reason).__name__}: {first}"}
    finally:
        if engine is not None:
            engine.dispose()


def health_status(settings: Settings | None = None) -> dict[str, Any]:
    """{"status": "ok"|"unavailable", "broker": {...}, "database": {...}}; each part has ok, url, detail.
    With RabbitMQ as the broker, a third part "streams": the Redis of the streams, MLLP and results."""
    from workers.queue.embedded import UnsupportedBroker, is_amqp, resolve_broker_url, resolve_stream_url

    settings = settings or Settings()
    parts: dict[str, dict[str, Any]] = {}
    try:
        url = resolve_broker_url(settings)
        amqp = is_amqp(settings)
    except UnsupportedBroker as exc:
        parts["broker"] = {"ok": False, "url": "", "detail": str(exc)}
        amqp = False
    else:
        parts["broker"] = check_amqp(url) if amqp else check_broker(url, settings=settings)
    parts["database"] = check_database(settings.database_url)
    if amqp:
        parts["streams"] = check_broker(resolve_stream_url(settings), settings=settings)
    return {"status": "ok" if all(p["ok"] for p in parts.values()) else "unavailable", **parts}
