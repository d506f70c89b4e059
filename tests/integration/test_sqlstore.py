"""The SQL store (workers/store/) on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from tests.builders import adult_order_set, cancel_message, go_dose_message, go_order
from validator import InMemoryStore, load_protocol, process_text
from validator.history import Cancellation, HistoryEntry, KeyTaken, MessageKey, ProcessedMessage
from validator.model import Coded
from workers.cli import main
from workers.http.app import create_app
from workers.store import StoreMissing, StoreRefused, StoreUnavailable, make_engine, open_sql_store
from workers.store.engine import _alembic_config
from workers.store.schema import (
    Base,
    CancellationRow,
    ChainRow,
    DeliveryRow,
    HistoryRow,
    MessageKeyRow,
    MessageRow,
)

pytestmark = pytest.mark.integration

TABLES = {"audit_chain", "messages", "verdicts", "findings", "responses", "message_keys", "deliveries",
          "course_history", "cancellations", "alembic_version"}
WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def process(text_: str, store, when: datetime = WHEN):
    return process_text(text_, store, load_protocol(), tz=UTC, received_at=when)


def count(store, row) -> int:
    with store.read_session() as s:
        return s.execute(select(func.count()).select_from(row)).scalar_one()


def entry(placer: str, *, patient: str = "P1^H", sender: str = "APP^FAC", namespace: str = "") -> HistoryEntry:
    return HistoryEntry(
        patient_key=patient, sender=sender, placer_number=placer, placer_namespace=namespace, control_id="C" + placer,
        drug=Coded(code="GO", text="gemtuzumab ozogamicin", system="L"), protocol_order=True, protocol_id="go",
        start=datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=-5))),
        amount=Decimal("15.20"), amount_units="mg", route="IV",
    )


def processed(control_id: str | None, *, new_orders=(), cancellations=(), content: str = "h" * 64,
              ack: str = "AA") -> ProcessedMessage:
    key = None if control_id is None else MessageKey(
        sending_application="APP", sending_facility="FAC", control_id=control_id, content_sha256=content)
    return ProcessedMessage(
        key=key, received_at=WHEN, answered_at=WHEN + timedelta(seconds=1), sender="APP^FAC", control_id=control_id,
        patient_key="P1^H", raw_message=f"MSH|^~\\&|APP|FAC|||||RDE^O11|{control_id}|P|2.5.1\r",
        ack_code=ack, result={"control_id": control_id, "ack_code": ack, "orders": [], "findings": [],
                              "response": "MSH|...", "patient_id": "P1"},
        response="MSH|...", protocol_id="go", protocol_version="abc", computed={"bsa_m2": Decimal("1.686")},
        new_orders=list(new_orders), cancellations=list(cancellations),
    )


def cancel(placer: str, leaves: bool, *, namespace: str = "") -> Cancellation:
    return Cancellation(patient_key="P1^H", sender="APP^FAC", placer_number=placer, placer_namespace=namespace,
                        control="CA", leaves_history=leaves, requested_at=WHEN)


# --- migrations ---------------------------------------------------------------------------------


def test_migration_from_empty_creates_every_table_and_is_idempotent(db_url):
    first = open_sql_store(db_url, create=True)
    try:
        assert TABLES <= set(inspect(first.engine).get_table_names())
        with first.engine.connect() as conn:
            head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
            # the migration builds exactly the models' schema
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == []
        process(adult_order_set("M0001"), first)
    finally:
        first.dispose()
    again = open_sql_store(db_url, create=True)  # second upgrade: nothing to do, data kept
    try:
        with again.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert again.count() == 1
    finally:
        again.dispose()


def test_sqlite_url_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "rxgate.db"
    store = open_sql_store(f"sqlite:///{path}", create=True)
    store.dispose()
    assert path.exists()


def test_unreachable_postgres_raises_a_clear_error_without_password():
    with pytest.raises(StoreUnavailable) as exc:
        open_sql_store("postgresql://postgres:sekret@127.0.0.1:1/nowhere", create=True)
    message = str(exc.value)
    assert "cannot open database" in message and "127.0.0.1:1" in message
    assert "sekret" not in message


def test_bad_url_raises_store_unavailable():
    with pytest.raises(StoreUnavailable):
        open_sql_store("not a url", create=True)
    with pytest.raises(StoreUnavailable, match="unsupported database"):
        open_sql_store("mysql://x@localhost/db", create=True)


# --- round trip through the service -------------------------------------------------------------


def test_round_trip_matches_the_in_memory_store(store):
    memory = InMemoryStore()
    text_ = adult_order_set("R0001")
    sql_outcome = process(text_, store)[0]
    mem_outcome = process(text_, memory)[0]
    assert sql_outcome.ack_code == "AA"
    assert sql_outcome.result["ack_code"] == mem_outcome.result["ack_code"]
    patient = next(iter(memory.orders))
    assert store.orders_for(patient) == memory.orders_for(patient)
    assert len(store.orders_for(patient)) == len(memory.orders_for(patient)) >= 1
    assert store.orders_for("nobody^X") == []
    key = memory.audit[0].key
    answer = store.answer_for(key)
    assert answer is not None and answer.content_sha256 == key.content_sha256
    assert answer.result == sql_outcome.result
    assert list(answer.result) == list(sql_outcome.result)  # same key order as first answered
    assert count(store, ChainRow) == 1 and count(store, DeliveryRow) == 1


def test_redelivery_returns_the_stored_answer_and_logs_a_delivery(store):
    text_ = adult_order_set("R0002")
    first = process(text_, store)[0]
    again = process(text_, store, WHEN + timedelta(minutes=5))[0]
    assert again.redelivered is True
    assert again.response == first.response  # byte for byte, same response MSH-10
    assert count(store, ChainRow) == 1  # counted once
    assert count(store, DeliveryRow) == 2
    patient = "MRN55501^GENHOSP"
    assert len([e for e in store.orders_for(patient) if e.protocol_order]) == 1


def test_same_control_id_other_content_is_rejected_and_recorded(store):
    process(adult_order_set("R0003"), store)
    other = process(adult_order_set("R0003", go=go_order(dose="15.3")), store)[0]
    assert other.ack_code == "AR"
    assert any(f["rule"] == "hl7.duplicate_control_id" for f in other.result["findings"])
    assert count(store, ChainRow) == 2  # the rejection has its audit record
    assert count(store, MessageKeyRow) == 1  # but no key of its own


def test_save_raises_key_taken_and_writes_nothing(store):
    store.save(processed("K1", new_orders=[entry("A")]))
    before = (count(store, ChainRow), count(store, HistoryRow), count(store, MessageRow))
    with pytest.raises(KeyTaken):
        store.save(processed("K1", new_orders=[entry("B")], content="z" * 64))
    assert (count(store, ChainRow), count(store, HistoryRow), count(store, MessageRow)) == before
    # a message without a key is recorded (audit) without a key row
    store.save(processed(None))
    assert count(store, ChainRow) == 2 and count(store, MessageKeyRow) == 1


def test_history_entry_round_trips_exactly(store):
    original = entry("A", namespace="NS")
    store.save(processed("E1", new_orders=[original]))
    (back,) = store.orders_for("P1^H")
    assert back == original
    assert back.start.utcoffset() == timedelta(hours=-5)  # the offset as sent is kept
    assert back.amount == Decimal("15.20")


def test_cancellation_that_leaves_history_marks_the_entry_cancelled(store):
    store.save(processed("C1", new_orders=[entry("A"), entry("B"), entry("A", patient="P2^H")]))
    store.save(processed("C2", cancellations=[cancel("A", True)]))
    assert [e.placer_number for e in store.orders_for("P1^H")] == ["B"]
    assert [e.placer_number for e in store.orders_for("P2^H")] == ["A"]  # other patient untouched
    with store.read_session() as s:
        cancelled = s.execute(select(HistoryRow).where(HistoryRow.cancelled_by.is_not(None))).scalars().all()
        assert [(r.placer_number, r.patient_key) for r in cancelled] == [("A", "P1^H")]  # marked, not deleted
        (row,) = s.execute(select(CancellationRow)).scalars().all()
        assert row.leaves_history is True and row.entries_removed == 1


def test_cancellation_of_a_started_dose_is_recorded_but_keeps_the_entry(store):
    store.save(processed("D1", new_orders=[entry("A")]))
    store.save(processed("D2", cancellations=[cancel("A", False)]))
    assert [e.placer_number for e in store.orders_for("P1^H")] == ["A"]
    with store.read_session() as s:
        (row,) = s.execute(select(CancellationRow)).scalars().all()
        assert row.leaves_history is False and row.entries_removed == 0


def test_cancellation_matches_namespace_and_sender(store):
    store.save(processed("N1", new_orders=[entry("A", namespace="X"), entry("A", sender="OTHER^FAC")]))
    store.save(processed("N2", cancellations=[cancel("A", True, namespace="Y")]))
    assert len(store.orders_for("P1^H")) == 2  # other namespace: nothing removed
    store.save(processed("N3", cancellations=[cancel("A", True, namespace="X")]))
    assert [e.sender for e in store.orders_for("P1^H")] == ["OTHER^FAC"]


def test_cancellations_apply_before_new_orders_for_a_replacement(store):
    store.save(processed("X1", new_orders=[entry("A")]))
    replacement = entry("A").model_copy(update={"amount": Decimal("14.0"), "control_id": "X2"})
    store.save(processed("X2", cancellations=[cancel("A", True)], new_orders=[replacement]))
    (active,) = store.orders_for("P1^H")
    assert active.amount == Decimal("14.0")


def test_course_through_the_service_with_a_cancel(store):
    day1 = process(go_dose_message("S0001", "20261201"), store)[0]
    assert day1.ack_code == "AA", day1.result["findings"]
    patient = "MRN55501^GENHOSP"
    go_before = [e for e in store.orders_for(patient) if e.protocol_order]
    assert len(go_before) == 1
    process(cancel_message("S0002", "ORD1001", time="20261201083000"), store, WHEN - timedelta(hours=1))
    memory = InMemoryStore()
    process(go_dose_message("S0001", "20261201"), memory)
    process(cancel_message("S0002", "ORD1001", time="20261201083000"), memory, WHEN - timedelta(hours=1))
    assert store.orders_for(patient) == memory.orders_for(patient)


def test_nul_bytes_and_unicode_are_stored(store):
    raw = "MSH|^~\\&|APP|FAC|||||RDE^O11|U1|P|2.5.1\rPID|1||\x00é²\r"
    p = processed("U1")
    p = p.model_copy(update={"raw_message": raw, "patient_key": "é\x00^H"})
    store.save(p)
    with store.read_session() as s:
        row = s.get(MessageRow, 1)
        assert bytes(row.raw_message).decode() == raw


def test_record_delivery_of_unknown_key_is_ignored(store):
    store.record_delivery(MessageKey(sending_application="A", sending_facility="F", control_id="none",
                                     content_sha256="0" * 64), WHEN)
    assert count(store, DeliveryRow) == 0


# --- a database error carries no patient data (workers/store/errors.py) --------------------------

PRIVATE_MRN = "ZQMRN9191"


def refuse_patient(store, mrn: str) -> None:
    """Make the database refuse the audit row of this patient, as a real constraint would."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(f"CREATE TRIGGER refuse_patient BEFORE INSERT ON messages "
                                 f"WHEN NEW.patient_id = '{mrn}' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        else:  # PostgreSQL's DETAIL would quote the whole row: "Failing row contains (..., ZQMRN9191, ...)"
            conn.exec_driver_sql(f"ALTER TABLE messages ADD CONSTRAINT refuse_patient CHECK (patient_id <> '{mrn}')")


def test_a_refused_insert_says_so_without_the_patients_data(store, caplog):
    refuse_patient(store, PRIVATE_MRN)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreRefused) as exc:
        process(adult_order_set("PRIV91", mrn=PRIVATE_MRN), store)
    error = exc.value
    texts = [str(error), repr(error), "".join(traceback.format_exception(error)), caplog.text,
             *(r.getMessage() for r in caplog.records)]
    assert [t for t in texts if PRIVATE_MRN in t or "DOE" in t] == []
    # the original (its parameters, the driver's DETAIL) is not kept to be printed by anyone
    assert error.__cause__ is None and error.__context__ is None
    assert "IntegrityError" in str(error) and "refused a statement" in str(error)
    assert store.count() == 0  # and nothing of the batch was written
    # another patient's message is still stored
    assert process(adult_order_set("PRIV92"), store)[0].ack_code == "AA" and store.count() == 1


# --- readers never create a database (docs/interfaces.md §5 "Access") ----------------------------


def test_readers_refuse_an_empty_postgresql_database_and_leave_it_empty(pg_url, capsys, monkeypatch):
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    with pytest.raises(StoreMissing, match=r"no rxgate audit log at postgresql://.*\(no rxgate tables\)"):
        open_sql_store(pg_url, create=False)
    for argv in (["audit", "verify"], ["audit"], ["audit", "head"]):
        assert main([*argv, "--db", pg_url]) == 2
        err = capsys.readouterr().err
        assert "no rxgate audit log at" in err and "(no rxgate tables)" in err and "Traceback" not in err
    with pytest.raises(StoreMissing):
        create_app(pg_url, "0" * 64)
    engine = make_engine(pg_url, create=False)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
