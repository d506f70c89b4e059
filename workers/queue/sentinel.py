"""Redis Sentinel for broker failover (docs/scale-out.md).

With RXGATE_BROKER_SENTINELS="h1:26379,h2:26379,h3:26379" (and RXGATE_BROKER_SENTINEL_MASTER, the
name the sentinels monitor) every rxgate process asks the sentinels which Redis is the master,
instead of using RXGATE_BROKER_URL:

- Celery (broker and result backend): kombu's `sentinel://` transport, one URL per sentinel joined
  by `;`, with `master_name` / `sentinel_kwargs` in the transport options (`celery_broker`);
- direct Redis users (the stream bridge, `submit`, `health`, the MLLP listener, the metrics
  collector): `master_client()`, a redis-py client bound to the current master that re-asks the
  sentinels after a failover (redis.sentinel.SentinelConnectionPool).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from workers.settings import Settings


def sentinels(settings: Settings) -> list[tuple[str, int]]:
    """RXGATE_BROKER_SENTINELS parsed: "host[:port],..." (port 26379 by default); [] when unset."""
    out = []
    for part in settings.broker_sentinels.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        part = part.removeprefix("sentinel://").rstrip("/")
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, ""
        host = host.strip("[]")
        try:
            out.append((host, int(port) if port else 26379))
        except ValueError as exc:
            raise ValueError(f"RXGATE_BROKER_SENTINELS: bad port in {part!r}") from exc
    return out


def enabled(settings: Settings) -> bool:
    return bool(sentinels(settings))


def celery_broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """(broker/backend URL, transport options to merge) for Celery's sentinel transport."""
    auth = f":{quote(settings.broker_sentinel_password, safe='')}@" if settings.broker_sentinel_password else ""
    url = ";".join(f"sentinel://{auth}{h}:{p}/{settings.broker_sentinel_db}" for h, p in sentinels(settings))
    options: dict[str, Any] = {"master_name": settings.broker_sentinel_master}
    if settings.broker_sentinel_sentinel_password:
        options["sentinel_kwargs"] = {"password": settings.broker_sentinel_sentinel_password,
                                      "socket_timeout": settings.broker_sentinel_socket_timeout}
    else:
        options["sentinel_kwargs"] = {"socket_timeout": settings.broker_sentinel_socket_timeout}
    return url, options


def master_client(settings: Settings, *, asyncio: bool = False, **kwargs: Any):
    """A redis-py client for the current master (redis.asyncio when `asyncio`)."""
    if asyncio:
        from redis.asyncio.sentinel import Sentinel
    else:
        from redis.sentinel import Sentinel
    sentinel_kwargs = {"socket_timeout": settings.broker_sentinel_socket_timeout}
    if settings.broker_sentinel_sentinel_password:
        sentinel_kwargs["password"] = settings.broker_sentinel_sentinel_password
    sentinel = Sentinel(sentinels(settings), sentinel_kwargs=sentinel_kwargs,
                        socket_timeout=kwargs.pop("socket_timeout", settings.broker_sentinel_socket_timeout))
    return sentinel.master_for(settings.broker_sentinel_master, db=settings.broker_sentinel_db,
                               password=settings.broker_sentinel_password or None, **kwargs)


def broker_client(settings: Settings, **kwargs: Any):
    """The redis-py client every part of the service uses for the broker: the Sentinel master when
    Sentinels are configured, else RXGATE_BROKER_URL (or the embedded / local default)."""
    if enabled(settings):
        return master_client(settings, **kwargs)
    import redis

    from workers.queue.embedded import resolve_stream_url

    return redis.Redis.from_url(resolve_stream_url(settings), **kwargs)
