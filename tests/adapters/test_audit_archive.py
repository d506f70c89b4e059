"""`rxgate audit archive` and `audit verify --file` (docs/interfaces.md §5 "Operators", retention)."""

from __future__ import annotations

import json

import pytest

from tests.builders import audit_cli
from workers.cli.usage import UsageError


@pytest.fixture
def db(filled_audit_db):
    return filled_audit_db


audit = audit_cli  # tests.builders: `rxgate audit` in-process


def test_archive_before_a_date_verifies_on_its_own(db, tmp_path):
    target = tmp_path / "2026-11.jsonl"
    code, out = audit("archive", "--db", db, "--before", "2026-12-02", "--out", str(target))
    assert code == 0 and "archived 3 records" in out  # C1..C3 were received before Dec 2 (New York)
    lines = target.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["records"] == 3 and len(lines) == 4
    assert json.loads(lines[3])["content"]["message"]["control_id"] == "C3"
    code, out = audit("verify", "--file", str(target))
    assert code == 0 and "intact: 3 records" in out
    # the archive's last hash is the database's record 3: the two chains are one
    code, head_out = audit("verify", "--db", db, "--anchor", f"3:{header['last_hash']}")
    assert code == 0
    assert audit("verify", "--file", str(target), "--anchor", f"3:{header['last_hash']}")[0] == 0
    # the records stay in the database
    assert "intact: 5 records" in audit("verify", "--db", db)[1]


@pytest.mark.parametrize("tamper, words", [
    (lambda lines: lines[:2] + lines[3:], "record 2 is missing"),
    (lambda lines: lines[:3], "cut or extended"),
    (lambda lines: [lines[0], lines[1].replace('"C1"', '"CX"'), *lines[2:]], "altered"),
])
def test_a_tampered_archive_is_broken_at_the_record(db, tmp_path, tamper, words):
    target = tmp_path / "a.jsonl"
    audit("archive", "--db", db, "--before", "2026-12-03", "--out", str(target))
    lines = target.read_text().splitlines()
    target.write_text("\n".join(tamper(lines)) + "\n")
    code, out = audit("verify", "--file", str(target))
    assert code == 1 and "BROKEN" in out and words in out


def test_archive_usage_errors(db, tmp_path):
    (tmp_path / "there.jsonl").write_text("x")
    for argv, words in [
        (["archive", "--db", db, "--out", str(tmp_path / "n.jsonl")], "--before"),
        (["archive", "--db", db, "--before", "2026-13-01", "--out", str(tmp_path / "n.jsonl")], "date"),
        (["archive", "--db", db, "--before", "2026-12-01", "--out", str(tmp_path / "there.jsonl")], "never overwritten"),
        (["verify", "--file", str(tmp_path / "there.jsonl")], "not an rxgate archive"),
        (["verify", "--file", str(tmp_path / "missing.jsonl")], "cannot read"),
        (["head", "--file", "x"], "--file applies"),
        (["verify", "--before", "2026-12-01"], "--before/--out"),
    ]:
        with pytest.raises(UsageError, match=words):
            audit(*argv)
    assert not (tmp_path / "n.jsonl").exists()


def test_archive_with_nothing_before_the_date_holds_the_header(db, tmp_path):
    target = tmp_path / "e.jsonl"
    code, out = audit("archive", "--db", db, "--before", "2020-01-01", "--out", str(target))
    assert code == 0 and "header only" in out
    code, out = audit("verify", "--file", str(target))
    assert code == 0 and "empty" in out
