"""The auditor page (docs/interfaces.md §4, §5 "Access"): login, the message list with its chart, one record.

Server-rendered from `templates/*.html` (Jinja, every value autoescaped, SVG included), no
front-end build. A stranger gets the login form with 401; a person without the `auditor` role
403; a bad filter the list page with 422 and the reason; an unknown record 404. Each person logs
in with their own token; the login form carries a CSRF token (a cookie and the same value in the
form); logout ends the session on the server. The list and a record each leave one access-log row.
"""

from __future__ import annotations

import json
import secrets
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from workers.http.api import MAX_ID
from workers.http.auth import SESSION_COOKIE, Principal, page_principal
from workers.http.chart import outcome_chart
from workers.http.phi_access import record_read
from workers.http.segments import annotate_segments, segment_lines
from workers.store import FilterError, get_message, parse_filter, query_messages, stats

__all__ = ["PAGE_HEADERS", "STATIC_DIR", "TEMPLATES_DIR", "page_templates", "router"]

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
PAGE_SIZE = 50
CHART_DAYS = 31
FILTER_NAMES = ("patient", "since", "until", "outcome", "rule", "control_id", "overridden")
# the CSS is a file under /static: no inline style or script is allowed
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": "default-src 'self'"}

router = APIRouter(include_in_schema=False)


@cache
def page_templates() -> Jinja2Templates:
    """The page templates; autoescape for every file, chart.svg included (Jinja's default skips .svg)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(default=True))
    return Jinja2Templates(env=env)


def _render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    context.setdefault("authed", True)
    principal = getattr(request.state, "principal", None)
    context.setdefault("who", principal.name if principal is not None else "")
    return page_templates().TemplateResponse(request, name, context, status_code=status, headers=PAGE_HEADERS)


def _login_page(request: Request, error: str = "", status: int = 401, nxt: str | None = None) -> Response:
    if nxt is None:
        nxt = request.url.path if request.url.path.startswith("/ui") else "/ui"
    csrf = secrets.token_urlsafe(32)
    response = _render(request, "login.html", status, error=error, next=nxt, authed=False, csrf=csrf)
    request.app.state.auth.set_csrf(response, request, csrf)
    return response


async def _page_principal(request: Request) -> Principal | Response:
    """The auditor looking at a page, or the answer to give instead (login form 401, 403, 429)."""
    auth = request.app.state.auth
    left = auth.limiter.retry_after(request.client.host if request.client else "unknown")
    if left > 0:
        return _render(request, "login.html", 429, error="Too many failed attempts from this address; "
                       "try again later.", next="/ui", authed=False, csrf="")
    principal = page_principal(request)
    if principal is None:
        return _login_page(request)
    request.state.principal = principal
    if "auditor" not in principal.roles:
        return _render(request, "list.html", 403, f={}, error="The auditor role is needed to read the audit log.")
    return principal


@router.get("/login")
def login_form(request: Request):
    return _login_page(request, status=200, nxt="/ui")


@router.post("/login")
async def login(request: Request):
    # the form is parsed here (not FastAPI's Form): no python-multipart; the body is capped by the app
    body = (await request.body())[:10_000].decode("utf-8", "replace")
    form = parse_qs(body)
    token = (form.get("token") or [""])[0]
    nxt = (form.get("next") or ["/ui"])[0]
    if not nxt.startswith("/ui") or nxt.startswith("/ui//"):  # no open redirect
        nxt = "/ui"
    auth = request.app.state.auth
    address = request.client.host if request.client else "unknown"
    left = auth.limiter.retry_after(address)
    if left > 0:
        response = _render(request, "login.html", 429, error="Too many failed attempts from this address; "
                           "try again later.", next=nxt, authed=False, csrf="")
        response.headers["Retry-After"] = str(max(1, int(left + 0.999)))
        return response
    if not auth.csrf_ok(request, (form.get("csrf") or [""])[0]):
        return _login_page(request, "The form expired: log in again.", status=403, nxt=nxt)
    principal = auth.principal_for_token(token)
    if principal is None:
        auth.limiter.failed(address)
        return _login_page(request, "Wrong token.", nxt=nxt)
    response = RedirectResponse(nxt, status_code=303)
    auth.start_session(request, response, principal)
    return response


@router.post("/logout")
def logout(request: Request):
    """Ends the session on the server (the old cookie opens nothing), then clears the cookie."""
    auth = request.app.state.auth
    auth.end_session(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    auth.clear_cookie(response)
    return response


@router.get("/")
def root():
    return RedirectResponse("/ui", status_code=303)


def _offset(value: str | None) -> int:
    try:
        return max(0, min(int(value or 0), MAX_ID))
    except ValueError:
        return 0


def _list_context(request: Request, raw: dict[str, str], offset: int) -> dict[str, Any]:
    """Raises FilterError for a bad filter value."""
    if any("\x00" in v for v in raw.values()):
        raise FilterError("filter values cannot contain control characters")
    flt = parse_filter(**raw)
    store, tz = request.app.state.store, request.app.state.tz
    total, items = query_messages(store, flt, tz, limit=PAGE_SIZE, offset=offset)
    days = stats(store, flt, tz)[-CHART_DAYS:]
    base = {k: v for k, v in raw.items() if v}
    prev_url = f"/ui?{urlencode({**base, 'offset': max(0, offset - PAGE_SIZE)})}" if offset > 0 else None
    next_url = f"/ui?{urlencode({**base, 'offset': offset + PAGE_SIZE})}" if offset + PAGE_SIZE < total else None
    top_rules = [{"date": d["date"], "rules": list(d["rules"].items())[:3]} for d in days if d["rules"]]
    return {"items": items, "total": total, "chart": outcome_chart(days), "top_rules": top_rules,
            "prev_url": prev_url, "next_url": next_url}


@router.get("/ui")
async def ui(request: Request):
    who = await _page_principal(request)
    if isinstance(who, Response):
        return who
    q = request.query_params
    raw = {k: (q.get(k) or "").strip() for k in FILTER_NAMES}
    try:
        if any("\x00" in v for v in raw.values()):
            raise FilterError("filter values cannot contain control characters")
        parse_filter(**raw)  # a bad filter reads nothing: no access-log row
        record_read(request, who)
        context = _list_context(request, raw, _offset(q.get("offset")))
    except FilterError as exc:
        return _render(request, "list.html", 422, f=raw, error=str(exc))
    return _render(request, "list.html", f=raw, error="", **context)


@router.get("/ui/messages/{message_id}")
async def ui_detail(request: Request, message_id: str):
    who = await _page_principal(request)
    if isinstance(who, Response):
        return who
    if not message_id.isdigit() or not 1 <= int(message_id) <= MAX_ID:
        return _render(request, "list.html", 404, f={}, error=f"no audit record {message_id!r}")
    record_read(request, who, f"record {int(message_id)}")
    detail = get_message(request.app.state.store, int(message_id), request.app.state.tz)
    if detail is None:
        return _render(request, "list.html", 404, f={}, error=f"no audit record {message_id}")
    response = detail.get("response") or ""
    return _render(
        request, "detail.html", m=detail,
        segments=annotate_segments(detail["raw_message"], detail["findings"], response),
        computed=json.dumps(detail["computed"], indent=2, ensure_ascii=False) if detail["computed"] else "",
        response_lines=segment_lines(response),
    )
