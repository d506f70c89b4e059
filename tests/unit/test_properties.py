"""Property tests: mutated order sets always get an answer, and a wrong GO order is never accepted."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import hl7
from hypothesis import given
from hypothesis import strategies as st

from tests.budget import examples
from tests.builders import EXPECTED_MG, UTC, adult_order_set, go_order, run, standard_premeds
from validator import InMemoryStore, load_protocol, process_text

PROTOCOL = load_protocol()
BASE = adult_order_set("P0001")
SEGMENTS = BASE.rstrip("\r").split("\r")
SETTINGS = examples(50)  # x RXGATE_FUZZ_SCALE under make fuzz (tests/budget.py)


def answer(text: str):
    outcomes = process_text(text, InMemoryStore(), PROTOCOL, tz=UTC, received_at=datetime(2026, 12, 1, 8, 30, tzinfo=UTC))
    assert outcomes, "every input gets at least one answer"
    for outcome in outcomes:
        assert outcome.ack_code in ("AA", "AE", "AR")
        assert not any(f["rule"] == "rxgate.internal_error" for f in outcome.result["findings"]), outcome.result
        parsed = hl7.parse(outcome.response)
        assert str(parsed.segment("MSA")[1]) == outcome.ack_code
    return outcomes


@st.composite
def mutated(draw):
    segs = list(SEGMENTS)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "truncate", "bytes", "field"]))
        i = draw(st.integers(1, len(segs) - 1)) if len(segs) > 1 else 0
        if op == "drop" and len(segs) > 1:
            segs.pop(i)
        elif op == "dup":
            segs.insert(i, segs[i])
        elif op == "swap":
            j = draw(st.integers(1, len(segs) - 1))
            segs[i], segs[j] = segs[j], segs[i]
        elif op == "truncate":
            segs[i] = segs[i][: draw(st.integers(0, len(segs[i])))]
        elif op == "bytes":
            junk = draw(st.text(min_size=1, max_size=30))
            pos = draw(st.integers(0, len(segs[i])))
            segs[i] = segs[i][:pos] + junk + segs[i][pos:]
        elif op == "field":
            fields = segs[i].split("|")
            k = draw(st.integers(0, len(fields) - 1))
            fields[k] = draw(st.sampled_from(["", '""', "^^^", "~~", "abc", "-1", "1e9", "99999999999999", "\\X00\\"]))
            segs[i] = "|".join(fields)
    return "\r".join(segs) + "\r"


@SETTINGS
@given(mutated())
def test_structural_mutations_always_answered(text):
    answer(text)


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_after_msh_always_answered(data):
    from validator.er7 import decode

    answer(decode(b"MSH|^~\\&|A|B|C|D|20261201||RDE^O11|X|P|2.5.1\r" + data))


def go_verdict(text: str):
    outcome = run(text)
    go = next(o for o in outcome.result["orders"] if o["protocol_order"])
    return outcome.ack_code, go["order_control"]


@SETTINGS
@given(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=2))
def test_wrong_dose_never_accepted(dose):
    deviation = abs(dose - EXPECTED_MG) / EXPECTED_MG * 100
    ack, control = go_verdict(adult_order_set(go=go_order(dose=str(dose))))
    if deviation > Decimal("5.000001"):
        assert ack != "AA" and control == "UA"


@SETTINGS
@given(st.integers(min_value=1, max_value=1000))
def test_wrong_duration_never_accepted(minutes):
    start = datetime(2026, 12, 1, 10, 0)
    end = (start + timedelta(minutes=minutes)).strftime("%Y%m%d%H%M%S")
    ack, control = go_verdict(adult_order_set(go=go_order(duration=f"{minutes}^min", end=end)))
    if not 225 <= minutes <= 255:
        assert ack != "AA" and control == "UA"


@SETTINGS
@given(st.integers(min_value=-300, max_value=300), st.sampled_from(["first", "steroid"]))
def test_premedication_outside_window_never_accepted(shift_minutes, which):
    go_start = datetime(2026, 12, 1, 10, 0)
    if which == "first":
        before = 60 - shift_minutes
        start = (go_start - timedelta(minutes=before)).strftime("%Y%m%d%H%M%S")
        premeds = standard_premeds(first_start=start)
        inside = 30 <= before <= 90
    else:
        before = 20 - shift_minutes
        start = (go_start - timedelta(minutes=before)).strftime("%Y%m%d%H%M%S")
        premeds = standard_premeds(steroid_start=start)
        inside = 0 <= before <= 30
    ack, control = go_verdict(adult_order_set(premeds=premeds))
    if not inside:
        assert ack != "AA" and control == "UA"
