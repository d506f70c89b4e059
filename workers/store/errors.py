"""The store's exceptions, and the one place database errors are turned into them.

- `StoreUnavailable`: the database cannot be reached, opened or is busy. Transient by design: the
  stream bridge and the Celery task wait and retry (workers/bootstrap.py `is_transient`).
- `HistoryChanged`: another worker changed the patient's course while a message was judged.
- `StoreRefused`: the database refused a statement (a constraint, a value it cannot hold): a fault
  of the code or the schema, not worth waiting out.
- `StoreMissing`: opened with `create=False` (the auditors' commands, the HTTP API) and there is no
  rxgate audit log at the URL. Not transient: a wrong URL does not heal by waiting.

Why the translation: a database error's text can carry patient data. SQLAlchemy appends the
statement's bound parameters to `str(exc)` (the engines also set `hide_parameters=True`), and
PostgreSQL's DETAIL quotes the failing row ("Failing row contains (..., ZQMRN4242, ...)"). The
bridge and the Celery task put an exception's first line into dead letters and answers, and any
logger may print it, so `database_errors` keeps only the error's class, the driver's error code and
the URL (password hidden), and drops the original exception entirely (no `__context__` to print).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from validator.history import HistoryChanged as CoreHistoryChanged


class StoreUnavailable(Exception):
    """The database cannot be reached or opened (said plainly, password hidden)."""


class HistoryChanged(StoreUnavailable, CoreHistoryChanged):
    """The patient's course history changed between reading it and saving the verdict (concurrent workers).

    The core judges again at once (validator.service); should that keep losing the race, it is
    transient by design (a StoreUnavailable): the bridge and the Celery task retry.
    """


class StoreRefused(Exception):
    """The database refused a statement; the text names the error class and code, never its values."""


class StoreMissing(Exception):
    """No rxgate audit log at the URL, and the caller must not create one (docs/interfaces.md §5 "Access")."""


# The errors worth waiting out, as the retry policy already counted them by name (workers/bootstrap.py).
_TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError, PendingRollbackError)


def describe_database_error(exc: BaseException) -> str:
    """`OperationalError (sqlite3.OperationalError SQLITE_BUSY)`: classes and codes, no message text."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    driver = f"{type(orig).__module__}.{type(orig).__qualname__}" + (f" {code}" if code else "")
    return f"{type(exc).__name__} ({driver})"


def safe_database_error(exc: SQLAlchemyError, where: str) -> Exception:
    """The store's exception for a SQLAlchemy error at `where` (a URL with the password hidden)."""
    what = describe_database_error(exc)
    if isinstance(exc, _TRANSIENT):
        return StoreUnavailable(f"database {where} unavailable: {what}")
    return StoreRefused(f"database {where} refused a statement: {what}")


F = TypeVar("F", bound=Callable[..., Any])


def database_errors(func: F) -> F:
    """For a SqlStore method or an audit query whose first argument is the store: SQLAlchemy errors
    leave as `StoreUnavailable` / `StoreRefused` naming only the class, code and the store's safe URL."""

    @functools.wraps(func)
    def guarded(store, *args, **kwargs):
        try:
            return func(store, *args, **kwargs)
        except SQLAlchemyError as exc:
            error = safe_database_error(exc, store.safe_url)
        # raised outside the handler: the original (with its parameters and DETAIL) is not kept as context
        raise error from None

    return guarded  # type: ignore[return-value]
