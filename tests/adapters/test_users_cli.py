"""`rxgate users add|list|revoke` and `rxgate audit access` (docs/interfaces.md §5 "Access"); CSV cells that
would start a formula are prefixed with `'`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from datetime import UTC, datetime

import pytest

from tests.builders import audit_record
from workers.cli import build_parser
from workers.cli.audit import safe_cell
from workers.cli.usage import UsageError
from workers.store import open_sql_store
from workers.store.access import AccessLedger


@pytest.fixture
def db(filled_audit_db):
    return filled_audit_db


def run(*argv: str, stdin: str | None = None) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    kwargs = {"stdin": io.StringIO(stdin)} if stdin is not None else {}
    return args.func(args, out=out, **kwargs), out.getvalue()


def test_users_add_prints_the_token_once_on_the_last_line_and_stores_only_its_hash(db):
    code, out = run("users", "add", "alice", "--role", "auditor", "--role", "operator", "--db", db)
    assert code == 0
    token = out.splitlines()[-1]
    assert len(token) >= 43 and " " not in token and out.endswith(token + "\n")
    raw = open(db.removeprefix("sqlite:///"), "rb").read()
    assert token.encode() not in raw
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        name, roles, digest = conn.execute("SELECT name, roles, token_sha256 FROM users").fetchone()
    assert (name, roles, digest) == ("alice", "auditor,operator", hashlib.sha256(token.encode()).hexdigest())
    code, listing = run("users", "list", "--db", db)
    assert code == 0 and listing.startswith("alice  auditor,operator  created ") and token not in listing


def test_users_revoke_and_list(db):
    run("users", "add", "bob", "--role", "submit", "--db", db)
    assert run("users", "revoke", "bob", "--db", db) == (0, "revoked bob\n")
    assert "revoked 20" in run("users", "list", "--db", db)[1]
    with pytest.raises(UsageError, match="no active user named 'bob'"):
        run("users", "revoke", "bob", "--db", db)


@pytest.mark.parametrize(("argv", "message"), [
    (("users", "add", "alice"), "needs --role"),
    (("users", "add", "--role", "auditor"), "needs a NAME"),
    (("users", "add", "al ice", "--role", "auditor"), "user name"),
    (("users", "revoke"), "needs a NAME"),
    (("users", "list", "--role", "auditor"), "apply to `users add` only"),
])
def test_users_refuses_bad_arguments(db, argv, message):
    with pytest.raises(UsageError, match=message):
        run(*argv, "--db", db)


def test_users_add_a_given_token_needs_32_bytes_of_entropy(db):
    with pytest.raises(UsageError, match="entropy"):
        run("users", "add", "carol", "--role", "auditor", "--token-stdin", "--db", db, stdin="s3cret-audit-token\n")
    good = "kJ8s0Qm2Zr5Xb7Vn1Cw4Ty6Uo9Pe3Ad-_LhGfSiRqWx"
    code, out = run("users", "add", "carol", "--role", "auditor", "--token-stdin", "--db", db, stdin=good + "\n")
    assert code == 0 and out.splitlines()[-1] == good
    with pytest.raises(UsageError, match="exists already"):
        run("users", "add", "carol", "--role", "auditor", "--db", db)


def test_users_never_creates_a_database(tmp_path):
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(UsageError):
        run("users", "list", "--db", missing)
    assert not (tmp_path / "nothing.db").exists()


def test_audit_access_lists_reads_by_user_and_since(db, capsys):
    store = open_sql_store(db, create=False)
    ledger = AccessLedger(store)
    ledger.record("alice", "10.0.0.1", "GET /audit/messages/1", "record 1", datetime(2026, 12, 1, 15, tzinfo=UTC))
    ledger.record("bob", "10.0.0.2", "GET /ui", "patient=MRN1", datetime(2026, 12, 2, 15, tzinfo=UTC))
    store.dispose()
    code, out = run("audit", "access", "--db", db, "--format", "json")
    assert code == 0 and [json.loads(line)["user"] for line in out.splitlines()] == ["alice", "bob"]
    assert "access log chain intact: 2 rows" in capsys.readouterr().err
    code, out = run("audit", "access", "--db", db, "--user", "bob")
    assert code == 0 and out.startswith("2  2026-12-02T10:00:00-05:00  bob  10.0.0.2  GET /ui  patient=MRN1")
    code, out = run("audit", "access", "--db", db, "--since", "2026-12-02", "--format", "json")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [2]
    with pytest.raises(UsageError, match="takes only"):
        run("audit", "access", "--db", db, "--patient", "MRN1")


def test_audit_access_says_a_broken_chain(db, capsys):
    store = open_sql_store(db, create=False)
    AccessLedger(store).record("alice", "10.0.0.1", "GET /ui", "", datetime(2026, 12, 1, tzinfo=UTC))
    store.dispose()
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE access_log SET user_name = 'mallory'")
    assert run("audit", "access", "--db", db)[0] == 1
    assert "access log chain BROKEN at row 1" in capsys.readouterr().err


def test_an_audit_query_is_itself_a_read_in_the_access_log(db):
    code, _out = run("audit", "--db", db, "--patient", "MRN1", "--format", "json")
    assert code == 0
    store = open_sql_store(db, create=False)
    (entry,) = list(AccessLedger(store).entries())
    store.dispose()
    assert entry.user.startswith("cli:") and entry.action == "rxgate audit" and entry.target == "patient=MRN1"


@pytest.mark.parametrize("value", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_that_would_start_a_formula_get_a_quote(value):
    assert safe_cell(value) == "'" + value
    assert safe_cell("MRN1") == "MRN1" and safe_cell(None) == "" and safe_cell(3) == "3"


def test_audit_csv_export_defuses_a_hostile_control_id(tmp_path, monkeypatch):
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    store = open_sql_store(url, create=True)
    store.save(audit_record("=cmd|' /C calc'!A0", datetime(2026, 12, 1, 15, tzinfo=UTC), patient="@MRN"))
    store.dispose()
    code, out = run("audit", "--db", url, "--format", "csv")
    assert code == 0
    row = list(csv.DictReader(io.StringIO(out)))[0]
    assert row["control_id"] == "'=cmd|' /C calc'!A0" and row["patient_id"] == "'@MRN"
