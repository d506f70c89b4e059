"""Every field the store keeps has a length the reader enforces (issue 15 item 4): a 500-character
MSH-10 or PID-3 is answered AR and audited (without the over-long value in a column), never a database
error that is retried and dead-lettered; on SQLite and the machine's PostgreSQL."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC

import pytest

from tests.builders import adult_order_set
from validator import load_protocol, process_text
from validator.reader import STORED_FIELD_LIMITS
from workers.store import verify_chain

LONG = "Z" * 500


def _long_control_id() -> str:
    return adult_order_set(LONG)


def _long_mrn() -> str:
    return adult_order_set("L0002", mrn="MRN" + LONG)


def _long_sender() -> str:
    return adult_order_set("L0003").replace("MSH|^~\\&|", f"MSH|^~\\&|{'A' * 300}|{'F' * 300}", 1)


@pytest.mark.parametrize("build, where, records", [(_long_control_id, "MSH-10", 2), (_long_mrn, "PID-3", 1),
                                                   (_long_sender, "MSH-3", 2)])
def test_an_over_long_field_is_answered_ar_and_audited(store, build, where, records, caplog):
    caplog.set_level(logging.DEBUG)
    text = build()
    [out] = process_text(text, store, load_protocol(), tz=UTC)
    assert out.ack_code == "AR", out.result["findings"]
    assert out.result["findings"][0]["rule"] == "hl7.size"
    assert where in out.result["findings"][0]["message"]
    assert store.count() == 1 and verify_chain(store).intact
    # the value is not in any column (the raw message keeps everything) nor in the logs
    with store.read_session() as s:
        from workers.store.schema import MessageRow

        row = s.get(MessageRow, 1)
        assert LONG not in (row.control_id or "") and LONG not in (row.patient_id or "")
        assert LONG not in row.patient_key
    assert LONG not in caplog.text
    [again] = process_text(text, store, load_protocol(), tz=UTC)
    # an over-long MSH field: not under a key, audited each time; a long PID-3: its AR stored under the key
    assert again.ack_code == "AR" and store.count() == records


def test_the_reader_limits_fit_the_columns():
    from workers.store import schema

    columns = {"control_id": schema.FIELD_LEN, "sending_application": schema.FIELD_LEN,
               "sending_facility": schema.FIELD_LEN, "sender": schema.FIELD_LEN,
               "message_type": schema.MESSAGE_TYPE_LEN, "patient_id": schema.FIELD_LEN,
               "patient_key": schema.COMPOSITE_LEN, "placer_number": schema.FIELD_LEN,
               "placer_namespace": schema.FIELD_LEN, "drug_code": schema.FIELD_LEN,
               "drug_text": schema.COMPOSITE_LEN}
    assert set(STORED_FIELD_LIMITS) == set(columns)
    for name, (_where, limit) in STORED_FIELD_LIMITS.items():
        assert limit <= columns[name] - 3, name  # room for the "#T" course key suffix


def test_check_db_postgresql_error_never_prints_the_mrn(pg_url, tmp_path):
    """`rxgate check --db postgresql://…` with a value the database refuses: no MRN on any output."""
    msg = tmp_path / "m.hl7"
    msg.write_text(_long_mrn())
    out = subprocess.run([sys.executable, "-m", "workers.cli", "check", "--db", pg_url, str(msg)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 1, out.stderr  # answered AR (exit 1), not a traceback
    assert "Traceback" not in out.stderr
    assert LONG not in out.stderr


def test_a_database_error_in_check_db_is_one_line_without_patient_data(monkeypatch, sqlite_url, tmp_path, capsys):
    from validator import InMemoryStore
    from workers.cli import check, main
    from workers.store import StoreRefused

    class Refusing(InMemoryStore):
        def save(self, processed):
            raise StoreRefused("database sqlite:///x refused a statement: DataError (psycopg.errors.StringDataRightTruncation 22001)")

    monkeypatch.setattr(check, "open_store", lambda url, settings: Refusing())
    msg = tmp_path / "m.hl7"
    msg.write_text(adult_order_set("L0009", mrn="MRNSECRET42"))
    assert main(["check", "--db", sqlite_url, str(msg)]) == 2
    err = capsys.readouterr().err
    assert "refused a statement" in err and "Traceback" not in err and "MRNSECRET42" not in err
