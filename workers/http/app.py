"""The audit app: `create_app(...)` builds it, `settings_app()` is the uvicorn factory `rxgate serve` runs
(`uvicorn --factory workers.http.app:settings_app`). Nothing is built at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import tzinfo

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from workers.health import health_status
from workers.http import api, hl7, operators, pages
from workers.http.access_log import install_access_log_filter
from workers.http.auth import AccessControl, FailureLimiter
from workers.http.cds import MAX_BODY_BYTES as CDS_MAX_BODY_BYTES
from workers.http.cds import CdsConfig, cds_router
from workers.http.limits import DEFAULT_BODY_LIMIT, BodyLimit, SecurityHeaders
from workers.settings import Settings
from workers.store import SqlStore, StoreUnavailable, open_sql_store
from workers.store.access import AccessLedger
from workers.store.chain import ChainKeyError

__all__ = ["create_app", "settings_app"]

log = logging.getLogger("rxgate.audit_api")

DESCRIPTION = ("rxgate's audit log (read-only), HL7 v2 over HTTP and CDS Hooks (docs/interfaces.md §4, §5). Send "
               "`Authorization: Bearer <token>` with a token made by `rxgate users add` (the server keeps only its "
               "SHA-256); roles: auditor (the audit log), operator (health details), submit (POST /hl7).")


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable `message` naming every bad parameter (and FastAPI's list as `detail`)."""
    errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", [])[1:]) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return JSONResponse({"message": "; ".join(parts), "detail": errors}, status_code=422)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """Every error body has `message` (and `detail`, FastAPI's usual key)."""
    detail = exc.detail
    body = dict(detail) if isinstance(detail, dict) else {"message": str(detail)}
    body.setdefault("detail", body.get("message"))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
    """The database is down: 503, nothing read (an access-log row that cannot be written refuses the read)."""
    log.error("audit API: database unavailable (%s)", type(exc).__name__)
    return JSONResponse({"message": "database unavailable", "detail": "database unavailable"}, status_code=503)


async def _no_audit_key(_request: Request, exc: Exception) -> JSONResponse:
    """No audit key configured: the access log cannot be written, so no patient data is read (503)."""
    log.error("audit API: %s", exc)
    return JSONResponse({"message": "the audit key is not configured", "detail": "the audit key is not configured"},
                        status_code=503)


def body_limits(max_message_bytes: int) -> Callable[[str], int]:
    """The request body cap of each path (workers/http/limits.py)."""

    def limit_for(path: str) -> int:
        if path == "/hl7":
            return max_message_bytes
        if path.startswith("/cds-services/"):
            return CDS_MAX_BODY_BYTES
        return DEFAULT_BODY_LIMIT

    return limit_for


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    judge = app.state.hl7_judge  # the Verdicts of HL7 over HTTP: its outbound reader runs with the app
    if judge is not None and hasattr(judge, "start"):
        await judge.start()
    try:
        yield
    finally:
        if judge is not None and hasattr(judge, "close"):
            await judge.close()


def create_app(store_url: str | None = None, token_sha256: str | None = None, *, tz: tzinfo | None = None,
               store: SqlStore | None = None, service_health: Callable[[], dict] | None = None,
               cds: CdsConfig | None = None, hl7_judge: hl7.Hl7Judge | None = None,
               hl7_settings: Settings | None = None, clock: Callable[[], float] = time.time,
               limiter: FailureLimiter | None = None, dead_letters: Callable[[], object] | None = None) -> FastAPI:
    """The audit app over the database at `store_url` (or an open `store`).

    `service_health`: when given (by `rxgate serve`), /health reports the broker and the database.
    `token_sha256`: hex SHA-256 of the old single audit token, one `auditor` credential named
    `audit-token`; the people and systems of `rxgate users` are the others.
    `hl7_judge`, `hl7_settings`: POST /hl7's queue (a started-with-the-app workers.queue.verdicts.Verdicts)
    and settings (timeout, size limit, time zone); without them /hl7 answers 503.
    `clock`, `limiter`: session expiry and the per-address failure limit (tests drive them).
    `tz`: the zone of since/until dates and of displayed times (default: RXGATE_TIMEZONE; a bad
    value is the settings' error, not a silent UTC).
    `cds`: the CDS Hooks routes' configuration (default: from the RXGATE_* settings, so a bad
    RXGATE_CDS_ISSUERS is a start-up error naming it).
    `dead_letters`: gives the dead-letter stream (`workers.queue.deadletters.DeadLetters`) for the
    operators' routes; None: those routes answer 503.
    """
    if tz is None:
        tz = Settings().tz
    if store is None:
        if not store_url:
            raise ValueError("create_app needs store_url or store")
        store = open_sql_store(store_url, create=False)  # the API reads a log, never makes one
    install_access_log_filter()
    # openapi.json and /docs are routes of their own, behind the token (workers/http/api.py)
    app = FastAPI(title="rxgate audit API", version="1", description=DESCRIPTION,
                  openapi_url=None, docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.store = store
    app.state.tz = tz
    app.state.access_ledger = AccessLedger(store)
    app.state.auth = AccessControl(app.state.access_ledger, token_sha256, limiter=limiter, clock=clock)
    app.state.service_health = service_health
    app.state.hl7_judge = hl7_judge
    app.state.hl7_settings = hl7_settings
    app.state.dead_letters = dead_letters
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(ChainKeyError, _no_audit_key)
    app.add_middleware(SecurityHeaders)
    max_message = (hl7_settings or Settings()).max_message_bytes
    app.add_middleware(BodyLimit, limit_for=body_limits(max_message))  # outermost: before any route reads
    app.include_router(api.router)
    app.include_router(hl7.router)
    app.include_router(pages.router)
    app.include_router(operators.router)
    app.include_router(cds_router(store, cds if cds is not None else CdsConfig.from_settings(Settings())))
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")  # the CSS: open, no data
    # imported here, not at the top: importing workers.metrics chooses the multiprocess directory
    from workers.metrics import mount_metrics  # open GET /metrics (docs/metrics.md)

    mount_metrics(app)
    return app


def settings_app() -> FastAPI:
    """The app as `rxgate serve` / uvicorn runs it: RXGATE_DATABASE_URL, the people of `rxgate users`,
    RXGATE_AUDIT_TOKEN_SHA256 (one auditor credential) and, for POST /hl7, the broker's inbound stream."""
    settings = Settings()
    from workers import metrics
    from workers.queue.embedded import resolve_stream_url
    from workers.queue.verdicts import Verdicts

    metrics.configure(settings)  # /metrics sums the counters of every process of the service
    judge = Verdicts.connect(settings, resolve_stream_url(settings))
    return create_app(settings.database_url, settings.audit_token_sha256, tz=settings.tz,
                      service_health=lambda: health_status(settings), hl7_judge=judge, hl7_settings=settings,
                      dead_letters=lambda: _dead_letters(settings))


def _dead_letters(settings: Settings):
    from workers.cli.deadletter import dead_letters

    return dead_letters(settings)
