"""The keyed audit chain (docs/interfaces.md §4): records are signed with an HMAC key kept outside the
database, and verification also covers the message keys, the course history and the cancellations
the records imply. Each tampering an attacker with write access to the database (but not the key)
could do is found. Runs on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select, text

from tests.builders import adult_order_set, cancel_message, go_order
from validator import load_protocol, process_text
from workers.store import chain_hash, open_sql_store, record_content, verify_chain
from workers.store.chain import ChainKeyError, ChainKeys
from workers.store.schema import ChainRow, FindingRow, MessageRow, ResponseRow, VerdictRow

WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
KEY = "k" * 40
OTHER = "o" * 40


@pytest.fixture
def keyed(db_url):
    store = open_sql_store(db_url, create=True, keys=ChainKeys.parse(KEY, "test"))
    protocol = load_protocol()
    for i, t in enumerate([adult_order_set("K0001"), adult_order_set("K0002", go=go_order(dose="30")),
                           adult_order_set("K0003", mrn="MRN77")]):
        process_text(t, store, protocol, tz=UTC, received_at=WHEN + timedelta(minutes=i))
    assert verify_chain(store).intact
    yield store
    store.dispose()


def sql(store, statement: str, **params) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_records_are_signed_with_the_key_and_name_it(keyed):
    with keyed.read_session() as s:
        rows = s.execute(select(ChainRow).order_by(ChainRow.seq)).scalars().all()
    assert {r.key_id for r in rows} == {ChainKeys.parse(KEY, "t").current.key_id}
    assert KEY not in json.dumps([r.key_id for r in rows])
    # with another key the same rows do not verify: the key, not the database, vouches for them
    result = verify_chain(keyed, keys=ChainKeys.parse(OTHER, "test"))
    assert not result.intact and result.first_bad_seq == 1 and "audit key" in result.reason


def _forge_after(store, seq: int) -> None:
    """An attacker's record seq+1: a copy of record `seq` under another control id, hashed as the
    code hashes (plain SHA-256 over the recomputed content), linked to the real head."""
    with store.engine.begin() as conn:
        head = conn.execute(text("SELECT hash FROM audit_chain WHERE seq = :s"), {"s": seq}).scalar_one()
        new = seq + 1
        conn.execute(text(
            "INSERT INTO messages (id, received_at, answered_at, sender, sending_application, sending_facility, "
            "control_id, message_type, patient_id, patient_key, content_sha256, raw_message) "
            "SELECT :n, received_at, answered_at, sender, sending_application, sending_facility, 'FORGED', "
            "message_type, patient_id, patient_key, content_sha256, raw_message FROM messages WHERE id = :s"),
            {"n": new, "s": seq})
        for table, cols in (("verdicts", "ack_code, protocol_id, protocol_version, computed, result"),
                            ("responses", "response")):
            conn.execute(text(f"INSERT INTO {table} (message_id, {cols}) SELECT :n, {cols} FROM {table} "
                              "WHERE message_id = :s"), {"n": new, "s": seq})
    with store.read_session() as s:
        content = record_content(s.get(MessageRow, new), s.get(VerdictRow, new), s.get(ResponseRow, new),
                                 list(s.execute(select(FindingRow).where(FindingRow.message_id == new)).scalars()))
    sql(store, "INSERT INTO audit_chain (seq, prev_hash, hash) VALUES (:n, :p, :h)",
        n=new, p=head, h=chain_hash(content, new, head))


def test_a_forged_record_with_a_recomputed_plain_hash_is_found(keyed):
    _forge_after(keyed, 3)
    result = verify_chain(keyed)
    assert not result.intact and result.first_bad_seq == 4, result.describe()
    assert "not signed" in result.reason


def test_a_forged_record_claiming_the_key_id_is_found(keyed):
    _forge_after(keyed, 3)
    sql(keyed, "UPDATE audit_chain SET key_id = (SELECT key_id FROM audit_chain WHERE seq = 1) WHERE seq = 4")
    result = verify_chain(keyed)
    assert not result.intact and result.first_bad_seq == 4 and "altered" in result.reason


def test_deleting_a_patients_course_history_is_found(keyed):
    sql(keyed, "DELETE FROM course_history WHERE message_id = 3")
    result = verify_chain(keyed)
    assert not result.intact and result.first_bad_seq == 3, result.describe()


@pytest.mark.parametrize("statement", [
    "UPDATE message_keys SET result = REPLACE(result, 'AA', 'AE') WHERE message_id = 1",
    "UPDATE message_keys SET content_sha256 = :h WHERE message_id = 1",
    "DELETE FROM message_keys WHERE message_id = 1",
])
def test_editing_message_keys_is_found(keyed, statement):
    with keyed.engine.begin() as conn:
        conn.execute(text("DELETE FROM deliveries WHERE message_key_id IN "
                          "(SELECT id FROM message_keys WHERE message_id = 1)"))
        conn.execute(text(statement), {"h": "f" * 64})
    result = verify_chain(keyed)
    assert not result.intact and result.first_bad_seq == 1, result.describe()


def test_reviving_or_cancelling_a_dose_is_found(db_url):
    store = open_sql_store(db_url, create=True, keys=ChainKeys.parse(KEY, "test"))
    protocol = load_protocol()
    process_text(adult_order_set("C0001", mrn="MRN5"), store, protocol, tz=UTC, received_at=WHEN)
    process_text(adult_order_set("C0002", mrn="MRN6"), store, protocol, tz=UTC, received_at=WHEN)
    [out] = process_text(cancel_message("C0003", "ORD1001", mrn="MRN5"), store, protocol, tz=UTC,
                         received_at=WHEN + timedelta(hours=1))
    assert out.ack_code == "AA", out.result
    assert verify_chain(store).intact
    with store.read_session() as s:
        cancelled = s.execute(text("SELECT count(*) FROM course_history WHERE cancelled_by = 3")).scalar_one()
    assert cancelled >= 1
    sql(store, "UPDATE course_history SET cancelled_by = NULL, cancelled_at = NULL WHERE cancelled_by = 3")
    revived = verify_chain(store)
    assert not revived.intact and revived.first_bad_seq == 3, revived.describe()
    sql(store, "UPDATE course_history SET cancelled_by = 3, cancelled_at = :t", t=WHEN)
    assert not verify_chain(store).intact  # the other patient's dose cancelled by record 3
    store.dispose()


def test_a_rotated_key_still_verifies_what_the_old_one_signed(db_url):
    old = open_sql_store(db_url, create=True, keys=ChainKeys.parse(KEY, "test"))
    protocol = load_protocol()
    process_text(adult_order_set("R0001"), old, protocol, tz=UTC, received_at=WHEN)
    old.dispose()
    new = open_sql_store(db_url, create=True, keys=ChainKeys.parse(f"{KEY}\n{OTHER}\n", "test"))
    process_text(adult_order_set("R0002", mrn="MRN9"), new, protocol, tz=UTC, received_at=WHEN)
    with new.read_session() as s:
        key_ids = [r.key_id for r in s.execute(select(ChainRow).order_by(ChainRow.seq)).scalars()]
    assert key_ids == [ChainKeys.parse(KEY, "t").current.key_id, ChainKeys.parse(OTHER, "t").current.key_id]
    assert verify_chain(new).intact
    only_new = verify_chain(new, keys=ChainKeys.parse(OTHER, "test"))
    assert not only_new.intact and only_new.first_bad_seq == 1  # the old key removed: its records cannot vouch
    new.dispose()


def test_records_from_before_the_key_verify_only_as_the_oldest_part(keyed):
    """A log written before the chain was keyed (plain SHA-256, key_id NULL) stays verifiable; once
    keyed records follow, a plain one after them is a forgery (test above)."""
    with keyed.read_session() as s:
        m, v, r = s.get(MessageRow, 1), s.get(VerdictRow, 1), s.get(ResponseRow, 1)
        findings = list(s.execute(select(FindingRow).where(FindingRow.message_id == 1)).scalars())
        legacy = chain_hash(record_content(m, v, r, findings), 1, "0" * 64)
        later = [(c.seq, c.prev_hash) for c in s.execute(select(ChainRow).where(ChainRow.seq > 1)).scalars()]
    assert later[0][1] != legacy  # record 2 links to the keyed hash: relinking needs the key
    sql(keyed, "UPDATE audit_chain SET hash = :h, key_id = NULL WHERE seq = 1", h=legacy)
    result = verify_chain(keyed)
    assert not result.intact and result.first_bad_seq == 2 and "link" in result.reason


@pytest.mark.parametrize("value, named", [
    ("", "RXGATE_AUDIT_KEY or RXGATE_AUDIT_KEY_FILE"),
    ("short", "shorter than 32"),
])
def test_a_missing_or_short_key_is_an_error_naming_the_setting(monkeypatch, value, named):
    from workers.settings import Settings

    monkeypatch.setenv("RXGATE_AUDIT_KEY", value)
    with pytest.raises(ChainKeyError, match=named):
        Settings().chain_keys()


def test_the_key_file_holds_the_keys_oldest_first(monkeypatch, tmp_path):
    from workers.settings import Settings

    path = tmp_path / "audit.key"
    path.write_text(f"# rotated 2026-12-02\n{KEY}\n{OTHER}\n")
    monkeypatch.delenv("RXGATE_AUDIT_KEY")
    monkeypatch.setenv("RXGATE_AUDIT_KEY_FILE", str(path))
    keys = Settings().chain_keys()
    assert [k.secret for k in keys.keys] == [KEY.encode(), OTHER.encode()]
    assert keys.current.secret == OTHER.encode()
    monkeypatch.setenv("RXGATE_AUDIT_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ChainKeyError, match="missing.key"):
        Settings().chain_keys()
    monkeypatch.setenv("RXGATE_AUDIT_KEY", KEY)
    with pytest.raises(ChainKeyError, match="not both"):
        Settings().chain_keys()


def test_without_a_key_nothing_is_written_and_the_commands_say_why(monkeypatch, sqlite_url, tmp_path, capsys):
    from workers.bootstrap import bootstrap
    from workers.cli import main

    monkeypatch.delenv("RXGATE_AUDIT_KEY")
    monkeypatch.setenv("RXGATE_DATABASE_URL", sqlite_url)
    with pytest.raises(ChainKeyError, match="RXGATE_AUDIT_KEY"):
        bootstrap()
    msg = tmp_path / "m.hl7"
    msg.write_text(adult_order_set("N0001"))
    assert main(["check", "--db", sqlite_url, str(msg)]) == 2
    assert "RXGATE_AUDIT_KEY" in capsys.readouterr().err
    store = open_sql_store(sqlite_url, create=True)  # a store opened without keys takes them from the settings
    with pytest.raises(ChainKeyError):
        process_text(adult_order_set("N0002"), store, load_protocol(), tz=UTC, received_at=WHEN)
    assert store.count() == 0
    assert main(["audit", "verify", "--db", sqlite_url]) == 2
    assert "RXGATE_AUDIT_KEY" in capsys.readouterr().err
    store.dispose()


def test_record_content_of_a_keyed_record_covers_the_implied_rows():
    row = SimpleNamespace(id=1, received_at=WHEN, answered_at=WHEN, sender="A^F", sending_application="A",
                          sending_facility="F", control_id="C", message_type="RDE^O11", patient_id="P",
                          patient_key="P^H", content_sha256="0" * 64, raw_message=b"MSH", delivery_id="stream:1-0")
    plain = record_content(row, None, None, [])
    keyed = record_content(row, None, None, [], keyed=True)
    assert "history" not in plain and "delivery_id" not in plain["message"]
    assert keyed["v"] == 2 and keyed["history"] == [] and keyed["message_key"] is None
    assert keyed["message"]["delivery_id"] == "stream:1-0"


@pytest.mark.parametrize("command", [["serve", "--no-worker", "--no-bridge"], ["worker"], ["bridge"]])
def test_service_processes_stop_at_start_up_without_a_key(monkeypatch, capsys, command):
    from workers.cli import main

    monkeypatch.delenv("RXGATE_AUDIT_KEY")
    assert main(command) == 2
    assert "RXGATE_AUDIT_KEY" in capsys.readouterr().err
