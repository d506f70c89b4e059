"""The redelivery key and processing ids on the SQL store (SQLite), and the 0002_real_traffic upgrade."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import create_engine

from tests.builders import adult_order_set, go_dose_message
from tests.unit.test_real_traffic import with_msh
from validator import load_protocol, process_text
from validator.er7 import normalise
from workers.store import open_sql_store
from workers.store.engine import _alembic_config

PROTOCOL = load_protocol()
WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def send(store, text: str):
    [outcome] = process_text(text, store, PROTOCOL, tz=UTC, received_at=WHEN)
    return outcome


def counts(path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                     for t in ("messages", "course_history", "deliveries"))


def test_resend_with_restamped_msh7_and_trailing_fields_one_record_one_history_entry(tmp_path):
    store = open_sql_store(f"sqlite:///{tmp_path / 'rx.db'}", create=True)
    first = send(store, adult_order_set("SQ1"))
    restamped = send(store, with_msh(adult_order_set("SQ1"), f7="20261201094500"))
    trailing = send(store, adult_order_set("SQ1").replace("\rPV1|1|I|ONC^4B^12", "\rPV1|1|I|ONC^4B^12^^|||"))
    store.dispose()
    assert restamped.redelivered and trailing.redelivered
    assert restamped.response == first.response == trailing.response
    messages, history, deliveries = counts(tmp_path / "rx.db")
    assert (messages, history) == (1, 4)  # GO dose and three premeds, once
    assert deliveries == 3  # each delivery recorded against the one key


def test_training_and_production_keys_and_histories_apart(tmp_path):
    store = open_sql_store(f"sqlite:///{tmp_path / 'rx.db'}", create=True)
    assert send(store, with_msh(go_dose_message("SAME", "20261201"), f11="T")).ack_code == "AA"
    production = send(store, go_dose_message("SAME", "20261201"))
    assert production.ack_code == "AA" and not production.redelivered
    assert [e.control_id for e in store.orders_for("MRN55501^GENHOSP") if e.protocol_order] == ["SAME"]
    assert len(store.orders_for("MRN55501^GENHOSP#T")) == 4
    store.dispose()
    with sqlite3.connect(tmp_path / "rx.db") as conn:
        assert sorted(conn.execute("SELECT processing_id, control_id FROM message_keys")) == [("P", "SAME"),
                                                                                           ("T", "SAME")]


def test_upgrade_recomputes_stored_keys_so_an_old_message_resent_is_recognised(tmp_path):
    path = tmp_path / "rx.db"
    url = f"sqlite:///{path}"
    store = open_sql_store(url, create=True)
    first = send(store, adult_order_set("OLD1"))
    store.dispose()
    # as before the upgrade: the key's hash was over the normalised text, and no processing id column
    engine = create_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007_cds_hooks")
    old_hash = hashlib.sha256(normalise(adult_order_set("OLD1")).encode()).hexdigest()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE message_keys SET content_sha256 = ?", (old_hash,))
        assert "processing_id" not in [c[1] for c in conn.execute("PRAGMA table_info(message_keys)")]
    engine.dispose()
    store = open_sql_store(url, create=True)  # upgrades to head
    again = send(store, with_msh(adult_order_set("OLD1"), f7="20261201100000"))
    store.dispose()
    assert again.redelivered and again.response == first.response
    assert counts(path)[0] == 1


def test_rxgate_audit_patient_finds_a_rejected_message(tmp_path, capsys):
    from workers.cli import main

    url = f"sqlite:///{tmp_path / 'rx.db'}"
    store = open_sql_store(url, create=True)
    assert send(store, with_msh(adult_order_set("ARP1", mrn="MRNAR"), f11="Q")).ack_code == "AR"
    store.dispose()
    assert main(["audit", "--db", url, "--patient", "MRNAR", "--format", "json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert '"ARP1"' in line and '"AR"' in line
