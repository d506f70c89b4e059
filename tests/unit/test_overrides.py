"""Overrides with a reason (docs/protocol.md, "Overrides with a reason")."""

from __future__ import annotations

import pytest

from tests.builders import adult_order_set, go_order, judge_text, rules_of, standard_premeds
from validator import ProtocolError, load_protocol
from validator.protocol import BUNDLED_DIR, parse_protocol

SEED_FILE = BUNDLED_DIR / "go-rr-9mg-d1-d14.yaml"
NOTE = "NTE|1||RXGATE-OVERRIDE go.dose: weight from today's bed scale, BSA rechecked by the ward"


def _protocol(overridable=("go.dose", "go.premedication"), verifiers=("PHARM17",)):
    text = SEED_FILE.read_text() + f"\noverridable: [{', '.join(overridable)}]\n" \
        f"override_verifiers: [{', '.join(verifiers)}]\n"
    return parse_protocol(text.encode(), "site.yaml")


def _overdosed(note: str | None = NOTE, *, verifier: str = "PHARM17^SMITH^ANNA", dose: str = "16.9",
               premeds: list[str] | None = None, dob: str = "19660412") -> str:
    segs = go_order(dose=dose)
    segs[0] = segs[0] + f"||{verifier}"  # ORC-10 empty, ORC-11 verified by
    if note is not None:
        segs.insert(2, note)  # directly after the RXE
    return adult_order_set(go=segs, premeds=premeds, dob=dob)


def _go(judgement):
    return judgement.orders[0]


def test_the_schema_refuses_a_rule_that_cannot_be_overridden():
    for rule in ("go.eligibility", "go.cd33", "go.schedule", "go.patient", "go.orderset", "hl7.structure"):
        with pytest.raises(ProtocolError, match="overridable"):
            _protocol(overridable=(rule,))
    assert _protocol().overridable == ["go.dose", "go.premedication"]


def test_the_bundled_protocols_mark_nothing_overridable():
    assert load_protocol().overridable == [] and load_protocol().override_verifiers == []


def test_an_override_turns_the_rules_errors_into_warnings():
    judgement = judge_text(_overdosed(), protocol=_protocol())
    verdict = _go(judgement)
    assert verdict.control == "OK", [f.message for f in verdict.findings]
    [overridden] = [f for f in verdict.findings if f.rule == "go.dose"]
    assert overridden.severity == "warning"
    assert overridden.message.startswith(
        "overridden by PHARM17: weight from today's bed scale, BSA rechecked by the ward — dose 16.9 mg")
    assert verdict.computed["overrides"] == [{"rule": "go.dose", "verified_by": "PHARM17",
                                             "reason": "weight from today's bed scale, BSA rechecked by the ward"}]


def test_without_the_override_the_order_is_refused():
    assert _go(judge_text(_overdosed(None), protocol=_protocol())).control == "UA"


@pytest.mark.parametrize("note, verifier, says", [
    ("NTE|1||RXGATE-OVERRIDE go.cd33: lab result by phone", "PHARM17", "not overridable"),
    (NOTE, "NURSE9^DOE", "override_verifiers"),
    (NOTE, "", "ORC-11"),
    ("NTE|1||RXGATE-OVERRIDE go.dose:", "PHARM17", "reason"),
    ("NTE|1||RXGATE-OVERRIDE go.dose weight rechecked", "PHARM17", "RXGATE-OVERRIDE <rule id>: <reason>"),
])
def test_a_bad_override_is_an_error_and_the_order_is_refused(note, verifier, says):
    verdict = _go(judge_text(_overdosed(note, verifier=verifier), protocol=_protocol()))
    assert verdict.control == "UA" and "go.override" in rules_of(verdict)
    assert says in next(f.message for f in verdict.findings if f.rule == "go.override")
    assert "go.dose" in rules_of(verdict)  # not overridden


def test_an_override_under_a_protocol_that_marks_nothing_is_an_error():
    verdict = _go(judge_text(_overdosed()))
    assert verdict.control == "UA" and "go.override" in rules_of(verdict)


def test_an_override_note_must_follow_the_rxe_directly():
    text = _overdosed(None).replace("RXR|IV^Intravenous^HL70162\r", "RXR|IV^Intravenous^HL70162\r" + NOTE + "\r", 1)
    verdict = _go(judge_text(text, protocol=_protocol()))
    assert verdict.control == "UA" and "go.dose" in rules_of(verdict)


def test_an_override_never_accepts_a_premed_above_its_maximum():
    from tests.builders import METHYLPRED, premed_order

    # a 10-year-old's acetaminophen: 15 mg/kg x 62 kg, max 650 mg
    premeds = standard_premeds(acetaminophen="700", diphenhydramine="50")
    note = "NTE|1||RXGATE-OVERRIDE go.premedication: as agreed with the attending"
    verdict = _go(judge_text(_overdosed(note, dose="15.2", premeds=premeds, dob="20160412"), protocol=_protocol()))
    assert verdict.control == "UA", [f.message for f in verdict.findings]
    assert "go.premedication" in rules_of(verdict)
    _ = METHYLPRED, premed_order


def test_an_override_does_not_waive_the_premeds_of_a_refused_dose():
    note = "NTE|1||RXGATE-OVERRIDE go.dose: rechecked"
    judgement = judge_text(_overdosed(note, verifier="NURSE9"), protocol=_protocol())
    assert all(v.control == "UA" for v in judgement.orders)
    assert "go.orderset" in rules_of(judgement.orders[1])
