"""Security of the audit API (workers/http/): every route closed but /health, /metrics and the login page;
filter values parameterised; bounded responses; CORS closed by default.

Routes are enumerated from the app itself, so a route added later is covered without editing this file.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Route

from tests.builders import AUDIT_AUTH as AUTH
from tests.builders import AUDIT_TOKEN as TOKEN
from tests.builders import AUDIT_TOKEN_SHA as TOKEN_SHA
from tests.builders import NY, fill_audit_store, login
from tests.builders import audit_record as record
from workers.http.app import create_app
from workers.http.auth import SESSION_COOKIE, FailureLimiter
from workers.store import open_sql_store

# logout only clears the cookie: it reveals nothing; CDS Hooks discovery is open (docs/interfaces.md §5 "HTTP")
OPEN = {"/health", "/metrics", "/login", "/logout", "/cds-services"}
OPERATOR_ONLY = {"/health/details", "/operator/deadletters"}  # each route x each role: tests/adapters/test_access.py


@pytest.fixture
def app(sqlite_url):
    fill_audit_store(sqlite_url)
    # these probes send many wrong credentials on purpose: the failure limit (test_access.py) stays out of the way
    app = create_app(sqlite_url, TOKEN_SHA, tz=NY, limiter=FailureLimiter(max_failures=10**9))
    yield app
    app.state.store.dispose()


@pytest.fixture
def client(app):
    with TestClient(app, follow_redirects=False) as c:
        yield c


@pytest.fixture(scope="module")
def probe_client(tmp_path_factory):
    """One app over one filled store for the many read-only probes (138 injection cases): each probe still
    checks that nothing changed, so a probe that wrote is caught by itself or the next one."""
    url = f"sqlite:///{tmp_path_factory.mktemp('probes') / 'rxgate.db'}"
    fill_audit_store(url)
    app = create_app(url, TOKEN_SHA, tz=NY)
    with TestClient(app, follow_redirects=False) as c:
        yield c
    app.state.store.dispose()


@pytest.fixture
def probe(probe_client):
    probe_client.cookies.clear()
    return probe_client


def routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, those of included routers too (FastAPI keeps
    them out of `app.routes`); path parameters filled with 1. The /static mount is tested on its own."""
    out = []
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, Route):
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                out.append((method, path))
    return out


def test_the_app_has_the_documented_routes(app):
    paths = {p for _m, p in routes(app)}
    assert {"/health", "/login", "/audit/messages", "/audit/messages/1", "/audit/stats", "/audit/head",
            "/audit/verify", "/openapi.json", "/docs", "/ui"} <= paths


def test_every_route_but_the_open_ones_needs_a_credential(app, client):
    checked = 0
    for method, path in routes(app):
        if path in OPEN:
            continue
        if path == "/":  # only a redirect to the page (which is itself closed) or the login form
            r = client.request(method, path)
            assert r.status_code == 401 or (r.status_code in (303, 307) and r.headers["location"] in ("/ui", "/login")
                                            and not r.content), (path, r.status_code)
            continue
        for headers, cookies in (
            ({}, {}),
            ({"Authorization": "Bearer wrong"}, {}),
            ({"Authorization": f"Basic {TOKEN}"}, {}),  # the right secret in the wrong scheme
            ({}, {SESSION_COOKIE: "9999999999.deadbeef"}),  # a forged session
            ({}, {SESSION_COOKIE: TOKEN}),
        ):
            client.cookies.clear()
            for k, v in cookies.items():
                client.cookies.set(k, v)
            r = client.request(method, path, headers=headers, params={"token": TOKEN, "access_token": TOKEN})
            assert r.status_code == 401, (method, path, headers, cookies, r.status_code)
            assert "MRN" not in r.text and "DOE" not in r.text
            checked += 1
    client.cookies.clear()
    assert checked >= 5 * 9


def test_every_protected_get_route_opens_with_the_token_and_with_the_session(app, client):
    gets = [p for m, p in routes(app) if m == "GET" and p not in OPEN | OPERATOR_ONLY]  # auditor's routes
    for path in gets:
        r = client.get(path, headers=AUTH)
        assert r.status_code in (200, 303, 307), (path, r.status_code)
    answer = login(client, TOKEN)
    assert answer.status_code in (200, 303)
    assert SESSION_COOKIE in answer.cookies or SESSION_COOKIE in client.cookies
    for path in gets:
        assert client.get(path).status_code in (200, 303, 307), path


def test_static_serves_only_the_stylesheet(app, client):
    mounts = [r.path for r in app.routes if not isinstance(r, Route) and getattr(r, "path", None)]
    assert mounts == ["/static"]
    css = client.get("/static/style.css")  # open: the login page needs it; it holds no data
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for path in ("/static/", "/static/../app.py", "/static/%2e%2e/app.py", "/static/../../pyproject.toml",
                 "/static/style.css/x", "/static/nothing.css"):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 404, (path, r.status_code)
        assert "import" not in r.text


def test_open_routes_need_nothing(client):
    assert client.get("/health").status_code in (200, 503)
    assert client.get("/login").status_code in (200, 401)  # the form itself (401 = "please log in")
    assert "<form" in client.get("/login").text


def test_a_token_hash_of_nothing_closes_everything(sqlite_url):
    fill_audit_store(sqlite_url)
    app = create_app(sqlite_url, "", tz=NY)
    with TestClient(app) as c:
        assert c.get("/audit/messages", headers={"Authorization": "Bearer "}).status_code == 401
        assert c.get("/audit/messages", headers=AUTH).status_code == 401
        assert login(c, "").status_code == 401
    app.state.store.dispose()


INJECTIONS = [
    "' OR '1'='1", "' OR 1=1 --", "\" OR \"\"=\"", "1; DROP TABLE messages; --", "C1' --", "C1'); DELETE FROM messages; --",
    "%", "_", "%%", "C%", "*", "MRN55501' UNION SELECT * FROM messages --", "\\", "'", "\"", "`", "$1", ":name",
    "C1\u0000", "é' OR 'a'='a", "C1 OR 1=1", "?", "1' AND SLEEP(5)--",
]


@pytest.mark.parametrize("param", ["patient", "control_id", "rule", "outcome", "since", "until"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_return_no_extra_rows_and_no_500(probe, param, value):
    client = probe
    r = client.get("/audit/messages", params={param: value}, headers=AUTH)
    assert r.status_code in (200, 422), (param, value, r.status_code, r.text[:200])
    if r.status_code == 200:
        assert r.json()["items"] == [] and r.json()["total"] == 0, (param, value)
    s = client.get("/audit/stats", params={param: value}, headers=AUTH)
    assert s.status_code in (200, 422)
    ui = client.get("/ui", params={param: value}, headers=AUTH)
    assert ui.status_code in (200, 422) and ui.status_code < 500
    # nothing was changed: the five records and the chain are intact
    assert client.get("/audit/messages", headers=AUTH).json()["total"] == 5
    assert client.get("/audit/verify", headers=AUTH).json()["intact"] is True


@pytest.mark.parametrize("path", ["/audit/messages/1 OR 1=1", "/audit/messages/0", "/audit/messages/-1",
                                  "/audit/messages/99999999999999999999", "/audit/messages/1;DROP TABLE messages"])
def test_record_ids_are_integers(probe, path):
    client = probe
    assert client.get(path, headers=AUTH).status_code in (404, 422)


def test_exact_filters_still_work(client):
    """The control: a real value matches (so the empty answers above are not an always-empty API)."""
    r = client.get("/audit/messages", params={"control_id": "C1"}, headers=AUTH)
    assert [m["control_id"] for m in r.json()["items"]] == ["C1"]


def test_responses_are_bounded(sqlite_url):
    store = open_sql_store(sqlite_url, create=True)
    start = datetime(2026, 12, 1, 8, 0, tzinfo=NY)
    for i in range(120):
        store.save(record(f"B{i:03d}", start + timedelta(minutes=i)))
    store.dispose()
    app = create_app(sqlite_url, TOKEN_SHA, tz=NY)
    with TestClient(app) as c:
        page = c.get("/audit/messages", headers=AUTH).json()
        assert page["total"] == 120 and len(page["items"]) == page["limit"] <= 100  # default page
        assert c.get("/audit/messages", params={"limit": 1001}, headers=AUTH).status_code == 422
        assert c.get("/audit/messages", params={"limit": 0}, headers=AUTH).status_code == 422
        assert c.get("/audit/messages", params={"limit": -5}, headers=AUTH).status_code == 422
        assert len(c.get("/audit/messages", params={"limit": 1000}, headers=AUTH).json()["items"]) == 120
        assert c.get("/audit/messages", params={"offset": 10**30}, headers=AUTH).status_code == 422
        assert c.get("/audit/messages", params={"patient": "x" * 10_000}, headers=AUTH).status_code == 422
        ui = c.get("/ui", headers=AUTH)
        assert ui.status_code == 200 and ui.text.count("B1") <= 60  # the page shows one page, not everything
    app.state.store.dispose()


def test_cors_is_closed_by_default(client):
    origin = {"Origin": "https://evil.example"}
    r = client.get("/audit/messages", headers={**AUTH, **origin})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    pre = client.options("/audit/messages", headers={**origin, "Access-Control-Request-Method": "GET",
                                                     "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}
    assert pre.status_code in (401, 405)
    h = client.get("/health", headers=origin)
    assert "access-control-allow-origin" not in {k.lower() for k in h.headers}


def test_session_cookie_is_httponly_and_strict(client):
    r = login(client, TOKEN)
    cookie = r.headers.get("set-cookie", "")
    assert SESSION_COOKIE in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    wrong = login(client, "nope")
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
