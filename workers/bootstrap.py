"""Wire settings to the core: protocol, time zone and store, for the Celery task and the stream bridge.

`bootstrap(settings)` is the one place a running service gets its parts; the
retry policy both entry points share lives next to it.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from validator import Outcome, Store, process_delivery
from validator.er7 import decode
from validator.protocol import ProtocolSet, load_protocol_set
from workers import metrics
from workers.settings import Settings
from workers.store import open_sql_store

log = logging.getLogger("rxgate.service")


@dataclass
class Service:
    settings: Settings
    protocol: ProtocolSet
    tz: tzinfo
    store: Store
    extras: dict[str, Any] = field(default_factory=dict)

    def process(self, message: str | bytes, received_at: datetime | None = None,
                store: Store | None = None, observe: bool = True, delivery_id: str | None = None) -> list[Outcome]:
        """The one outcome of one delivery (a queue entry, a task), as a list (process_delivery never
        raises for bad input). `delivery_id`: recorded with it, so a redelivery is answered from the store.

        `store`: instead of the service's own, e.g. a `BatchedStore` over it (the stream bridge, which
        then counts the outcomes in the metrics itself once they are written: `observe=False`).
        """
        text = decode(message) if isinstance(message, bytes) else message
        started = time.perf_counter()
        outcomes = [process_delivery(
            text, store or self.store, self.protocol, tz=self.tz, received_at=received_at,
            limits=self.settings.limits, delivery_id=delivery_id,
        )]
        if observe:
            metrics.observe(outcomes, time.perf_counter() - started)  # never raises
        return outcomes


def bootstrap(settings: Settings | None = None, *, store: Store | None = None) -> Service:
    """Settings -> protocol, tz, store: the SQL store at `settings.database_url` unless one is given
    (tests pass fakes or the in-memory store)."""
    settings = settings or Settings()
    protocol = load_protocol_set(settings.protocol, settings.protocol_field)
    if store is None:
        store = open_store(settings.database_url, settings)
    return Service(settings=settings, protocol=protocol, tz=settings.tz, store=store)


def settle_heap() -> None:
    """For a long-running worker once it is set up: everything allocated so far (modules, protocol,
    engine, compiled statements) leaves the cyclic GC's view, so the full collection that comes every
    ~2000 messages does not walk it again (a 28 ms pause per collection measured: BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()


def open_store(url: str, settings: Settings | None = None) -> Store:
    """The service's store, created or migrated (a SQLite file and its directories made), with the
    audit chain's key from the settings.

    One that cannot be opened raises `StoreUnavailable` naming the URL (password hidden), no audit key
    `ChainKeyError` naming RXGATE_AUDIT_KEY / RXGATE_AUDIT_KEY_FILE: start-up errors, never a fallback
    to a store without audit log, de-duplication or a keyed chain.
    """
    keys = (settings or Settings()).chain_keys()  # before the database: a missing key changes nothing
    return open_sql_store(url, create=True, keys=keys)


# --- retry policy shared by the Celery task and the bridge -------------------------------------------------

_TRANSIENT_NAMES = {
    # by class name, so no driver has to be importable here
    "OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError", "PendingRollbackError",
    "ConnectionError", "BusyLoadingError", "ReadOnlyError", "ConnectionRefusedError", "ConnectionResetError",
    "BrokenPipeError", "StoreUnavailable",
}


def is_transient(exc: BaseException) -> bool:
    """A fault of the database or broker (worth waiting out), not of the message or the code."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    for cls in type(exc).__mro__:
        if cls.__name__ in _TRANSIENT_NAMES:
            return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def backoff_delays(settings: Settings) -> Iterator[float]:
    """Exponential delays (initial, x2, ... capped at retry_max_delay) whose sum just reaches retry_budget."""
    total, delay = 0.0, max(settings.retry_initial_delay, 0.001)
    while total < settings.retry_budget:
        step = min(delay, settings.retry_max_delay, settings.retry_budget - total)
        yield step
        total += step
        delay *= 2


def retry_count(settings: Settings) -> int:
    return sum(1 for _ in backoff_delays(settings))


def default_consumer_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"
