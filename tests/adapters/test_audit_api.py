"""The auditors' HTTP API (workers/http/): auth, filters, pagination, 422s, OpenAPI, schemathesis."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from tests.builders import AUDIT_AUTH as AUTH
from tests.builders import AUDIT_TOKEN as TOKEN
from tests.builders import AUDIT_TOKEN_SHA as TOKEN_SHA
from tests.builders import NY, fill_audit_store, login
from workers.http.access_log import DropQueryStrings
from workers.http.app import create_app
from workers.http.segments import annotate_segments


@pytest.fixture
def client(sqlite_url):
    fill_audit_store(sqlite_url)
    app = create_app(sqlite_url, TOKEN_SHA, tz=NY)
    with TestClient(app) as c:
        yield c
    app.state.store.dispose()


@pytest.fixture
def any_db_client(db_url):
    fill_audit_store(db_url)
    app = create_app(db_url, TOKEN_SHA, tz=NY)
    with TestClient(app) as c:
        yield c
    app.state.store.dispose()


def control_ids(client, **params) -> list[str]:
    r = client.get("/audit/messages", params=params, headers=AUTH)
    assert r.status_code == 200, r.text
    return [m["control_id"] for m in r.json()["items"]]


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/audit/messages", "/audit/messages/1", "/audit/stats", "/audit/head",
                                  "/audit/verify", "/openapi.json", "/docs"])
def test_every_audit_route_needs_the_token(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get(path, headers={"Authorization": f"Bearer {TOKEN_SHA}"}).status_code == 401  # not the hash
    assert client.get(path, headers=AUTH).status_code == 200
    r = client.get(path)
    assert r.headers["www-authenticate"] == "Bearer"


def test_unset_hash_closes_everything(sqlite_url):
    fill_audit_store(sqlite_url)
    for configured in ("", None):
        app = create_app(sqlite_url, configured, tz=NY)
        with TestClient(app) as c:
            assert c.get("/audit/messages", headers=AUTH).status_code == 401
            assert c.get("/audit/messages", headers={"Authorization": "Bearer "}).status_code == 401
            assert login(c, "").status_code == 401
            assert c.get("/health").status_code == 200
        app.state.store.dispose()


def test_open_routes(client):
    assert client.get("/health").json() == {"status": "up"}
    assert client.get("/login").status_code == 200
    page = client.get("/ui")
    assert page.status_code == 401 and "Log in" in page.text and "MRN" not in page.text


def test_login_sets_a_session_cookie_that_opens_the_api(client):
    bad = login(client, "nope")
    assert bad.status_code == 401 and "Wrong token" in bad.text
    assert "rxgate_audit_session" not in client.cookies
    good = login(client, TOKEN)
    assert good.status_code == 303 and good.headers["location"] == "/ui"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/audit/messages").status_code == 200  # the cookie now authenticates
    assert client.get("/ui").status_code == 200
    client.cookies.set("rxgate_audit_session", "9999999999.forged")
    assert client.get("/audit/messages").status_code == 401


def test_session_of_another_app_instance_is_refused(sqlite_url):
    fill_audit_store(sqlite_url)
    a, b = create_app(sqlite_url, TOKEN_SHA), create_app(sqlite_url, TOKEN_SHA)
    with TestClient(a) as ca, TestClient(b) as cb:
        login(ca, TOKEN)
        cb.cookies.set("rxgate_audit_session", ca.cookies["rxgate_audit_session"])
        assert ca.get("/audit/head").status_code == 200
        assert cb.get("/audit/head").status_code == 401
    a.state.store.dispose()
    b.state.store.dispose()


# --- filters and pagination ---------------------------------------------------------------------


def test_filters_match_the_cli(any_db_client):
    c = any_db_client
    assert control_ids(c) == ["C1", "C2", "C3", "C4", "C5"]
    assert control_ids(c, outcome="AE") == ["C2", "C3"]
    assert control_ids(c, since="2026-12-01") == ["C2", "C3", "C4", "C5"]
    assert control_ids(c, until="2026-11-30") == ["C1"]
    assert control_ids(c, since="2026-12-01", until="2026-12-01") == ["C2", "C3"]
    assert control_ids(c, rule="go.dose") == ["C2", "C3"]
    assert control_ids(c, patient="MRN2") == ["C3"]
    assert control_ids(c, patient="MRN1^GENHOSP") == ["C1", "C2", "C5"]
    assert control_ids(c, control_id="C4") == ["C4"]
    assert control_ids(c, patient="MRN1", outcome="AE") == ["C2"]


def test_pagination(client):
    r = client.get("/audit/messages", params={"limit": 2, "offset": 1}, headers=AUTH).json()
    assert r["total"] == 5 and r["limit"] == 2 and r["offset"] == 1
    assert [m["control_id"] for m in r["items"]] == ["C2", "C3"]
    r = client.get("/audit/messages", params={"limit": 2, "offset": 4}, headers=AUTH).json()
    assert [m["control_id"] for m in r["items"]] == ["C5"]
    r = client.get("/audit/messages", params={"offset": 5}, headers=AUTH).json()
    assert r["items"] == [] and r["total"] == 5
    r = client.get("/audit/messages", params={"outcome": "AE", "limit": 1}, headers=AUTH).json()
    assert r["total"] == 2 and len(r["items"]) == 1
    assert client.get("/audit/messages", params={"limit": 1000}, headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    "params, words",
    [
        ({"since": "2026-13-01"}, "since"),
        ({"until": "tomorrow"}, "until"),
        ({"outcome": "OK"}, "outcome"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"rule": "go dose; drop"}, "rule"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, "is after"),
        ({"patient": "a\x00b"}, "patient"),
    ],
)
def test_bad_filter_is_422_with_a_clear_message(client, params, words):
    for path in ("/audit/messages", "/audit/stats"):
        if path == "/audit/stats" and ("limit" in params or "offset" in params):
            continue
        r = client.get(path, params=params, headers=AUTH)
        assert r.status_code == 422, r.text
        assert words in r.json()["message"]


def test_detail(client):
    r = client.get("/audit/messages/3", headers=AUTH)
    assert r.status_code == 200
    d = r.json()
    assert d["control_id"] == "C3" and d["outcome"] == "AE" and d["patient_id"] == "MRN2"
    assert [f["rule"] for f in d["findings"]] == ["go.route", "go.dose"]
    assert d["findings"][0]["location"] == "RXR-1" and d["findings"][0]["placer_order_number"] == "P1"
    assert d["raw_message"].startswith("MSH|") and d["response"].startswith("MSH|")
    assert d["chain"]["seq"] == 3 and len(d["chain"]["hash"]) == 64
    assert client.get("/audit/messages/99", headers=AUTH).status_code == 404
    assert client.get("/audit/messages/0", headers=AUTH).status_code == 422
    assert client.get("/audit/messages/abc", headers=AUTH).status_code == 422


def test_stats_per_day(client):
    s = client.get("/audit/stats", headers=AUTH).json()
    assert s["total"] == 5
    assert s["outcomes"] == {"AA": 2, "AE": 2, "AR": 1}
    assert s["rules"]["go.dose"] == 2 and "go.bsa" not in s["rules"]  # info findings are not counted
    days = {d["date"]: d for d in s["days"]}
    assert set(days) == {"2026-11-30", "2026-12-01", "2026-12-02"}  # New York days
    assert days["2026-12-01"]["outcomes"] == {"AA": 0, "AE": 2, "AR": 0}
    assert days["2026-12-01"]["rules"] == {"go.dose": 2, "go.route": 1}
    assert client.get("/audit/stats", params={"outcome": "AR"}, headers=AUTH).json()["total"] == 1


def test_head_and_verify(client):
    head = client.get("/audit/head", headers=AUTH).json()
    assert head["seq"] == 5 and len(head["hash"]) == 64
    v = client.get("/audit/verify", headers=AUTH).json()
    assert v["intact"] is True and v["checked"] == 5 and v["head_hash"] == head["hash"]


def test_openapi_describes_the_routes(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert {"/audit/messages", "/audit/messages/{message_id}", "/audit/stats", "/health"} <= set(spec["paths"])
    names = {p["name"] for p in spec["paths"]["/audit/messages"]["get"]["parameters"]}
    assert names == {"patient", "since", "until", "outcome", "rule", "control_id", "overridden", "limit",
                     "offset"}
    assert "/ui" not in spec["paths"] and "/login" not in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_access_log_drops_query_strings():
    record_ = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                ("127.0.0.1:5", "GET", "/audit/messages?patient=MRN55501", "1.1", 200), None)
    DropQueryStrings().filter(record_)
    assert "MRN55501" not in record_.getMessage() and "/audit/messages" in record_.getMessage()


# --- page helpers -------------------------------------------------------------------------------


def test_segment_annotation_uses_the_err_occurrence():
    raw = "MSH|^~\\&|A|F\rRXE|1|X|15\rRXR|IV\rRXE|2|Y|99\r"
    findings = [{"rule": "go.dose", "severity": "error", "location": "RXE-3", "message": "too much"},
                {"rule": "go.note", "severity": "info", "location": "RXR-1", "message": "fyi"}]
    response = "MSH|^~\\&|R|F\rMSA|AE|X\rERR||RXE^2^3|207^x^HL70357|E|go.dose\r"
    segs = annotate_segments(raw, findings, response)
    rxe1, rxe2 = [s for s in segs if s.name == "RXE"]
    assert not any(f.marks for f in rxe1.fields)  # ERR-2 says the second RXE
    (marked,) = [f for f in rxe2.fields if f.marks]
    assert marked.number == 3 and marked.text == "99" and marked.severity == "error"
    (rxr,) = [s for s in segs if s.name == "RXR"]
    assert rxr.fields[0].severity == "info"  # no ERR for info: every RXR-1 is marked
    msh = segs[0]
    assert msh.fields[0].number == 2 and msh.fields[0].text == "^~\\&"


# --- schemathesis ---------------------------------------------------------------------------------


def test_schemathesis_finds_no_server_errors(sqlite_url):
    """A bounded property-based run over every operation of the OpenAPI description: no 5xx, responses
    conform to the documented schemas."""
    schemathesis = pytest.importorskip("schemathesis")
    import fakeredis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    from tests.fakes import FakeHl7Judge
    from workers.queue.bridge import Streams
    from workers.queue.deadletters import DeadLetters
    from workers.settings import Settings

    for media_type in ("application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7"):
        schemathesis.serializer.alias(media_type, "text/plain")
    fill_audit_store(sqlite_url)
    redis = fakeredis.FakeRedis()  # the operators' dead-letter routes, on an empty stream
    app = create_app(sqlite_url, TOKEN_SHA, tz=NY, hl7_judge=FakeHl7Judge(), hl7_settings=Settings(),
                     dead_letters=lambda: DeadLetters(redis, Streams("s:i", "s:o", "s:d", "g"), NY))
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 6
        for operation in operations:
            # the operators' routes (bodies of stream ids) cost ~10x a query's examples: a few suffice
            examples = 5 if operation.path.startswith("/operator") else 30

            @given(case=operation.as_strategy())
            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                case.call_and_validate(
                    headers=AUTH,
                    checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
                )

            check()
    finally:
        app.state.store.dispose()
