"""The ER7 reader: separators, framing, escapes, encodings, versions, order groups."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.builders import UTC, adult_order_set, msh
from validator.er7 import Encoding, Segment, normalise, split_messages, unescape
from validator.errors import MessageRejected
from validator.reader import read_order_set


def read(text: str):
    return read_order_set(split_messages(text).messages[0], UTC)


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_any_segment_separator(sep):
    order_set = read(adult_order_set().replace("\r", sep))
    assert len(order_set.orders) == 4
    assert order_set.orders[0].amount == Decimal("15.2")
    assert len(order_set.observations) == 7


def test_mllp_and_bom_are_ignored():
    split = split_messages("\ufeff\x0b" + adult_order_set() + "\x1c\r")
    assert len(split.messages) == 1 and not split.junk_before_first


def test_new_message_at_each_msh_and_batch_envelope_dropped():
    text = "FHS|^~\\&\rBHS|^~\\&\r" + adult_order_set("A") + adult_order_set("B") + "BTS|2\rFTS|1\r"
    split = split_messages(text)
    assert [m.lines[0].split("|")[9] for m in split.messages] == ["A", "B"]
    assert not any(line.startswith(("BTS", "FTS")) for m in split.messages for line in m.lines)


def test_broken_line_continues_previous_segment():
    text = adult_order_set().replace("DOE^JANE^A", "DOE^JA\nNE^A")
    order_set = read(text)
    assert "DOE^JANE^A" in order_set.pid_line


def test_escape_sequences():
    enc = Encoding()
    assert unescape(r"a\F\b\S\c\T\d\R\e\E\f", enc) == "a|b^c&d~e\\f"
    assert unescape("\\X41\\", enc) == "A"
    assert unescape(r"line\.br\two", enc) == "line\ntwo"


def test_custom_encoding_characters():
    text = adult_order_set().replace("|", "!").replace("^", "$").replace("MSH!$~\\&!", "MSH!$~\\&!")
    order_set = read(text)
    assert order_set.orders[0].drug.code == "1294580"
    assert order_set.orders[0].drug.text == "gemtuzumab ozogamicin"
    # echoed segments are re-encoded with the standard characters
    assert order_set.orders[0].echo_lines[0].startswith("RXE||1294580^gemtuzumab ozogamicin^RXNORM|")


def test_patient_identifier_prefers_mr():
    text = adult_order_set().replace("PID|1||MRN55501^^^GENHOSP^MR", "PID|1||SSN1^^^SSA^SS~MRN9^^^GENHOSP^MR")
    assert read(text).patient.id == "MRN9"


def test_partial_birth_date_is_not_a_date():
    assert read(adult_order_set(dob="196604")).patient.birth_date is None


def test_timestamp_offsets_are_honoured():
    order_set = read(adult_order_set().replace("|20261201100000|20261201140000", "|20261201100000-0500|20261201140000-0500"))
    start = order_set.orders[0].timing.start
    assert start.utcoffset().total_seconds() == -5 * 3600
    assert start.astimezone(UTC).hour == 15


def test_v23_timing_from_orc7():
    lines = [
        msh("V23", version="2.3", message_type="ORM^O01"),
        "PID|1||MRN1^^^H^MR||DOE^J||19660412|F",
        "ORC|NW|P1||G1|||^^M240^20261201100000^20261201140000",
        "RXO|1294580^gemtuzumab ozogamicin^RXNORM|15.2||mg",
    ]
    order = read("\r".join(lines) + "\r").orders[0]
    assert order.timing.start.hour == 10
    assert order.timing.service_duration.value == 240 and order.timing.service_duration.unit.code == "min"
    assert order.amount == Decimal("15.2") and order.amount_units.code == "mg"
    assert order.route is None


@pytest.mark.parametrize("version,code", [("2.2", "203"), ("2.9", "203"), ("", "203")])
def test_unsupported_versions(version, code):
    with pytest.raises(MessageRejected) as exc:
        read(adult_order_set(version=version))
    assert exc.value.code == code


@pytest.mark.parametrize("mtype,code", [("ADT^A01", "200"), ("RDS^O13", "200"), ("RDE^O99", "201"), ("", "101")])
def test_unsupported_types(mtype, code):
    text = adult_order_set().replace("RDE^O11^RDE_O11", mtype)
    with pytest.raises(MessageRejected) as exc:
        read(text)
    assert exc.value.code == code


def test_no_order_group_is_101():
    text = msh() + "\rPID|1||MRN1^^^H^MR||DOE^J||19660412|F\r"
    with pytest.raises(MessageRejected) as exc:
        read(text)
    assert exc.value.code == "101"


def test_observation_numeric_forms():
    from tests.builders import CD33, go_order, obx

    obs = [obx(1, CD33, ">^90", "%", value_type="SN"), obx(2, CD33, "85 %", "", value_type="ST"),
           obx(3, CD33, "30-40", "%", value_type="ST"), obx(4, CD33, "positive", "", value_type="ST")]
    order_set = read(adult_order_set(go=go_order(observations=obs)))
    q = [o.quantity for o in order_set.observations]
    assert (q[0].comparator, q[0].value) == (">", Decimal("90"))
    assert q[1].value == Decimal("85") and q[1].unit.code == "%"
    assert q[2].value == Decimal("30")
    assert q[3] is None


def test_normalise_for_message_key():
    assert normalise("\x0bMSH|a\r\nPID|b\n\n  \x1c\r") == "MSH|a\rPID|b"


def test_segment_component_access_handles_nulls():
    seg = Segment("PID", ["PID", "1", "", '""'], Encoding())
    assert seg.component(3) == "" and seg.component(99) == ""


def test_limits_answer_ar():
    from tests.builders import run
    from validator import InMemoryStore, load_protocol, process_text
    from validator.reader import Limits

    big = adult_order_set("BIG").replace("DOE^JANE^A", "DOE^" + "J" * 2_000_000)
    outcome = run(big)
    assert outcome.ack_code == "AR" and outcome.result["findings"][0]["rule"] == "hl7.size"
    assert "bytes exceeds" in outcome.result["findings"][0]["message"]
    many = adult_order_set("MANY").rstrip("\r") + "\r" + "NTE|1||x\r" * 6000
    assert run(many).result["findings"][0]["rule"] == "hl7.size"
    reps = adult_order_set("REP").replace("MRN55501^^^GENHOSP^MR", "~".join(["X"] * 5000))
    found = run(reps).result["findings"][0]
    assert found["rule"] == "hl7.size" and found["location"] == "PID-3"
    small = Limits(max_message_bytes=100)
    tiny = process_text(adult_order_set("T"), InMemoryStore(), load_protocol(), tz=UTC, limits=small)[0]
    assert tiny.ack_code == "AR"


def test_amount_with_repetitions_or_components_is_not_a_number():
    from tests.builders import go_order, rules_of, run

    for dose in ("15.2~99", "15.2^mg"):
        outcome = run(adult_order_set(go=go_order(dose=dose)))
        go = outcome.result["orders"][0]
        assert go["order_control"] == "UA" and "go.dose" in rules_of(go), dose
    outcome = run(adult_order_set(go=go_order(duration="240^min~999^min")))
    assert "go.infusion" in rules_of(outcome.result["orders"][0])


def test_structured_numeric_forms_that_are_not_a_plain_number():
    from tests.builders import WBC, go_order, obx, rules_of, run, standard_observations

    def wbc_outcome(value: str, value_type: str = "SN"):
        obs = standard_observations()
        obs[2] = obx(3, WBC, value, "10*9/L^10*9/L^UCUM", value_type=value_type)
        return run(adult_order_set(go=go_order(observations=obs))).result["orders"][0]

    assert "go.wbc" in rules_of(wbc_outcome("^25^+"))  # 25 or more: may be >= 30, cytoreduction needed
    assert "go.wbc" in rules_of(wbc_outcome("^1^:^10"))  # a ratio is not a count
    assert "go.wbc" in rules_of(wbc_outcome("8~45", "NM"))  # two values: which one is meant is unknown
    assert wbc_outcome("^8.4").get("order_control") == "OK"
    order_set = read(adult_order_set(go=go_order(observations=[obx(1, WBC, "^25^+", "", value_type="SN")])))
    assert order_set.observations[0].quantity.comparator == ">="


def test_unreadable_tq_duration_is_refused_not_skipped():
    from tests.builders import rules_of, run

    for duration in ("INDEF", "X240"):
        lines = [
            msh("V23D", version="2.3", message_type="ORM^O01"),
            "PID|1||MRN1^^^H^MR||DOE^J||19660412|F",
            f"ORC|NW|P1||G1|||^^{duration}^20261201100000^20261201140000",
            "RXO|1294580^gemtuzumab ozogamicin^RXNORM|15.2||mg",
        ]
        go = run("\r".join(lines) + "\r").result["orders"][0]
        assert go["order_control"] == "UA" and "go.infusion" in rules_of(go), duration
        assert any(f["rule"] == "go.infusion" and f["location"] == "ORC-7" for f in go["findings"]), duration
