"""A resend with MSH-7 re-stamped or trailing `|||` gets the stored answer byte for byte over `rxgate check`
and the stream bridge (MLLP: tests/integration/test_mllp_modes.py); one audit record, one history entry."""

from __future__ import annotations

import json
import sqlite3

import fakeredis

from tests.adapters.test_bridge_unit import make, outbound
from tests.adapters.test_cli import rxgate
from tests.builders import adult_order_set
from tests.unit.test_real_traffic import with_msh
from validator import InMemoryStore
from workers.queue.bridge import ensure_group


def resends(control_id: str, mrn: str = "MRN55501") -> tuple[str, str, str]:
    """The first copy, the copy re-stamped (MSH-7), the copy re-serialised with trailing empty fields."""
    original = adult_order_set(control_id, mrn=mrn)
    restamped = with_msh(original, f7="20261201091700")
    trailing = "\r".join(line + "|||" if line.startswith(("PID", "ORC", "RXR")) else line
                         for line in original.split("\r"))
    return original, restamped, trailing


def test_check_with_a_database_answers_resends_with_the_stored_answer(tmp_path):
    db = tmp_path / "rx.db"
    answers = []
    for i, text in enumerate(resends("CR1")):
        path = tmp_path / f"copy{i}.hl7"
        path.write_bytes(text.encode())
        proc = rxgate("check", "--json", "--db", f"sqlite:///{db}", str(path))
        assert proc.returncode == 0, proc.stderr
        answers.append(json.loads(proc.stdout))
    assert answers[0] == answers[1] == answers[2]  # the response (its MSH-10 and MSH-7 too) byte for byte
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM course_history WHERE protocol_order").fetchone()[0] == 1


def test_bridge_answers_resends_with_the_stored_answer():
    client = fakeredis.FakeRedis()
    store = InMemoryStore()
    bridge = make(client, store)
    ensure_group(client, bridge.streams)
    for text in resends("BR1", mrn="PBR1"):
        client.xadd("t:inbound", {"hl7": text})
    bridge.step()
    out = outbound(client)
    assert len(out) == 3 and out[0]["hl7"] == out[1]["hl7"] == out[2]["hl7"]
    assert out[0]["ack_code"] == "AA"
    assert len(store.audit) == 1
    assert sum(1 for e in store.orders_for("PBR1^GENHOSP") if e.protocol_order) == 1
