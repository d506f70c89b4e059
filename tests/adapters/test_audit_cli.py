"""`rxgate audit` (workers/cli/audit.py) as docs/interfaces.md §4 describes it."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.builders import adult_order_set, audit_cli, audit_record, go_order
from tests.paths import ROOT
from workers.cli.audit import CSV_COLUMNS
from workers.cli.usage import UsageError
from workers.store import open_sql_store


@pytest.fixture
def db(filled_audit_db):
    """A log in New York time: C1 late on Nov 30 local (Dec 1 UTC), C2 at local midnight Dec 1, ..."""
    return filled_audit_db


audit = audit_cli  # tests.builders: `rxgate audit` in-process


def ids(db: str, *argv: str) -> list[str]:
    code, out = audit("--db", db, "--format", "json", *argv)
    assert code == 0
    return [json.loads(line)["control_id"] for line in out.splitlines()]


def test_no_filter_lists_everything_in_order(db):
    assert ids(db) == ["C1", "C2", "C3", "C4", "C5"]


def test_outcome_filter(db):
    assert ids(db, "--outcome", "AE") == ["C2", "C3"]
    assert ids(db, "--outcome", "AR") == ["C4"]
    assert ids(db, "--outcome", "ae") == ["C2", "C3"]  # case is forgiven


def test_since_until_are_inclusive_local_dates(db):
    assert ids(db, "--since", "2026-12-01") == ["C2", "C3", "C4", "C5"]  # C1 is Nov 30 in New York
    assert ids(db, "--until", "2026-11-30") == ["C1"]
    assert ids(db, "--since", "2026-12-01", "--until", "2026-12-01") == ["C2", "C3"]
    assert ids(db, "--since", "2026-12-02", "--until", "2026-12-02") == ["C4", "C5"]
    assert ids(db, "--since", "2026-12-03") == []


def test_dates_follow_the_service_time_zone(db, monkeypatch):
    monkeypatch.setenv("RXGATE_TIMEZONE", "UTC")
    # in UTC, C1 (23:59:59 New York) is on Dec 1 and C3 (23:59:59 New York, Dec 1) on Dec 2
    assert ids(db, "--since", "2026-12-01", "--until", "2026-12-01") == ["C1", "C2"]
    assert ids(db, "--since", "2026-12-02", "--until", "2026-12-02") == ["C3", "C4", "C5"]


def test_rule_filter_matches_any_finding_of_the_rule(db):
    assert ids(db, "--rule", "go.dose") == ["C2", "C3"]  # C3's go.dose is a warning
    assert ids(db, "--rule", "go.route") == ["C3"]
    assert ids(db, "--rule", "go.bsa") == ["C5"]  # info findings too
    assert ids(db, "--rule", "go.nothing") == []


def test_patient_and_control_id_filters(db):
    assert ids(db, "--patient", "MRN2") == ["C3"]
    assert ids(db, "--patient", "MRN1^GENHOSP") == ["C1", "C2", "C5"]
    assert ids(db, "--control-id", "C4") == ["C4"]
    assert ids(db, "--control-id", "C4", "--outcome", "AA") == []
    assert ids(db, "--patient", "MRN1", "--outcome", "AE", "--since", "2026-12-01") == ["C2"]


def test_json_lines_carry_findings_and_local_times(db):
    code, out = audit("--db", db, "--format", "json", "--control-id", "C3")
    (line,) = out.splitlines()
    row = json.loads(line)
    assert row["outcome"] == "AE" and row["patient_id"] == "MRN2"
    assert row["rules"] == ["go.route", "go.dose"]
    assert row["findings"][0]["location"] == "RXR-1"
    assert row["received_at"] == "2026-12-01T23:59:59-05:00"


def test_csv_has_fixed_columns(db):
    code, out = audit("--db", db, "--format", "csv", "--outcome", "AE")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == CSV_COLUMNS
    assert [r[4] for r in rows[1:]] == ["C2", "C3"]
    assert rows[2][CSV_COLUMNS.index("rules")] == "go.route go.dose"


def test_table_is_the_default(db):
    code, out = audit("--db", db, "--outcome", "AE")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["ID", "RECEIVED"]
    assert len(lines) == 3 and "go.route, go.dose" in lines[2]
    code, out = audit("--db", db, "--control-id", "none")
    assert "(no matching messages)" in out


def test_limit(db):
    assert ids(db, "--limit", "2") == ["C1", "C2"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--since", "2026-13-01"], "--since must be a date"),
        (["--until", "yesterday"], "--until must be a date"),
        (["--outcome", "OK"], "--outcome must be one of AA, AE, AR"),
        (["--format", "xml"], "--format must be table, json or csv"),
        (["--since", "2026-12-02", "--until", "2026-12-01"], "is after"),
        (["verify", "--outcome", "AE"], "takes no filters"),
        (["--anchor", "3:abc"], "--anchor"),
        (["verify", "--anchor", "3:xyz"], "SEQ:HASH"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_usage_errors(db, argv, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        audit("--db", db, *argv)


def test_verify_and_head(db):
    code, out = audit("verify", "--db", db)
    assert code == 0 and "intact: 5 records" in out
    code, head = audit("head", "--db", db)
    seq, hash_ = head.strip().split(":")  # the format --anchor takes: the output is passed as it is
    assert code == 0 and seq == "5" and len(hash_) == 64
    assert audit("verify", "--db", db, "--anchor", head.strip())[0] == 0
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE findings SET message = 'fine' WHERE message_id = 3")
    code, out = audit("verify", "--db", db)
    assert code == 1 and "sequence number 3" in out


def test_database_from_environment_then_default(db, tmp_path, monkeypatch):
    monkeypatch.setenv("RXGATE_DATABASE_URL", db)
    assert audit("--format", "json")[1].count("\n") == 5
    monkeypatch.delenv("RXGATE_DATABASE_URL")
    monkeypatch.chdir(tmp_path)
    open_sql_store("sqlite:///var/rxgate.db", create=True).dispose()  # ./var/rxgate.db, as the service makes it
    code, out = audit("head")
    assert code == 0 and "empty" in out


def test_empty_log_verifies(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    open_sql_store(url, create=True).dispose()  # a log with rxgate's tables and no record yet
    code, out = audit("verify", "--db", url)
    assert code == 0 and "empty" in out


def rxgate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                               "RXGATE_AUDIT_KEY": os.environ["RXGATE_AUDIT_KEY"]})


def test_done_when_scenario_end_to_end(tmp_path):
    """check --db, audit --outcome AE lists the refused ones with rule ids, verify, UPDATE, verify names it."""
    files = []
    for name, text in [("ok.hl7", adult_order_set("E0001")),
                       ("route.hl7", adult_order_set("E0002", mrn="MRN72", go=go_order(route="PO^Oral^HL70162"))),
                       ("dose.hl7", adult_order_set("E0003", mrn="MRN73", go=go_order(dose="30")))]:
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    url = f"sqlite:///{tmp_path / 'var' / 't.db'}"
    assert rxgate("check", "--db", url, *files, cwd=tmp_path).returncode == 1
    proc = rxgate("audit", "--db", url, "--outcome", "AE", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["control_id"] for r in rows] == ["E0002", "E0003"]
    assert "go.route" in rows[0]["rules"] and "go.dose" in rows[1]["rules"]
    proc = rxgate("audit", "verify", "--db", url, cwd=tmp_path)
    assert proc.returncode == 0 and "intact" in proc.stdout
    with sqlite3.connect(tmp_path / "var" / "t.db") as conn:
        conn.execute("UPDATE verdicts SET ack_code = 'AA' WHERE message_id = 2")
    proc = rxgate("audit", "verify", "--db", url, cwd=tmp_path)
    assert proc.returncode == 1 and "sequence number 2" in proc.stdout
    proc = rxgate("audit", "--db", url, "--since", "2026-02-30", cwd=tmp_path)
    assert proc.returncode == 2 and "--since must be a date" in proc.stderr and "Traceback" not in proc.stderr


def test_audit_when_created_at_is_utc_now_default_zone(tmp_path, monkeypatch):
    monkeypatch.setenv("RXGATE_TIMEZONE", "UTC")
    url = f"sqlite:///{tmp_path / 'u.db'}"
    store = open_sql_store(url, create=True)
    store.save(audit_record("U1", datetime(2026, 12, 1, 0, 0, tzinfo=UTC)))
    store.dispose()
    assert ids(url, "--since", "2026-12-01", "--until", "2026-12-01") == ["U1"]
    assert ids(url, "--until", "2026-11-30") == []
