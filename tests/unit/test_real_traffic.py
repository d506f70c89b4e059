"""Issue 13 core: the redelivery key, processing ids, ERR-3 205/202 (docs/interfaces.md §3, docs/protocol.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import adult_order_set, go_dose_message, msa, rules_of
from validator import InMemoryStore, load_protocol, process_text
from validator.er7 import Encoding, escape, redelivery_form, unescape
from validator.response import MSA3_MAX, msa_text, to_ascii

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


# --- the same order, sent again ------------------------------------------------------------------------


def test_the_same_order_under_a_new_control_id_is_ok_go_resent_and_counted_once():
    store = InMemoryStore()
    first = send(store, go_dose_message("OR1", "20261201"))
    again = send(store, with_msh(go_dose_message("OR2", "20261201"), f7="20261201091000"))
    assert first.ack_code == "AA" and again.ack_code == "AA" and not again.redelivered
    assert {o["order_control"] for o in again.result["orders"]} == {"OK"}
    resent = [f for f in again.result["findings"] if f["rule"] == "go.resent"]
    assert len(resent) == 4 and all("OR1" in f["message"] and f["severity"] == "info" for f in resent)
    assert "go.resent" not in again.response  # info: JSON and audit only, never an ERR
    course = store.orders["MRN55501^GENHOSP"]
    assert len(course) == 4 and {e.control_id for e in course} == {"OR1"}
    # the next dose of the course is judged on one counted dose: day 14 is accepted as the second dose
    day14 = send(store, go_dose_message("OR3", "20261214", placer="ORD2001"))
    assert day14.ack_code == "AA", rules_of(day14.result)
    assert store.audit[-1].computed["ORD2001"]["course_day"] == 14


def test_the_same_identity_with_other_content_is_go_duplicate_order():
    store = InMemoryStore()
    send(store, go_dose_message("DO1", "20261201"))
    other = send(store, go_dose_message("DO2", "20261201", start_time="110000"))
    assert other.ack_code == "AE"
    go = other.result["orders"][0]
    assert go["order_control"] == "UA" and "go.duplicate_order" in rules_of(go)
    assert "change it with XO or cancel it" in other.response
    assert len([e for e in store.orders["MRN55501^GENHOSP"] if e.protocol_order]) == 1


def test_resend_recognition_normalises_amounts_units_and_instants():
    store = InMemoryStore()
    send(store, go_dose_message("NM1", "20261201"))
    text = go_dose_message("NM2", "20261201").replace("|15.2||mg^milligram^UCUM", "|15.20||MG^milligram^UCUM")
    text = text.replace("TQ1|1|||||240^min|20261201100000|", "TQ1|1|||||240^min|20261201100000+0000|")
    again = send(store, text)
    assert again.ack_code == "AA" and "go.resent" in rules_of(again.result["orders"][0], "info")


def test_a_training_copy_of_an_order_is_not_a_resend_of_the_production_one():
    store = InMemoryStore()
    send(store, go_dose_message("PT1", "20261201"))
    training = send(store, with_msh(go_dose_message("PT2", "20261201"), f11="T"))
    assert training.ack_code == "AA" and "go.resent" not in rules_of(training.result["orders"][0], "info")


# --- rejected messages keep what could be read -------------------------------------------------------------


def test_ar_keeps_patient_sender_and_control_id_when_pid3_was_readable():
    store = InMemoryStore()
    outcome = send(store, adult_order_set("AR1", version="2.9"))
    assert outcome.ack_code == "AR" and outcome.result["patient_id"] == "MRN55501"
    [record] = store.audit
    assert (record.patient_key, record.sender, record.control_id) == ("MRN55501^GENHOSP", "PHARMSYS^GENHOSP", "AR1")
    assert store.orders == {}  # a rejected message adds nothing to the course


def test_duplicate_control_id_ar_keeps_the_patient_too():
    store = InMemoryStore()
    send(store, adult_order_set("AR2"))
    other = send(store, adult_order_set("AR2", mrn="MRN777"))
    assert other.ack_code == "AR" and other.result["patient_id"] == "MRN777"
    assert store.audit[-1].patient_key == "MRN777^GENHOSP"


def test_ar_without_a_pid_has_no_patient():
    outcome = send(InMemoryStore(), "MSH|^~\\&|A|B|C|D|20261201083000||RDE^O11^RDE_O11|N1|P|2.9\r")
    assert outcome.ack_code == "AR" and outcome.result["patient_id"] is None


# --- faithful answers ---------------------------------------------------------------------------------------



SUPERSCRIPT_DIGITS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
PLAIN = str.maketrans(SUPERSCRIPT_DIGITS, "0123456789")


def test_ascii_forms_keep_the_meaning():
    assert to_ascii("WBC 35 × 10⁹/L ≥ 30 × 10⁹/L") == "WBC 35 x 10^9/L >= 30 x 10^9/L"
    assert to_ascii("9 mg/m² · 1.7 m², 5 µg, 10⁻³") == "9 mg/m2  1.7 m2, 5 ug, 10^-3"
    assert to_ascii("10⁹/L", exponent="*") == "10*9/L"


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc (1)[]×≥µ²" + SUPERSCRIPT_DIGITS + " ", max_size=40),
       st.integers(min_value=0, max_value=10**6), st.text(alphabet=SUPERSCRIPT_DIGITS, min_size=1, max_size=3))
def test_property_an_exponent_never_becomes_digits_of_the_number(text, number, exponent):
    answer = to_ascii(f"{text} {number}{exponent}/L {text}")
    assert answer.isascii()
    assert f" {number}^{exponent.translate(PLAIN)}/L" in answer


def open_brackets(text: str) -> int:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0) if ch in "()" and (ch == "(" or depth > 0) else 0
    return depth


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n"), max_size=300))
def test_property_msa3_is_at_most_80_characters_and_never_ends_inside_a_bracket(reason):
    cut = msa_text(reason)
    assert len(cut) <= MSA3_MAX
    if len(escape(reason)) <= MSA3_MAX:
        assert cut == escape(reason)
        return
    assert cut.endswith("...")
    head = unescape(cut[:-3], Encoding())
    assert escape(head) == cut[:-3]  # never cut inside an escape sequence
    assert reason.startswith(head) and open_brackets(head) == 0  # never inside a bracket


def test_msa3_cut_at_a_word_boundary_outside_brackets():
    reason = ("go.wbc: WBC 35 x 10^9/L is at or above 30 x 10^9/L and no cytoreduction is documented "
              "(hydroxyurea or leukapheresis within 14 days before the GO start)")
    cut = msa_text(reason)
    assert cut.endswith(" no cytoreduction...") and len(cut) <= 80 and "(" not in cut
    assert "10\\S\\9/L" in cut  # the exponent escaped, never a raw ^ that would split MSA-3


def pid_named(text: str, name: str) -> str:
    return text.replace("DOE^JANE^A", name)


def test_utf8_declared_answers_keep_names_and_declare_msh18():
    text = with_msh(pid_named(adult_order_set("U8"), "MÜLLER^JÜRGEN"), f18="UNICODE UTF-8")
    outcome = send(InMemoryStore(), text)
    assert "PID|1||MRN55501^^^GENHOSP^MR||MÜLLER^JÜRGEN" in outcome.response
    assert msh_fields(outcome.response)[17] == "UNICODE UTF-8"
    ascii_answer = send(InMemoryStore(), pid_named(adult_order_set("U9"), "MÜLLER^JÜRGEN")).response
    assert ascii_answer.isascii() and "MULLER^JURGEN" in ascii_answer and len(msh_fields(ascii_answer)) == 12


def test_utf8_is_not_declared_below_v25():
    text = with_msh(pid_named(adult_order_set("U7", version="2.4"), "MÜLLER^JÜRGEN"), f18="UNICODE UTF-8")
    assert send(InMemoryStore(), text).response.isascii()


def test_response_msh3_to_6_reencoded_with_the_responses_own_encoding_characters():
    custom = adult_order_set("CE1").replace("MSH|^~\\&|PHARMSYS|GENHOSP|RXGATE|GENHOSP|",
                                            "MSH|*~\\&|PHARMSYS*SITE A|GENHOSP*1.2.3*ISO|RXGATE|GENHOSP|", 1)
    # the rest of the message is written with ^ too; only the MSH fields matter here
    outcome = send(InMemoryStore(), custom)
    fields = msh_fields(outcome.response)
    assert fields[1] == "^~\\&"
    assert fields[4] == "PHARMSYS^SITE A" and fields[5] == "GENHOSP^1.2.3^ISO"
    assert (fields[2], fields[3]) == ("RXGATE", "GENHOSP")
