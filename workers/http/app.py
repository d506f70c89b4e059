"""The audit app: `create_app(...)` builds it, `settings_app()` is the uvicorn factory `rxgate serve` runs
(`uvicorn --factory workers.http.app:settings_app`). Nothing is built at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import tzinfo

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from workers.health import health_status
from workers.http import api, operators, pages
from workers.http.access_log import install_access_log_filter
from workers.http.auth import AuditAuth
from workers.http.cds import CdsConfig, cds_router
from workers.settings import Settings
from workers.store import SqlStore, open_sql_store

__all__ = ["create_app", "settings_app"]

log = logging.getLogger("rxgate.audit_api")

DESCRIPTION = ("Read-only access to rxgate's audit log (docs/interfaces.md §4). Send `Authorization: Bearer <token>`; "
               "the server keeps only the token's SHA-256 (RXGATE_AUDIT_TOKEN_SHA256).")


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


def create_app(store_url: str | None = None, token_sha256: str | None = None, *, tz: tzinfo | None = None,
               store: SqlStore | None = None, service_health: Callable[[], dict] | None = None,
               cds: CdsConfig | None = None, dead_letters: Callable[[], object] | None = None) -> FastAPI:
    """The audit app over the database at `store_url` (or an open `store`).

    `service_health`: when given (by `rxgate serve`), /health reports the broker and the database.
    `token_sha256`: hex SHA-256 of the bearer token; empty or None closes every protected route.
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
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.tz = tz
    app.state.auth = AuditAuth(token_sha256)
    app.state.service_health = service_health
    app.state.dead_letters = dead_letters
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(operators.router)
    app.include_router(cds_router(store, cds if cds is not None else CdsConfig.from_settings(Settings())))
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")  # the CSS: open, no data
    # imported here, not at the top: importing workers.metrics chooses the multiprocess directory
    from workers.metrics import mount_metrics  # open GET /metrics (docs/metrics.md)

    mount_metrics(app)
    return app


def settings_app() -> FastAPI:
    """The app as `rxgate serve` / uvicorn runs it: RXGATE_DATABASE_URL and RXGATE_AUDIT_TOKEN_SHA256."""
    settings = Settings()
    from workers import metrics

    metrics.configure(settings)  # /metrics sums the counters of every process of the service
    if not settings.audit_token_sha256:
        log.warning("RXGATE_AUDIT_TOKEN_SHA256 is not set: every audit route answers 401")
    return create_app(settings.database_url, settings.audit_token_sha256, tz=settings.tz,
                      service_health=lambda: health_status(settings), dead_letters=lambda: _dead_letters(settings))


def _dead_letters(settings: Settings):
    from workers.cli.deadletter import dead_letters

    return dead_letters(settings)
