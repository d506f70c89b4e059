"""The auditors' HTTP API and web page (read-only), docs/interfaces.md §4.

    GET /health                       open: {"status": "ok"} (503 when the database is unreachable)
    GET /audit/messages               filters patient, since, until, outcome, rule, control_id + limit, offset
    GET /audit/messages/{id}          one record: findings, raw message, response, computed values, chain link
    GET /audit/stats                  per local day: counts by outcome and by rule (same filters)
    GET /audit/head                   latest sequence number and hash (anchor it elsewhere)
    GET /audit/verify                 recompute the hash chain
    GET /openapi.json, /docs          the OpenAPI description (behind the token too)
    GET /login, POST /login           the login form: checks the token, sets an HttpOnly session cookie
    GET /ui, /ui/messages/{id}        the server-rendered auditor page (filter form, table, detail, chart)

Every route but /health and /login needs `Authorization: Bearer <token>` where SHA-256(token) equals
RXGATE_AUDIT_TOKEN_SHA256, or the session cookie; otherwise 401. With no hash configured every
protected route is 401 (closed by default). Bad filter values are 422 with a readable `message`.
Query strings (which may hold a patient id) are removed from uvicorn's access log.
"""

# no `from __future__ import annotations`: FastAPI must see the closures' Annotated types at runtime
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, tzinfo
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import DictLoader, Environment, select_autoescape
from pydantic import BaseModel

from workers.store import (
    AuditFilter,
    FilterError,
    SqlStore,
    get_message,
    open_sql_store,
    parse_filter,
    query_messages,
    stats,
    verify_chain,
)

log = logging.getLogger("rxgate.audit_api")

SESSION_COOKIE = "rxgate_audit_session"
SESSION_SECONDS = 8 * 3600
MAX_ID = 2**31 - 1
_TEXT = r"^[^\x00-\x1f\x7f]*$"  # printable: no control characters in filter values

# --------------------------------------------------------------------------------------------
# response models (the OpenAPI description)


class FindingOut(BaseModel):
    rule: str
    severity: str
    location: str | None
    message: str
    order_index: int | None = None
    placer_order_number: str | None = None


class ProtocolOut(BaseModel):
    id: str
    version: str


class MessageSummary(BaseModel):
    id: int
    received_at: str | None
    answered_at: str | None
    sender: str
    control_id: str | None
    message_type: str | None
    patient_id: str | None
    outcome: str | None
    rules: list[str]
    findings: list[FindingOut]
    protocol: ProtocolOut | None


class MessagePage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[MessageSummary]


class ChainLink(BaseModel):
    seq: int
    prev_hash: str
    hash: str


class MessageDetail(MessageSummary):
    sending_application: str
    sending_facility: str
    patient_key: str
    content_sha256: str
    raw_message: str
    response: str | None
    computed: dict[str, Any]
    orders: list[dict[str, Any]]
    chain: ChainLink | None


class DayStats(BaseModel):
    date: str
    messages: int
    outcomes: dict[str, int]
    rules: dict[str, int]


class Stats(BaseModel):
    total: int
    outcomes: dict[str, int]
    rules: dict[str, int]
    days: list[DayStats]


class Head(BaseModel):
    seq: int | None
    hash: str | None


class VerifyOut(BaseModel):
    intact: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None
    head_hash: str | None


class Health(BaseModel):
    status: str


# --------------------------------------------------------------------------------------------
# access log without query strings


class _DropQueryStrings(logging.Filter):
    """uvicorn.access logs (client, method, path, version, status): keep the path, drop `?...`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


_ACCESS_FILTER = _DropQueryStrings()


def install_access_log_filter() -> None:
    logger = logging.getLogger("uvicorn.access")
    if _ACCESS_FILTER not in logger.filters:
        logger.addFilter(_ACCESS_FILTER)


# --------------------------------------------------------------------------------------------
# the app


def create_app(store_url: str | None = None, token_sha256: str | None = None, *, tz: tzinfo | None = None,
               store: SqlStore | None = None, service_health: Callable[[], dict] | None = None) -> FastAPI:
    """The audit app over the database at `store_url` (or an open `store`).

    `service_health`: when given (by `rxgate serve`), /health reports the broker and the database.
    `token_sha256`: hex SHA-256 of the bearer token; empty or None closes every protected route.
    `tz`: the zone of since/until dates and of displayed times (default: RXGATE_TIMEZONE).
    """
    if tz is None:
        tz = _settings_tz()
    if store is None:
        if not store_url:
            raise ValueError("create_app needs store_url or store")
        store = open_sql_store(store_url, create=False)  # the API reads a log, never makes one
    expected = (token_sha256 or "").strip().lower()
    session_key = secrets.token_bytes(32)
    install_access_log_filter()

    app = FastAPI(
        title="rxgate audit API",
        version="1",
        description="Read-only access to rxgate's audit log (docs/interfaces.md §4). Send `Authorization: Bearer <token>`; "
                    "the server keeps only the token's SHA-256 (RXGATE_AUDIT_TOKEN_SHA256).",
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    app.state.store = store
    app.state.tz = tz
    bearer = HTTPBearer(auto_error=False, description="the audit token (its SHA-256 is configured on the server)")

    def token_ok(token: str | None) -> bool:
        if not expected or not token:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(digest, expected)

    def new_session() -> str:
        expires = str(int(time.time()) + SESSION_SECONDS)
        mac = hmac.new(session_key, f"{expires}:{expected}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def session_ok(value: str | None) -> bool:
        if not expected or not value or "." not in value:
            return False
        expires, mac = value.split(".", 1)
        if not expires.isdigit() or int(expires) < time.time():
            return False
        good = hmac.new(session_key, f"{expires}:{expected}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, good)

    def authorised(request: Request, creds: HTTPAuthorizationCredentials | None) -> bool:
        if creds is not None and creds.scheme.lower() == "bearer" and token_ok(creds.credentials):
            return True
        return session_ok(request.cookies.get(SESSION_COOKIE))

    def require_auth(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if not authorised(request, creds):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def filters(
        patient: Annotated[str | None, Query(max_length=200, pattern=_TEXT,
                                             description="PID-3 identifier, or ID^authority")] = None,
        since: Annotated[date | None, Query(description="received on or after this date (YYYY-MM-DD, "
                                                        "service time zone)")] = None,
        until: Annotated[date | None, Query(description="received on or before this date (inclusive)")] = None,
        outcome: Annotated[Literal["AA", "AE", "AR"] | None, Query(description="the message's ack code")] = None,
        rule: Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$",
                                          description="messages with a finding of this rule id")] = None,
        control_id: Annotated[str | None, Query(max_length=200, pattern=_TEXT, description="MSH-10")] = None,
    ) -> AuditFilter:
        try:
            return AuditFilter(patient=patient or None, since=since, until=until, outcome=outcome,
                               rule=rule or None, control_id=control_id or None).check()
        except FilterError as exc:
            raise HTTPException(422, {"message": str(exc)}) from None

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        parts = []
        for e in errors:
            where = ".".join(str(p) for p in e.get("loc", [])[1:]) or "request"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"message": "; ".join(parts), "detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException):
        detail = exc.detail
        body = detail if isinstance(detail, dict) else {"message": str(detail)}
        body.setdefault("detail", body.get("message"))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    auth = [Depends(require_auth)]
    Limit = Annotated[int, Query(ge=1, le=1000, description="page size (1-1000)")]
    Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="records to skip")]
    Filters = Annotated[AuditFilter, Depends(filters)]

    @app.get("/health", tags=["service"], responses={503: {"description": "broker or database unavailable"}})
    def health():
        if service_health is not None:
            # the running service: broker and database, as `rxgate health` reports them
            status = service_health()
            return JSONResponse(status, status_code=200 if status.get("status") == "ok" else 503)
        try:
            store.head()
        except Exception:  # noqa: BLE001 - health says unavailable, never a traceback
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/audit/messages", response_model=MessagePage, dependencies=auth, tags=["audit"],
             responses={401: {"description": "missing or wrong token"}, 422: {"description": "bad filter value"}})
    def list_messages(flt: Filters, limit: Limit = 100, offset: Offset = 0):
        total, items = query_messages(store, flt, tz, limit=limit, offset=offset)
        return {"total": total, "limit": limit, "offset": offset, "items": items}

    @app.get("/audit/messages/{message_id}", response_model=MessageDetail, dependencies=auth, tags=["audit"],
             responses={401: {"description": "missing or wrong token"}, 404: {"description": "no such record"}})
    def one_message(message_id: Annotated[int, Path(ge=1, le=MAX_ID)]):
        detail = get_message(store, message_id, tz)
        if detail is None:
            raise HTTPException(404, f"no audit record {message_id}")
        return detail

    @app.get("/audit/stats", response_model=Stats, dependencies=auth, tags=["audit"],
             responses={401: {"description": "missing or wrong token"}, 422: {"description": "bad filter value"}})
    def message_stats(flt: Filters):
        return _stats_body(stats(store, flt, tz))

    @app.get("/audit/head", response_model=Head, dependencies=auth, tags=["audit"])
    def head():
        h = store.head()
        return {"seq": h[0], "hash": h[1]} if h else {"seq": None, "hash": None}

    @app.get("/audit/verify", response_model=VerifyOut, dependencies=auth, tags=["audit"])
    def verify():
        r = verify_chain(store)
        return {"intact": r.intact, "checked": r.checked, "first_bad_seq": r.first_bad_seq,
                "reason": r.describe(), "head_seq": r.head_seq, "head_hash": r.head_hash}

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    def openapi():
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="rxgate audit API")

    _add_pages(app, store, tz, token_ok, new_session, authorised, bearer)
    from workers.metrics import mount_metrics  # open GET /metrics (docs/metrics.md)

    mount_metrics(app)
    return app


def _stats_body(days: list[dict[str, Any]]) -> dict[str, Any]:
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


def _settings_tz() -> tzinfo:
    try:
        from workers.settings import Settings

        return Settings().tz
    except Exception:  # noqa: BLE001 - a bad RXGATE_TIMEZONE is reported by the service at start
        return UTC


def settings_app() -> FastAPI:
    """The app as `rxgate serve` / uvicorn runs it: RXGATE_DATABASE_URL and RXGATE_AUDIT_TOKEN_SHA256."""
    from workers.settings import Settings

    settings = Settings()
    if not settings.audit_token_sha256:
        log.warning("RXGATE_AUDIT_TOKEN_SHA256 is not set: every audit route answers 401")
    from workers.health import health_status

    return create_app(settings.database_url, settings.audit_token_sha256, tz=settings.tz,
                      service_health=lambda: health_status(settings))


# --------------------------------------------------------------------------------------------
# the auditor page (server-rendered, no front-end build)

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}rxgate audit{% endblock %}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#23395d;color:#fff;padding:.6rem 1rem;display:flex;justify-content:space-between;align-items:center}
header a,header button{color:#fff}
main{padding:1rem;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#eef1f6}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:1rem}
form.filters label{display:flex;flex-direction:column;font-size:.8rem}
.AA{color:#1d6b2f}.AE{color:#a55a00}.AR{color:#b00020}
.error{background:#fde7ea;border:1px solid #b00020;padding:.5rem;margin:.5rem 0}
pre.segments{background:#fff;border:1px solid #ddd;padding:.5rem;overflow-x:auto;line-height:1.6}
mark.sev-error{background:#ffc9cf;border-bottom:2px solid #b00020}
mark.sev-warning{background:#ffe8b3;border-bottom:2px solid #a55a00}
mark.sev-info{background:#dbe9ff}
.seg-flagged{background:#fff6f6}
.seg-name{font-weight:bold}
.pager{margin:.5rem 0}
</style></head><body>
<header><strong>rxgate audit log</strong>{% if authed %}<form method="post" action="/logout" style="margin:0">
<button type="submit" id="logout">Log out</button></form>{% endif %}</header>
<main>{% block main %}{% endblock %}</main></body></html>"""

_LOGIN = """{% extends "base" %}{% block title %}rxgate audit: log in{% endblock %}{% block main %}
<h1>Log in</h1>
<p>Enter the audit token. It is checked against the SHA-256 configured on the server.</p>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/login">
<label>Token <input type="password" name="token" id="token" autocomplete="current-password" required></label>
<input type="hidden" name="next" value="{{ next }}">
<button type="submit" id="login">Log in</button>
</form>{% endblock %}"""

_LIST = """{% extends "base" %}{% block main %}
<h1>Messages</h1>
<form class="filters" method="get" action="/ui" id="filters">
<label>Patient <input name="patient" value="{{ f.patient or '' }}"></label>
<label>Since <input type="date" name="since" value="{{ f.since or '' }}"></label>
<label>Until <input type="date" name="until" value="{{ f.until or '' }}"></label>
<label>Outcome <select name="outcome"><option value="">any</option>
{% for o in ['AA','AE','AR'] %}<option value="{{ o }}" {% if f.outcome == o %}selected{% endif %}>{{ o }}</option>{% endfor %}
</select></label>
<label>Rule <input name="rule" value="{{ f.rule or '' }}"></label>
<label>Control id <input name="control_id" value="{{ f.control_id or '' }}"></label>
<button type="submit" id="apply">Filter</button> <a href="/ui">clear</a>
</form>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% else %}
<section id="chart"><h2>Outcomes per day</h2>{{ chart|safe }}
{% if top_rules %}<table id="top-rules"><caption>Top rules per day (messages with an error or warning)</caption>
<tr><th>Date</th><th>Rules</th></tr>
{% for d in top_rules %}<tr><td>{{ d.date }}</td><td>{% for r, n in d.rules %}{{ r }} ({{ n }}){% if not loop.last %}, {% endif %}{% endfor %}</td></tr>{% endfor %}
</table>{% endif %}</section>
<h2>Results</h2><p id="total">{{ total }} message{{ '' if total == 1 else 's' }}</p>
<table id="results"><thead><tr><th>#</th><th>Received</th><th>Control id</th><th>Sender</th><th>Patient</th>
<th>Outcome</th><th>Rules</th></tr></thead><tbody>
{% for m in items %}<tr><td><a href="/ui/messages/{{ m.id }}">{{ m.id }}</a></td><td>{{ m.received_at }}</td>
<td>{{ m.control_id or '-' }}</td><td>{{ m.sender or '-' }}</td><td>{{ m.patient_id or '-' }}</td>
<td class="{{ m.outcome }}">{{ m.outcome }}</td><td>{{ m.rules|join(', ') or '-' }}</td></tr>
{% endfor %}</tbody></table>
<p class="pager">{% if prev_url %}<a href="{{ prev_url }}" id="prev">&larr; previous</a>{% endif %}
{% if next_url %}<a href="{{ next_url }}" id="next">next &rarr;</a>{% endif %}</p>
{% endif %}{% endblock %}"""

_DETAIL = """{% extends "base" %}{% block title %}rxgate audit: record {{ m.id }}{% endblock %}{% block main %}
<p><a href="/ui">&larr; all messages</a></p>
<h1>Record {{ m.id }} <span class="{{ m.outcome }}" id="outcome">{{ m.outcome }}</span></h1>
<table id="summary">
<tr><th>Control id</th><td>{{ m.control_id or '-' }}</td><th>Message type</th><td>{{ m.message_type or '-' }}</td></tr>
<tr><th>Sender</th><td>{{ m.sender or '-' }}</td><th>Patient</th><td>{{ m.patient_id or '-' }}</td></tr>
<tr><th>Received</th><td>{{ m.received_at }}</td><th>Answered</th><td>{{ m.answered_at }}</td></tr>
<tr><th>Protocol</th><td colspan="3">{{ m.protocol.id if m.protocol else '-' }}
<small>{{ m.protocol.version if m.protocol else '' }}</small></td></tr>
<tr><th>Chain</th><td colspan="3"><small>seq {{ m.chain.seq if m.chain else '-' }} hash {{ m.chain.hash if m.chain else '-' }}</small></td></tr>
</table>
<h2>Findings</h2>
{% if m.findings %}<table id="findings"><tr><th>Rule</th><th>Severity</th><th>Location</th><th>Order</th><th>Message</th></tr>
{% for f in m.findings %}<tr class="finding"><td>{{ f.rule }}</td><td>{{ f.severity }}</td><td>{{ f.location or '-' }}</td>
<td>{{ f.placer_order_number or '-' }}</td><td>{{ f.message }}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}
<h2>Message</h2>
<pre class="segments" id="segments">{% for s in segments %}<div class="segment{% if s.flagged %} seg-flagged{% endif %}" data-segment="{{ s.name }}" data-occurrence="{{ s.occurrence }}"><span class="seg-name">{{ s.name }}</span>{% for fld in s.fields %}{{ s.sep }}{% if fld.marks %}<mark class="sev-{{ fld.severity }}" data-location="{{ s.name }}-{{ fld.number }}" title="{% for f in fld.marks %}{{ f.rule }}: {{ f.message }}{% if not loop.last %}&#10;{% endif %}{% endfor %}">{{ fld.text or ' ' }}</mark>{% else %}{{ fld.text }}{% endif %}{% endfor %}{% if s.notes %}  <small>&larr; {% for f in s.notes %}{{ f.rule }}{% if not loop.last %}, {% endif %}{% endfor %}</small>{% endif %}</div>{% endfor %}</pre>
{% if computed %}<h2>Computed values</h2><pre id="computed">{{ computed }}</pre>{% endif %}
<h2>Response</h2><pre class="segments" id="response">{% for line in response_lines %}{{ line }}
{% endfor %}</pre>
{% endblock %}"""

_ENV = Environment(
    loader=DictLoader({"base": _BASE, "login": _LOGIN, "list": _LIST, "detail": _DETAIL}),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


def _render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(name).render(**ctx), status_code=status,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'"})


def _add_pages(app: FastAPI, store: SqlStore, tz: tzinfo, token_ok, new_session, authorised, bearer) -> None:
    def login_page(request: Request, error: str = "", status: int = 401) -> HTMLResponse:
        nxt = request.url.path if request.url.path.startswith("/ui") else "/ui"
        return _render("login", status, error=error, next=nxt, authed=False)

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request):
        return _render("login", 200, error="", next="/ui", authed=False)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        body = (await request.body())[:10_000].decode("utf-8", "replace")
        form = parse_qs(body)
        token = (form.get("token") or [""])[0]
        nxt = (form.get("next") or ["/ui"])[0]
        if not nxt.startswith("/ui"):
            nxt = "/ui"
        if not token_ok(token):
            return _render("login", 401, error="Wrong token.", next=nxt, authed=False)
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(SESSION_COOKIE, new_session(), max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout():
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/ui", status_code=303)

    @app.get("/ui", include_in_schema=False)
    async def ui(request: Request):
        if not authorised(request, await bearer(request)):
            return login_page(request)
        q = request.query_params
        raw = {k: (q.get(k) or "").strip() for k in ("patient", "since", "until", "outcome", "rule", "control_id")}
        try:
            offset = max(0, min(int(q.get("offset") or 0), MAX_ID))
        except ValueError:
            offset = 0
        limit = 50
        try:
            if any("\x00" in v for v in raw.values()):
                raise FilterError("filter values cannot contain control characters")
            flt = parse_filter(**raw)
        except FilterError as exc:
            return _render("list", 422, f=raw, error=str(exc), authed=True)
        total, items = query_messages(store, flt, tz, limit=limit, offset=offset)
        days = stats(store, flt, tz)
        base = {k: v for k, v in raw.items() if v}
        prev_url = f"/ui?{urlencode({**base, 'offset': max(0, offset - limit)})}" if offset > 0 else None
        next_url = f"/ui?{urlencode({**base, 'offset': offset + limit})}" if offset + limit < total else None
        top_rules = [{"date": d["date"], "rules": list(d["rules"].items())[:3]} for d in days[-31:] if d["rules"]]
        return _render("list", 200, f=raw, error="", items=items, total=total, chart=outcome_chart(days[-31:]),
                       top_rules=top_rules, prev_url=prev_url, next_url=next_url, authed=True)

    @app.get("/ui/messages/{message_id}", include_in_schema=False)
    async def ui_detail(request: Request, message_id: str):
        if not authorised(request, await bearer(request)):
            return login_page(request)
        if not message_id.isdigit() or not 1 <= int(message_id) <= MAX_ID:
            return _render("list", 404, f={}, error=f"no audit record {message_id!r}", authed=True)
        detail = get_message(store, int(message_id), tz)
        if detail is None:
            return _render("list", 404, f={}, error=f"no audit record {message_id}", authed=True)
        return _render(
            "detail", 200, m=detail, authed=True,
            segments=annotate_segments(detail["raw_message"], detail["findings"], detail.get("response") or ""),
            computed=json.dumps(detail["computed"], indent=2, ensure_ascii=False) if detail["computed"] else "",
            response_lines=[line for line in (detail.get("response") or "").replace("\n", "\r").split("\r") if line],
        )


# --------------------------------------------------------------------------------------------
# segment annotation and the chart


def _err_locations(response: str) -> list[tuple[str, str, int, int]]:
    """(rule, segment, occurrence, field) from the response's ERR-2 (v2.5+) and ERR-5."""
    out = []
    for line in response.replace("\n", "\r").split("\r"):
        if not line.startswith("ERR|"):
            continue
        fields = line.split("|")
        if len(fields) <= 5:
            continue
        loc = fields[2].split("^") if len(fields) > 2 else []
        rule = fields[5].split("^")[0]
        if len(loc) >= 3 and loc[1].isdigit() and loc[2].isdigit():
            out.append((rule, loc[0], int(loc[1]), int(loc[2])))
    return out


def annotate_segments(raw: str, findings: list[dict[str, Any]], response: str) -> list[dict[str, Any]]:
    """The message's segments, each field with the findings located on it.

    A finding's JSON location is `SEG-field` (no occurrence); the response's ERR-2 (`SEG^occ^field`)
    of the same rule narrows it to the segment occurrence judged. Without such an ERR (info findings,
    versions below 2.5) every occurrence of the segment is marked.
    """
    text = raw.replace("\x0b", "").replace("\x1c", "").replace("\r\n", "\r").replace("\n", "\r")
    lines = [line for line in text.split("\r") if line.strip()]
    errs = _err_locations(response)
    counts: Counter = Counter()
    segments = []
    rank = {"error": 3, "warning": 2, "info": 1}
    for line in lines:
        name = line[:3]
        counts[name] += 1
        occ = counts[name]
        sep = line[3] if name == "MSH" and len(line) > 3 else "|"
        parts = line.split(sep)
        first = 2 if name == "MSH" else 1  # MSH-1 is the separator itself
        fields = [{"number": first + i, "text": p, "marks": [], "severity": ""} for i, p in enumerate(parts[1:])]
        notes = []
        for f in findings:
            loc = f.get("location") or ""
            seg, _, num = loc.partition("-")
            if seg != name:
                continue
            occurrences = {o for (r, s, o, fn) in errs if r == f["rule"] and s == seg and str(fn) == num}
            if occurrences and occ not in occurrences:
                continue
            target = next((x for x in fields if num.isdigit() and x["number"] == int(num)), None)
            if target is None:
                notes.append(f)
                continue
            target["marks"].append(f)
            if rank.get(f["severity"], 0) > rank.get(target["severity"], 0):
                target["severity"] = f["severity"]
        segments.append({"name": name, "occurrence": occ, "sep": sep, "fields": fields, "notes": notes,
                         "flagged": bool(notes) or any(x["marks"] for x in fields)})
    return segments


def outcome_chart(days: list[dict[str, Any]]) -> str:
    """Stacked bars of AA/AE/AR per day as inline SVG (escaped text only: dates and numbers)."""
    if not days:
        return '<p id="no-chart">No messages in this range.</p>'
    colours = {"AA": "#2e7d32", "AE": "#ef8f00", "AR": "#c62828"}
    bar, gap, height, top = 28, 10, 120, 14
    peak = max(d["messages"] for d in days) or 1
    width = max(len(days) * (bar + gap) + gap + 40, 160)  # room for the legend
    parts = [f'<svg id="outcome-chart" role="img" aria-label="messages per day by outcome" '
             f'width="{width}" height="{height + top + 36}" xmlns="http://www.w3.org/2000/svg">']
    for i, d in enumerate(days):
        x = gap + i * (bar + gap)
        y = top + height
        for o in ("AA", "AE", "AR"):
            n = int(d["outcomes"].get(o, 0))
            if not n:
                continue
            h = max(1, round(height * n / peak))
            y -= h
            parts.append(f'<rect class="bar-{o}" x="{x}" y="{y}" width="{bar}" height="{h}" fill="{colours[o]}">'
                         f'<title>{d["date"]}: {n} {o}</title></rect>')
        parts.append(f'<text x="{x + bar / 2}" y="{y - 2}" font-size="10" text-anchor="middle">{int(d["messages"])}'
                     f'</text>')
        parts.append(f'<text x="{x + bar / 2}" y="{top + height + 12}" font-size="9" text-anchor="middle">'
                     f'{d["date"][5:]}</text>')
    lx = gap
    for o in ("AA", "AE", "AR"):
        parts.append(f'<rect x="{lx}" y="{top + height + 20}" width="10" height="10" fill="{colours[o]}"/>'
                     f'<text x="{lx + 14}" y="{top + height + 29}" font-size="10">{o}</text>')
        lx += 44
    parts.append("</svg>")
    return "".join(parts)
