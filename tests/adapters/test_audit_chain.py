"""The audit log's hash chain: verification finds edited, removed and inserted rows; concurrent
writers never fork it. Runs on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from tests.builders import adult_order_set, go_order
from validator import load_protocol, process_text
from validator.history import MessageKey, ProcessedMessage
from workers.store import GENESIS_HASH, canonical_json, chain_hash, open_sql_store, verify_chain
from workers.store.schema import ChainRow

WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


@pytest.fixture
def filled(store):
    """Four records: accepted, refused (AE), accepted, refused."""
    protocol = load_protocol()
    texts = [
        adult_order_set("V0001"),
        adult_order_set("V0002", mrn="MRN72", go=go_order(route="PO^Oral^HL70162")),  # own patient: not ORD1001 again
        adult_order_set("V0003", mrn="MRN77"),
        adult_order_set("V0004", mrn="MRN74", go=go_order(dose="30")),
    ]
    for i, t in enumerate(texts):
        process_text(t, store, protocol, tz=UTC, received_at=WHEN + timedelta(minutes=i))
    assert store.count() == 4
    return store


def tamper(store, sql: str, **params) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_hash_definition_is_sha256_of_canonical_json():
    content = {"b": 1, "a": "é"}
    expected = hashlib.sha256(
        '{"content":{"a":"é","b":1},"prev_hash":"%s","seq":1}'.encode() % GENESIS_HASH.encode()
    ).hexdigest()
    assert chain_hash(content, 1, GENESIS_HASH) == expected
    assert canonical_json({"z": 1, "a": [1, 2]}) == '{"a":[1,2],"z":1}'


def test_intact_chain_links_from_genesis(filled):
    result = verify_chain(filled)
    assert result.intact, result.describe()
    assert result.checked == 4 and result.head_seq == 4
    with filled.read_session() as s:
        rows = s.execute(select(ChainRow).order_by(ChainRow.seq)).scalars().all()
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, 4))
    assert filled.head() == (4, rows[-1].hash)
    assert result.head_hash == rows[-1].hash


def test_empty_log_is_intact(store):
    result = verify_chain(store)
    assert result.intact and result.checked == 0 and "empty" in result.describe()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE verdicts SET ack_code = 'AA' WHERE message_id = 2",
        "UPDATE findings SET message = 'nothing to see' WHERE message_id = 2",
        "UPDATE findings SET rule = 'go.other' WHERE message_id = 2",
        "UPDATE messages SET control_id = 'X9' WHERE id = 2",
        "UPDATE messages SET patient_id = 'SOMEONE' WHERE id = 2",
        "UPDATE responses SET response = 'MSH|edited' WHERE message_id = 2",
        "UPDATE verdicts SET computed = '{}' WHERE message_id = 2",
    ],
)
def test_an_edited_field_is_named(filled, sql):
    tamper(filled, sql)
    result = verify_chain(filled)
    assert not result.intact
    assert result.first_bad_seq == 2
    assert "altered" in result.reason
    assert "sequence number 2" in result.describe()


def test_an_edited_received_time_is_named(filled):
    with filled.engine.begin() as conn:
        conn.execute(text("UPDATE messages SET received_at = :t WHERE id = 3"),
                     {"t": datetime(2020, 1, 1) if filled.dialect == "sqlite" else datetime(2020, 1, 1, tzinfo=UTC)})
    assert verify_chain(filled).first_bad_seq == 3


def test_an_edited_raw_message_is_named(filled):
    tamper(filled, "UPDATE messages SET raw_message = :b WHERE id = 1", b=b"MSH|forged")
    assert verify_chain(filled).first_bad_seq == 1


def test_a_rewritten_hash_breaks_the_next_link(filled):
    tamper(filled, "UPDATE audit_chain SET hash = :h WHERE seq = 2", h="f" * 64)
    result = verify_chain(filled)
    assert result.first_bad_seq == 2  # its own hash no longer matches its content


def _delete_record(store, seq: int) -> None:
    with store.engine.begin() as conn:
        key_ids = [r[0] for r in conn.execute(text("SELECT id FROM message_keys WHERE message_id = :s"), {"s": seq})]
        for kid in key_ids:
            conn.execute(text("DELETE FROM deliveries WHERE message_key_id = :k"), {"k": kid})
        for table, col in [("message_keys", "message_id"), ("course_history", "message_id"),
                           ("cancellations", "message_id"), ("findings", "message_id"),
                           ("verdicts", "message_id"), ("responses", "message_id"), ("messages", "id"),
                           ("audit_chain", "seq")]:
            conn.execute(text(f"DELETE FROM {table} WHERE {col} = :s"), {"s": seq})


def test_a_deleted_record_is_named(filled):
    _delete_record(filled, 2)
    result = verify_chain(filled)
    assert not result.intact and result.first_bad_seq == 2
    assert "missing" in result.reason


def test_a_deleted_chain_row_alone_is_named(filled):
    tamper(filled, "DELETE FROM audit_chain WHERE seq = 3")
    assert verify_chain(filled).first_bad_seq == 3


def test_a_deleted_finding_row_is_named(filled):
    tamper(filled, "DELETE FROM findings WHERE message_id = 4")
    assert verify_chain(filled).first_bad_seq == 4


def test_renumbered_chain_after_a_deletion_is_named(filled):
    # remove record 2's chain row and move 3, 4 down: the links no longer match
    tamper(filled, "DELETE FROM audit_chain WHERE seq = 2")
    tamper(filled, "UPDATE audit_chain SET seq = seq - 1 WHERE seq = 3")
    tamper(filled, "UPDATE audit_chain SET seq = seq - 1 WHERE seq = 4")
    result = verify_chain(filled)
    assert not result.intact and result.first_bad_seq == 2


def test_an_inserted_finding_row_is_named(filled):
    tamper(filled, "INSERT INTO findings (message_id, position, rule, severity, message) "
                   "VALUES (1, 99, 'go.dose', 'error', 'planted')")
    assert verify_chain(filled).first_bad_seq == 1


def test_an_inserted_record_at_the_end_is_named(filled):
    head_seq, head_hash = filled.head()
    with filled.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO messages (id, received_at, answered_at, sender, sending_application, sending_facility, "
            "control_id, message_type, patient_id, patient_key, content_sha256, raw_message) "
            "SELECT 5, received_at, answered_at, sender, sending_application, sending_facility, 'FAKE', "
            "message_type, patient_id, patient_key, content_sha256, raw_message FROM messages WHERE id = 1"))
        conn.execute(text("INSERT INTO verdicts (message_id, ack_code, protocol_id, protocol_version, computed, "
                          "result) SELECT 5, ack_code, protocol_id, protocol_version, computed, result "
                          "FROM verdicts WHERE message_id = 1"))
        conn.execute(text("INSERT INTO audit_chain (seq, prev_hash, hash) VALUES (5, :p, :h)"),
                     {"p": head_hash, "h": "a" * 64})
    result = verify_chain(filled)
    assert result.first_bad_seq == 5


def test_an_inserted_message_without_chain_entry_is_named(filled):
    tamper(filled,
           "INSERT INTO messages (id, received_at, answered_at, sender, sending_application, sending_facility, "
           "control_id, message_type, patient_id, patient_key, content_sha256, raw_message) "
           "SELECT 40, received_at, answered_at, sender, sending_application, sending_facility, 'FAKE', "
           "message_type, patient_id, patient_key, content_sha256, raw_message FROM messages WHERE id = 1")
    result = verify_chain(filled)
    assert not result.intact and result.first_bad_seq == 40 and "without a chain entry" in result.reason


def test_cut_off_tail_is_only_found_against_an_anchor(filled):
    anchor = filled.head()
    _delete_record(filled, 4)
    assert verify_chain(filled).intact  # a shorter chain is still a valid chain...
    result = verify_chain(filled, anchor=anchor)  # ...but not against the anchor
    assert not result.intact and result.first_bad_seq == 4 and "cut off" in result.reason


def test_anchor_with_other_hash_is_named(filled):
    seq, _hash = filled.head()
    assert verify_chain(filled, anchor=(seq, _hash)).intact
    result = verify_chain(filled, anchor=(seq, "0" * 64))
    assert not result.intact and result.first_bad_seq == seq


def test_verification_spans_batches(store):
    for i in range(7):
        store.save(_processed(f"B{i}"))
    assert verify_chain(store, batch=3).intact
    tamper(store, "UPDATE verdicts SET ack_code = 'AE' WHERE message_id = 6")
    assert verify_chain(store, batch=3).first_bad_seq == 6


def _processed(control_id: str) -> ProcessedMessage:
    return ProcessedMessage(
        key=MessageKey(sending_application="APP", sending_facility="FAC", control_id=control_id,
                       content_sha256=hashlib.sha256(control_id.encode()).hexdigest()),
        received_at=WHEN, answered_at=WHEN, sender="APP^FAC", control_id=control_id, patient_key="P^H",
        raw_message=f"MSH|^~\\&|APP|FAC|||||RDE^O11|{control_id}|P|2.5.1", ack_code="AA",
        result={"control_id": control_id, "ack_code": "AA", "orders": [], "findings": [], "response": "MSH"},
        response="MSH", protocol_id="go", protocol_version="v",
    )


def test_concurrent_writers_never_fork_the_chain(db_url):
    """Four workers, each with its own engine (own connections), append at the same time."""
    open_sql_store(db_url, create=True).dispose()  # migrate once
    workers, per_worker = 4, 12
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def write(n: int) -> None:
        store = open_sql_store(db_url, create=True)
        try:
            barrier.wait()
            for i in range(per_worker):
                store.save(_processed(f"W{n}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    store = open_sql_store(db_url, create=True)
    try:
        with store.read_session() as s:
            rows = s.execute(select(ChainRow).order_by(ChainRow.seq)).scalars().all()
        assert [r.seq for r in rows] == list(range(1, workers * per_worker + 1))  # gapless
        assert len({r.prev_hash for r in rows}) == len(rows)  # no two records share a parent: no fork
        result = verify_chain(store)
        assert result.intact, result.describe()
    finally:
        store.dispose()
