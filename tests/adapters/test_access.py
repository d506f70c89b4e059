"""People, roles and the PHI access log over HTTP (docs/interfaces.md §5 "Access"), and the attacks of issue 15:
each route x each role (allowed or 403) as one table, no credential 401, one access-log row per patient-data
read naming the person, the failure limit (429, injected clock), logout, CSRF, /health, headers, body caps."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
from datetime import UTC, datetime

import fakeredis
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import text
from starlette.routing import Route

from tests.builders import AUDIT_TOKEN as LEGACY_TOKEN
from tests.builders import AUDIT_TOKEN_SHA as LEGACY_SHA
from tests.builders import NY, fill_audit_store, login
from tests.fakes import FakeClock, FakeHl7Judge
from workers.http.app import create_app
from workers.http.auth import SESSION_COOKIE, FailureLimiter
from workers.queue.bridge import Streams
from workers.queue.deadletters import DeadLetters
from workers.settings import Settings
from workers.store import open_sql_store
from workers.store.access import AccessLedger, UserError, token_entropy_bits

TOKENS = {role: secrets.token_urlsafe(32) for role in ("auditor", "operator", "submit")}
NAMES = {"auditor": "alice", "operator": "olga", "submit": "ehr-feed"}
HL7 = ("MSH|^~\\&|EHR|WARD|RXGATE|PHARM|20261202080000||OMP^O09^OMP_O09|CTRL1|P|2.5\r"
       "PID|||MRN123^^^HOSP^MR||DOE^JANE||19700101|F\r")
HL7_HEADERS = {"Content-Type": "application/hl7-v2; charset=utf-8"}
MAX_MESSAGE = 4096


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role] if role != 'legacy' else LEGACY_TOKEN}"}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """The filled audit log and one person per role, made once; each test gets its own copy (`site`)."""
    path = tmp_path_factory.mktemp("access") / "template.db"
    url = f"sqlite:///{path}"
    fill_audit_store(url)
    store = open_sql_store(url, create=False)
    ledger = AccessLedger(store)
    for role, token in TOKENS.items():
        ledger.add_user(NAMES[role], [role], token, datetime.now(UTC))
    store.dispose()
    return path


@pytest.fixture
def site(template_db, tmp_path):
    """A filled audit log, one person per role, the old single token, a fake queue behind /hl7."""
    path = tmp_path / "rxgate.db"
    with sqlite3.connect(template_db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    store = open_sql_store(f"sqlite:///{path}", create=False)
    ledger = AccessLedger(store)
    clock = FakeClock(1_000_000.0)
    judge = FakeHl7Judge()
    settings = Settings(max_message_bytes=MAX_MESSAGE)
    streams = fakeredis.FakeRedis()  # the operators' dead-letter routes, on an empty stream
    app = create_app(store=store, token_sha256=LEGACY_SHA, tz=NY, hl7_judge=judge, hl7_settings=settings,
                     clock=clock, limiter=FailureLimiter(clock=clock, max_failures=5, window=60, lockout=120),
                     dead_letters=lambda: DeadLetters(streams, Streams("a:i", "a:o", "a:d", "g"), NY))
    with TestClient(app, follow_redirects=False) as c:
        yield c, app, ledger, clock, judge
    store.dispose()


# (method, path, roles allowed, request kwargs). Every route of the app that needs a credential is here.
ROUTES = [
    ("GET", "/audit/messages", {"auditor", "legacy"}, {}),
    ("GET", "/audit/messages/1", {"auditor", "legacy"}, {}),
    ("GET", "/audit/stats", {"auditor", "legacy"}, {}),
    ("GET", "/audit/head", {"auditor", "legacy"}, {}),
    ("GET", "/audit/verify", {"auditor", "legacy"}, {}),
    ("GET", "/ui", {"auditor", "legacy"}, {}),
    ("GET", "/ui/messages/1", {"auditor", "legacy"}, {}),
    ("GET", "/health/details", {"operator"}, {}),
    ("GET", "/operator/deadletters", {"operator"}, {}),
    ("POST", "/operator/deadletters/resend", {"operator"}, {"json": {"all": True}}),
    ("POST", "/operator/deadletters/drop", {"operator"}, {"json": {"ids": ["1-1"], "reason": "test"}}),
    ("POST", "/hl7", {"submit"}, {"content": HL7.encode(), "headers": HL7_HEADERS}),
    ("GET", "/openapi.json", {"auditor", "operator", "submit", "legacy"}, {}),
    ("GET", "/docs", {"auditor", "operator", "submit", "legacy"}, {}),
]
# open: up/down, metrics, the login form, logout, CDS Hooks (its own JWT, tests/adapters/test_cds_hooks.py), root redirect
NOT_IN_TABLE = {"/health", "/metrics", "/login", "/logout", "/cds-services", "/cds-services/rxgate-go-order-sign",
                "/cds-services/rxgate-go-order-sign/feedback", "/"}
PHI_READS = {"/audit/messages", "/audit/messages/1", "/ui", "/ui/messages/1"}
ROLES = ("auditor", "operator", "submit", "legacy")


def _call(client, method, path, kwargs, headers=None):
    kw = dict(kwargs)
    kw["headers"] = {**kw.get("headers", {}), **(headers or {})}
    return client.request(method, path, **kw)


def test_the_table_covers_every_route_that_needs_a_credential(site):
    _c, app, *_ = site
    paths = {re.sub(r"\{[^}]+\}", "1", r.path) for r in iter_route_contexts(app.routes)
             if isinstance(r.original_route, Route)}
    assert paths - NOT_IN_TABLE == {p for _m, p, _r, _k in ROUTES}


@pytest.mark.parametrize(("method", "path", "allowed", "kwargs"), ROUTES, ids=[f"{m} {p}" for m, p, _a, _k in ROUTES])
def test_each_route_with_each_role(site, method, path, allowed, kwargs):
    client, *_ = site
    for role in ROLES:
        r = _call(client, method, path, kwargs, bearer(role))
        expected = 200 if role in allowed else 403
        assert r.status_code == expected, (role, r.status_code, r.text[:200])
        if expected == 403:
            assert "MRN" not in r.text and "DOE" not in r.text


@pytest.mark.parametrize(("method", "path", "allowed", "kwargs"), ROUTES, ids=[f"{m} {p}" for m, p, _a, _k in ROUTES])
def test_each_route_without_a_credential_is_401(site, method, path, allowed, kwargs):
    client, *_ = site
    r = _call(client, method, path, kwargs)
    assert r.status_code == 401
    assert "MRN123" not in r.text and "DOE" not in r.text


def test_a_session_carries_the_persons_roles(site):
    client, *_ = site
    assert login(client, TOKENS["operator"]).status_code == 303
    assert client.get("/health/details").status_code == 200
    page = client.get("/ui")
    assert page.status_code == 403 and "auditor role" in page.text and "olga" in page.text


def rows(ledger: AccessLedger):
    return list(ledger.entries())


@pytest.mark.parametrize("path", sorted(PHI_READS))
@pytest.mark.parametrize("how", ["bearer", "session"])
def test_every_patient_data_read_leaves_exactly_one_row_naming_the_person(site, path, how):
    client, _app, ledger, _clock, _judge = site
    headers = bearer("auditor") if how == "bearer" else {}
    if how == "session":
        login(client, TOKENS["auditor"])
    before = rows(ledger)
    r = client.get(path, params={"patient": "MRN1"} if path in ("/audit/messages", "/ui") else None, headers=headers)
    assert r.status_code == 200
    after = rows(ledger)
    assert len(after) == len(before) + 1
    row = after[-1]
    assert (row.user, row.address, row.action) == ("alice", "testclient", f"GET {path}")
    assert row.target == ("record 1" if path.endswith("/1") else "patient=MRN1")
    assert ledger.verify().intact


def test_reads_without_patient_data_and_refused_reads_leave_no_row(site):
    client, _app, ledger, *_ = site
    for path in ("/audit/stats", "/audit/head", "/audit/verify", "/openapi.json"):
        assert client.get(path, headers=bearer("auditor")).status_code == 200
    assert client.get("/audit/messages", headers=bearer("operator")).status_code == 403
    assert client.get("/audit/messages").status_code == 401
    assert client.get("/audit/messages", params={"outcome": "XX"}, headers=bearer("auditor")).status_code == 422
    assert rows(ledger) == []


def test_the_old_single_token_is_one_auditor_named_audit_token(site):
    client, _app, ledger, *_ = site
    assert client.get("/audit/messages/2", headers=bearer("legacy")).status_code == 200
    assert rows(ledger)[-1].user == "audit-token"


def test_the_access_log_is_chained(site):
    client, app, ledger, *_ = site
    for i in (1, 2, 3):
        client.get(f"/audit/messages/{i}", headers=bearer("auditor"))
    assert ledger.verify().intact and ledger.verify().checked == 3
    store = app.state.store
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE access_log SET target = 'record 9' WHERE seq = 2"))
    broken = ledger.verify()
    assert not broken.intact and broken.first_bad_seq == 2
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE access_log SET target = 'record 2' WHERE seq = 2"))
        conn.execute(text("DELETE FROM access_log WHERE seq = 2"))
    assert ledger.verify().first_bad_seq == 2


def test_a_forged_access_row_with_a_recomputed_hash_is_caught(site):
    """Keyed like the audit chain: whoever can write the database but lacks the audit key cannot forge a row."""
    from workers.store.access import _entry_content
    from workers.store.chain import ChainKey, chain_hash

    client, app, ledger, *_ = site
    client.get("/audit/messages/1", headers=bearer("auditor"))
    (first,) = rows(ledger)
    store = app.state.store
    with store.engine.connect() as conn:
        prev = conn.execute(text("SELECT hash FROM access_log WHERE seq = 1")).scalar_one()
    content = {"at": first.at, "user_name": "mallory", "address": "10.9.9.9", "action": "GET /ui", "target": ""}
    for key, key_id in ((None, "0" * 16), (ChainKey(b"a guessed key of thirty-two bytes!"), None)):
        key_id = key_id or key.key_id
        forged = chain_hash(_entry_content(content), 2, prev, key)
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM access_log WHERE seq = 2"))
            conn.execute(text("INSERT INTO access_log (seq, at, user_name, address, action, target, prev_hash, hash, "
                              "key_id) VALUES (2, :at, 'mallory', '10.9.9.9', 'GET /ui', '', :prev, :hash, :kid)"),
                         {"at": first.at.replace(tzinfo=None), "prev": prev, "hash": forged, "kid": key_id})
        broken = ledger.verify()
        assert not broken.intact and broken.first_bad_seq == 2 and "audit key" in broken.reason


def test_a_read_whose_row_cannot_be_written_is_refused(site, monkeypatch):
    client, _app, ledger, *_ = site
    from workers.store import StoreUnavailable

    def down(*_a, **_k):
        raise StoreUnavailable("database unavailable")

    monkeypatch.setattr(ledger, "record", down)
    monkeypatch.setattr(_app.state, "access_ledger", ledger)
    r = client.get("/audit/messages/1", headers=bearer("auditor"))
    assert r.status_code == 503 and "MRN" not in r.text


def test_revoking_a_person_closes_their_token_and_their_session(site):
    client, _app, ledger, *_ = site
    login(client, TOKENS["auditor"])
    assert client.get("/audit/head").status_code == 200
    assert ledger.revoke("alice", datetime.now(UTC))
    assert client.get("/audit/head").status_code == 401
    assert client.get("/audit/head", headers=bearer("auditor")).status_code == 401


# --- attacks (issue 15) ------------------------------------------------------------------------


def test_logout_ends_the_session_on_the_server(site):
    client, *_ = site
    login(client, TOKENS["auditor"])
    cookie = client.cookies.get(SESSION_COOKIE)
    assert client.get("/audit/head").status_code == 200
    assert client.post("/logout").status_code == 303
    client.cookies.set(SESSION_COOKIE, cookie)  # the old cookie, kept by an attacker
    assert client.get("/audit/head").status_code == 401
    assert client.get("/ui").status_code == 401


def test_login_needs_the_forms_csrf_token(site):
    client, *_ = site
    assert client.post("/login", data={"token": TOKENS["auditor"]}).status_code == 403
    client.get("/login")  # the cookie is set, but the form value is missing or another one
    assert client.post("/login", data={"token": TOKENS["auditor"], "csrf": "forged"}).status_code == 403
    assert SESSION_COOKIE not in client.cookies
    assert login(client, TOKENS["auditor"]).status_code == 303


def test_wrong_bearer_tokens_lock_the_address_out(site):
    client, _app, _ledger, clock, _judge = site
    for _ in range(5):
        assert client.get("/audit/head", headers={"Authorization": "Bearer guess"}).status_code == 401
    locked = client.get("/audit/head", headers=bearer("auditor"))  # the right token too, while locked out
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) == 120
    clock.advance(119)
    assert client.get("/audit/head", headers=bearer("auditor")).status_code == 429
    clock.advance(2)
    assert client.get("/audit/head", headers=bearer("auditor")).status_code == 200


def test_wrong_logins_lock_the_address_out(site):
    client, _app, _ledger, clock, _judge = site
    for _ in range(5):
        assert login(client, "guess").status_code == 401
    r = login(client, TOKENS["auditor"])
    assert r.status_code == 429 and "Too many" in r.text and r.headers["retry-after"] == "120"
    clock.advance(121)
    assert login(client, TOKENS["auditor"]).status_code == 303


def test_failures_spread_over_more_than_the_window_do_not_lock_out(site):
    client, _app, _ledger, clock, _judge = site
    for _ in range(8):
        assert client.get("/audit/head", headers={"Authorization": "Bearer guess"}).status_code == 401
        clock.advance(20)  # at most 3 failures in any 60 s
    assert client.get("/audit/head", headers=bearer("auditor")).status_code == 200


def test_health_open_answer_is_only_up_or_down(sqlite_url):
    fill_audit_store(sqlite_url)
    secret_urls = {"status": "ok", "broker": {"ok": True, "url": "redis://:pw@broker:6379/0"},
                   "database": {"ok": True, "url": "postgresql://rx:pw@db/rxgate"}}
    store = open_sql_store(sqlite_url, create=False)
    AccessLedger(store).add_user("olga", ["operator"], TOKENS["operator"], datetime.now(UTC))
    app = create_app(store=store, token_sha256=LEGACY_SHA, tz=NY, service_health=lambda: secret_urls)
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "up"}
        assert c.get("/health/details").status_code == 401
        assert c.get("/health/details", headers=bearer("legacy")).status_code == 403
        assert c.get("/health/details", headers=bearer("operator")).json()["broker"]["url"].startswith("redis://")
        secret_urls["status"] = "unavailable"
        down = c.get("/health")
        assert down.status_code == 503 and down.json() == {"status": "down"}
    store.dispose()


@pytest.mark.parametrize(("path", "role"), [("/audit/messages", "auditor"), ("/audit/messages/1", "auditor"),
                                            ("/audit/stats", "auditor"), ("/health/details", "operator")])
def test_json_answers_are_not_cached_or_sniffed(site, path, role):
    client, *_ = site
    r = client.get(path, headers=bearer(role))
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
    refused = client.get(path)
    assert refused.headers["x-content-type-options"] == "nosniff"


# --- request bodies: capped on every route, never read whole ------------------------------------


def _asgi_post(app, path: str, chunks: int, chunk: bytes, content_length: int | None = None,
               content_type: bytes = b"application/x-www-form-urlencoded"):
    """POST to the ASGI app with a body of `chunks` chunks; (status, chunks the app asked for)."""
    asked = 0
    sent: list[dict] = []

    async def receive():
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": chunk, "more_body": asked < chunks}

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", content_type), (b"host", b"testserver")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("203.0.113.9", 5000), "server": ("testserver", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), asked


@pytest.mark.parametrize("path", ["/login", "/logout", "/audit/messages", "/cds-services/rxgate-go-order-sign"])
def test_a_declared_big_body_is_refused_before_it_is_read(site, path):
    _c, app, *_ = site
    status, asked = _asgi_post(app, path, 400_000, b"x" * 1024, content_length=400 * 1024 * 1024)
    assert (status, asked) == (413, 0)


def test_a_streamed_big_login_body_is_cut_at_the_cap(site):
    _c, app, *_ = site
    status, asked = _asgi_post(app, "/login", 400_000, b"x" * 1024)  # 400 MB, chunked (no Content-Length)
    assert status == 413 and asked <= 65  # 64 KiB cap: the rest was never read


def test_a_streamed_hl7_body_over_the_message_size_limit_is_413(site):
    _c, app, _ledger, _clock, judge = site
    status, asked = _asgi_post(app, "/hl7", 100_000, b"x" * 1024, content_type=b"application/hl7-v2")
    assert status == 401 and asked == 0  # no credential: refused before the body is read
    big = _c.post("/hl7", content=(HL7 + "NTE|1||" + "x" * MAX_MESSAGE + "\r").encode(),
                  headers={**HL7_HEADERS, **bearer("submit")})
    assert big.status_code == 413 and judge.received == []


# --- HL7 over HTTP ------------------------------------------------------------------------------


@pytest.mark.parametrize("media", ["application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7"])
@pytest.mark.parametrize("charset", ["; charset=utf-8", "; charset=UTF-8", ""])
def test_hl7_answer_comes_back_in_the_request_content_type(site, media, charset):
    client, _app, _ledger, _clock, judge = site
    r = client.post("/hl7", content=HL7.encode(), headers={"Content-Type": media + charset, **bearer("submit")})
    assert r.status_code == 200
    assert r.headers["content-type"] == f"{media}; charset=utf-8"
    assert r.text.startswith("MSH|") and "MSA|AA|CTRL1" in r.text
    assert judge.received == [HL7]
    assert r.headers["cache-control"] == "no-store"


def test_hl7_basic_credential_uses_the_token_as_password(site):
    client, _app, _ledger, _clock, judge = site
    ok = client.post("/hl7", content=HL7.encode(), headers=HL7_HEADERS, auth=("ehr-feed", TOKENS["submit"]))
    assert ok.status_code == 200 and "MSA|AA" in ok.text
    assert client.post("/hl7", content=HL7.encode(), headers=HL7_HEADERS, auth=("", TOKENS["submit"])).status_code == 200
    wrong_name = client.post("/hl7", content=HL7.encode(), headers=HL7_HEADERS, auth=("alice", TOKENS["submit"]))
    assert wrong_name.status_code == 401 and wrong_name.headers["www-authenticate"].startswith("Basic")
    assert client.get("/audit/head", auth=("alice", TOKENS["auditor"])).status_code == 401  # Basic: /hl7 only
    assert len(judge.received) == 2


@pytest.mark.parametrize(("content_type", "why"), [("text/plain", "Content-Type"),
                                                   ("application/json", "Content-Type"),
                                                   ("application/hl7-v2; charset=iso-8859-1", "charset"), ("", "")])
def test_hl7_other_content_types_are_415(site, content_type, why):
    client, _app, _ledger, _clock, judge = site
    r = client.post("/hl7", content=HL7.encode(), headers={"Content-Type": content_type, **bearer("submit")})
    assert r.status_code == 415 and why in r.json()["message"]
    assert judge.received == []


def test_hl7_every_hl7_answer_is_200_ar_included(site):
    client, app, *_ = site
    app.state.hl7_judge = FakeHl7Judge(answer="MSH|^~\\&|RXGATE|PHARM|||20261202||ACK|X|P|2.5\rMSA|AR|CTRL1\r")
    r = client.post("/hl7", content=HL7.encode(), headers={**HL7_HEADERS, **bearer("submit")})
    assert r.status_code == 200 and "MSA|AR|CTRL1" in r.text


def test_hl7_not_queued_is_an_ar_207_naming_the_message(site):
    from workers.queue.verdicts import NotQueued

    client, app, *_ = site
    app.state.hl7_judge = FakeHl7Judge(fail=NotQueued("ConnectionError"))
    r = client.post("/hl7", content=HL7.encode(), headers={**HL7_HEADERS, **bearer("submit")})
    assert r.status_code == 200
    assert "MSA|AR|CTRL1" in r.text and "207" in r.text and "not queued" in r.text


@pytest.mark.parametrize("body", [b"", b"hello, not hl7", (HL7 + HL7.replace("CTRL1", "CTRL2")).encode()])
def test_hl7_a_body_that_is_not_one_message_is_ar_and_not_queued(site, body):
    client, _app, _ledger, _clock, judge = site
    r = client.post("/hl7", content=body, headers={**HL7_HEADERS, **bearer("submit")})
    assert r.status_code == 200 and "MSA|AR" in r.text and "hl7.structure" in r.text
    assert judge.received == []


def test_hl7_without_a_queue_is_503(sqlite_url):
    fill_audit_store(sqlite_url)
    store = open_sql_store(sqlite_url, create=False)
    AccessLedger(store).add_user("ehr-feed", ["submit"], TOKENS["submit"], datetime.now(UTC))
    app = create_app(store=store, tz=NY)
    with TestClient(app) as c:
        r = c.post("/hl7", content=HL7.encode(), headers={**HL7_HEADERS, **bearer("submit")})
        assert r.status_code == 503 and "not configured" in r.text
    store.dispose()


def test_openapi_lists_the_new_routes(site):
    client, *_ = site
    spec = client.get("/openapi.json", headers=bearer("auditor")).json()
    assert {"/hl7", "/health", "/health/details", "/audit/messages"} <= set(spec["paths"])
    hl7 = spec["paths"]["/hl7"]["post"]
    assert set(hl7["requestBody"]["content"]) == {"application/hl7-v2", "application/hl7-v2+er7",
                                                  "x-application/hl7-v2+er7"}
    assert {"200", "401", "403", "413", "415"} <= set(hl7["responses"])
    assert "403" in spec["paths"]["/health/details"]["get"]["responses"]
    json.dumps(spec)


# --- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["short", "s3cret-audit-token", "a" * 200, "0123456789abcdef" * 3,
                                   "correct horse battery staple"])
def test_tokens_under_32_bytes_of_entropy_are_refused(sqlite_url, token):
    fill_audit_store(sqlite_url)
    store = open_sql_store(sqlite_url, create=False)
    with pytest.raises(UserError, match="entropy"):
        AccessLedger(store).add_user("bob", ["auditor"], token, datetime.now(UTC))
    assert AccessLedger(store).users() == []
    store.dispose()


def test_generated_tokens_have_enough_entropy():
    assert all(token_entropy_bits(secrets.token_urlsafe(32)) >= 256 for _ in range(200))
    assert token_entropy_bits(secrets.token_hex(32)) >= 256


def test_concurrent_reads_append_a_gapless_chain_on_both_databases(db_url):
    """Two API threads logging at once (PostgreSQL: the access log's advisory lock; SQLite: BEGIN IMMEDIATE)."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_sql_store(db_url, create=True)
    ledger = AccessLedger(store)

    def reads(who: str) -> None:
        for i in range(15):
            ledger.record(who, "10.0.0.1", "GET /audit/messages/1", f"record {i}", datetime.now(UTC))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(reads, ["alice", "bob"]))
    seqs = [e.seq for e in ledger.entries()]
    assert seqs == list(range(1, 31))
    result = ledger.verify()
    assert result.intact and result.checked == 30
    assert [e.user for e in ledger.entries(user="bob")] == ["bob"] * 15
    store.dispose()
