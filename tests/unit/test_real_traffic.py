"""Issue 13 core: the redelivery key, processing ids, ERR-3 205/202 (docs/interfaces.md §3, docs/protocol.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.builders import adult_order_set, go_dose_message, msa, rules_of
from validator import InMemoryStore, load_protocol, process_text
from validator.er7 import redelivery_form

PROTOCOL = load_protocol()
WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def with_msh(text: str, **fields: str) -> str:
    """`text` with MSH fields set: with_msh(t, f7="20261201090000", f11="T")."""
    lines = text.split("\r")
    parts = lines[0].split("|")
    for name, value in fields.items():
        n = int(name[1:])
        parts += [""] * (n - len(parts))
        parts[n - 1] = value
    lines[0] = "|".join(parts)
    return "\r".join(lines)


def send(store: InMemoryStore, text: str):
    [outcome] = process_text(text, store, PROTOCOL, tz=UTC, received_at=WHEN)
    return outcome


def err_fields(response: str) -> list[str]:
    return next(s for s in response.split("\r") if s.startswith("ERR|")).split("|")


def msh_fields(response: str) -> list[str]:
    return response.split("\r")[0].split("|")


# --- the redelivery key ----------------------------------------------------------------------------


def test_redelivery_form_empties_msh7_and_trailing_empty_parts():
    first = "MSH|^~\\&|A|B|C|D|20261201083000||RDE^O11^RDE_O11|X|P|2.5.1\rPID|1||M^^^G^MR||DOE^JANE^^\r"
    again = "MSH|^~\\&|A|B|C|D|20261201090500||RDE^O11^RDE_O11|X|P|2.5.1|||\rPID|1||M^^^G^MR||DOE^JANE|||\r"
    assert redelivery_form(first) == redelivery_form(again)
    assert redelivery_form(first).split("\r")[0] == "MSH|^~\\&|A|B|C|D|||RDE^O11^RDE_O11|X|P|2.5.1"
    # a component inside a field is content: not removed
    assert redelivery_form(first.replace("M^^^G^MR", "M^^^G")) != redelivery_form(first)


def test_redelivery_form_uses_the_messages_own_delimiters():
    custom = "MSH#*@!%#A#B#C#D#20261201##RDE*O11#X#P#2.5.1###\rPID#1##M***G*MR**##DOE*JANE*#\r"
    assert redelivery_form(custom) == "MSH#*@!%#A#B#C#D###RDE*O11#X#P#2.5.1\rPID#1##M***G*MR##DOE*JANE"


def test_resend_with_restamped_msh7_gets_the_stored_answer_byte_for_byte():
    store = InMemoryStore()
    first = send(store, adult_order_set("RS1"))
    again = send(store, with_msh(adult_order_set("RS1"), f7="20261201091500"))
    assert first.ack_code == "AA" and again.redelivered
    assert again.response == first.response and again.result == first.result
    assert len(store.audit) == 1  # one audit record
    assert len([e for e in store.orders["MRN55501^GENHOSP"] if e.protocol_order]) == 1  # one history entry


def test_resend_reserialised_with_trailing_empty_fields_gets_the_stored_answer():
    store = InMemoryStore()
    first = send(store, adult_order_set("RS2"))
    text = "\r".join(line + "|||" if line else line for line in adult_order_set("RS2").split("\r"))
    again = send(store, text)
    assert again.redelivered and again.response == first.response
    assert len(store.audit) == 1 and len(store.orders["MRN55501^GENHOSP"]) == 4


def test_other_content_under_the_same_key_is_refused_with_205():
    store = InMemoryStore()
    send(store, adult_order_set("RS3"))
    other = send(store, adult_order_set("RS3").replace("15.2", "15.3"))
    assert other.ack_code == "AR" and not other.redelivered
    err = err_fields(other.response)
    assert err[3].startswith("205^Duplicate key identifier^HL70357") and err[5] == "hl7.duplicate_control_id"


# --- processing ids ---------------------------------------------------------------------------------


def test_training_then_production_day1_both_accepted_with_separate_histories():
    store = InMemoryStore()
    training = send(store, with_msh(go_dose_message("TP1", "20261201"), f11="T"))
    production = send(store, go_dose_message("TP2", "20261201"))
    assert training.ack_code == "AA" and production.ack_code == "AA", rules_of(production.result)
    assert msh_fields(training.response)[10] == "T" and msh_fields(production.response)[10] == "P"
    assert [e.control_id for e in store.orders["MRN55501^GENHOSP"] if e.protocol_order] == ["TP2"]
    assert [e.control_id for e in store.orders["MRN55501^GENHOSP#T"] if e.protocol_order] == ["TP1"]
    # and the production day 1 now blocks a second production day 1, not a debugging one
    assert send(store, go_dose_message("TP3", "20261201", placer="ORD2")).ack_code == "AE"
    assert send(store, with_msh(go_dose_message("TP4", "20261201", placer="ORD2"), f11="D")).ack_code == "AA"


def test_the_same_control_id_in_training_and_production_are_two_messages():
    store = InMemoryStore()
    assert send(store, with_msh(adult_order_set("SAME"), f11="T")).ack_code == "AA"
    production = send(store, adult_order_set("SAME"))
    assert production.ack_code == "AA" and not production.redelivered
    assert len(store.audit) == 2


def test_unsupported_processing_id_is_refused_with_202_and_echoed():
    for f11 in ("Q", "P^A", "X^T"):
        outcome = send(InMemoryStore(), with_msh(adult_order_set("Q1"), f11=f11))
        assert outcome.ack_code == "AR", f11
        err = err_fields(outcome.response)
        assert err[2] == "MSH^1^11" and err[3].startswith("202^Unsupported processing id") and err[5] == \
            "hl7.processing_id"
        assert msh_fields(outcome.response)[10] == f11


def test_empty_processing_id_is_production_and_answered_p():
    outcome = send(InMemoryStore(), with_msh(adult_order_set("E1"), f11=""))
    assert outcome.ack_code == "AA" and msh_fields(outcome.response)[10] == "P"
    assert msa(outcome.response)[1] == "AA"


def test_training_with_processing_mode_t_is_accepted():
    outcome = send(InMemoryStore(), with_msh(adult_order_set("E2"), f11="T^T"))
    assert outcome.ack_code == "AA" and msh_fields(outcome.response)[10] == "T^T"
