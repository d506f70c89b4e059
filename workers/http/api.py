"""The JSON routes of the audit API (docs/interfaces.md §4, §5 "Access"): /health, /health/details, /audit/*,
/openapi.json, /docs.

Roles: /audit/* needs `auditor` (and a list or a record read leaves its access-log row,
workers/http/phi_access.py); /health/details `operator`; /openapi.json and /docs any credential.
/health is open and says only up or down.

The store, the time zone and the optional service health check are the app's
(`request.app.state`, set by `create_app`), so the routes are plain definitions.
"""

# no `from __future__ import annotations`: FastAPI must see the Annotated types at runtime
from collections import Counter
from collections.abc import Callable
from datetime import date, tzinfo
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse

from workers.http.auth import Principal, require_role
from workers.http.phi_access import record_read
from workers.http.schemas import Head, MessageDetail, MessagePage, Stats, VerifyOut
from workers.store import AuditFilter, FilterError, SqlStore, get_message, query_messages, stats, verify_chain

__all__ = ["MAX_ID", "router", "stats_body"]

MAX_ID = 2**31 - 1  # record ids and offsets: what every database's integer holds
_TEXT = r"^[^\x00-\x1f\x7f]*$"  # printable: no control characters in filter values
_UNAUTHORISED = {401: {"description": "missing or wrong credential"},
                 403: {"description": "the credential lacks the route's role"},
                 429: {"description": "too many failed credentials from this address"}}


def _store(request: Request) -> SqlStore:
    return request.app.state.store


def _tz(request: Request) -> tzinfo:
    return request.app.state.tz


def audit_filter(
    patient: Annotated[str | None, Query(max_length=200, pattern=_TEXT,
                                         description="PID-3 identifier, or ID^authority")] = None,
    since: Annotated[date | None, Query(description="received on or after this date (YYYY-MM-DD, "
                                                    "service time zone)")] = None,
    until: Annotated[date | None, Query(description="received on or before this date (inclusive)")] = None,
    outcome: Annotated[Literal["AA", "AE", "AR"] | None, Query(description="the message's ack code")] = None,
    rule: Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$",
                                      description="messages with a finding of this rule id")] = None,
    control_id: Annotated[str | None, Query(max_length=200, pattern=_TEXT, description="MSH-10")] = None,
    overridden: Annotated[bool, Query(description="only messages with an order overridden with a reason")] = False,
) -> AuditFilter:
    try:
        return AuditFilter(patient=patient or None, since=since, until=until, outcome=outcome,
                           rule=rule or None, control_id=control_id or None, overridden=overridden).check()
    except FilterError as exc:
        raise HTTPException(422, {"message": str(exc)}) from None


StoreDep = Annotated[SqlStore, Depends(_store)]
TzDep = Annotated[tzinfo, Depends(_tz)]
Filters = Annotated[AuditFilter, Depends(audit_filter)]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size (1-1000)")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="records to skip")]
Auditor = Annotated[Principal, Depends(require_role("auditor"))]

router = APIRouter()
audit = APIRouter(prefix="/audit", tags=["audit"], dependencies=[Depends(require_role("auditor"))],
                  responses=_UNAUTHORISED)


@router.get("/health", tags=["service"], responses={503: {"description": "down"}})
def health(request: Request, store: StoreDep):
    """Open: only `{"status": "up"}` or `{"status": "down"}` (503); the parts and their detail need `operator`."""
    up = _health_details(request, store)["status"] == "ok"
    return JSONResponse({"status": "up" if up else "down"}, status_code=200 if up else 503)


@router.get("/health/details", tags=["service"], dependencies=[Depends(require_role("operator"))],
            responses={**_UNAUTHORISED, 503: {"description": "broker or database unavailable"}})
def health_details(request: Request, store: StoreDep):
    status = _health_details(request, store)
    return JSONResponse(status, status_code=200 if status.get("status") == "ok" else 503)


def _health_details(request: Request, store: SqlStore) -> dict[str, Any]:
    service_health: Callable[[], dict] | None = request.app.state.service_health
    if service_health is not None:
        # the running service: broker and database, as `rxgate health` reports them
        return service_health()
    try:
        store.head()
    except Exception:  # noqa: BLE001 - health says unavailable, never a traceback
        return {"status": "unavailable", "database": {"ok": False, "detail": "database unavailable"}}
    return {"status": "ok", "database": {"ok": True}}


@audit.get("/messages", response_model=MessagePage, responses={422: {"description": "bad filter value"}})
def list_messages(request: Request, who: Auditor, store: StoreDep, tz: TzDep, flt: Filters, limit: Limit = 100,
                  offset: Offset = 0):
    record_read(request, who)
    total, items = query_messages(store, flt, tz, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@audit.get("/messages/{message_id}", response_model=MessageDetail, responses={404: {"description": "no such record"}})
def one_message(request: Request, who: Auditor, store: StoreDep, tz: TzDep,
                message_id: Annotated[int, Path(ge=1, le=MAX_ID)]):
    record_read(request, who, f"record {message_id}")
    detail = get_message(store, message_id, tz)
    if detail is None:
        raise HTTPException(404, f"no audit record {message_id}")
    return detail


@audit.get("/stats", response_model=Stats, responses={422: {"description": "bad filter value"}})
def message_stats(store: StoreDep, tz: TzDep, flt: Filters):
    return stats_body(stats(store, flt, tz))


@audit.get("/head", response_model=Head)
def head(store: StoreDep):
    h = store.head()
    return {"seq": h[0], "hash": h[1]} if h else {"seq": None, "hash": None}


@audit.get("/verify", response_model=VerifyOut)
def verify(store: StoreDep):
    from workers.store.chain import ChainKeyError

    try:
        r = verify_chain(store)
    except ChainKeyError as exc:  # the API was started without the audit key: it cannot say "intact"
        raise HTTPException(503, f"cannot verify the audit chain: {exc}") from None
    return {"intact": r.intact, "checked": r.checked, "first_bad_seq": r.first_bad_seq,
            "reason": r.describe(), "head_seq": r.head_seq, "head_hash": r.head_hash}


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_role(None))])
def openapi(request: Request):
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False, dependencies=[Depends(require_role(None))])
def docs():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="rxgate audit API")


router.include_router(audit)


def stats_body(days: list[dict[str, Any]]) -> dict[str, Any]:
    """/audit/stats: the per-day counts and their totals (rules most frequent first)."""
    outcomes: Counter = Counter()
    rules: Counter = Counter()
    for d in days:
        outcomes.update(d["outcomes"])
        rules.update(d["rules"])
    return {
        "total": sum(d["messages"] for d in days),
        "outcomes": {k: outcomes.get(k, 0) for k in ("AA", "AE", "AR")},
        "rules": dict(sorted(rules.items(), key=lambda kv: (-kv[1], kv[0]))),
        "days": days,
    }
