"""Spec review (docs/protocol.md, "Checks on each GO order", "How values are chosen"): one test per spec sentence found
diverging."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tests.builders import (
    GO_START,
    adult_order_set,
    go_order,
    judge_text,
    rules_of,
    standard_premeds,
)

UTC = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")


def test_units_matched_on_the_identifier_of_rxe5_else_its_text():
    """"Units: matched case-insensitively on the identifier of OBX-6 / RXE-5, else its text."

    RXE-5 `mg^mg/m2`: the identifier says mg, so 9 is 9 mg, far below 9 mg/m² × 1.69 m² = 15.2 mg.
    The text must not turn it into 9 mg/m² (which would be accepted).
    """
    verdict = judge_text(adult_order_set(go=go_order(dose="9", units="mg^mg/m2"))).orders[0]
    assert verdict.control == "UA"
    assert "go.dose" in rules_of(verdict)


def test_units_text_used_when_the_identifier_is_absent():
    verdict = judge_text(adult_order_set(go=go_order(dose="9", units="^mg/m2"))).orders[0]
    assert verdict.control == "OK", verdict.findings


def test_units_identifier_per_m2_with_a_mass_text_is_per_m2():
    verdict = judge_text(adult_order_set(go=go_order(dose="9", units="mg/m2^milligram"))).orders[0]
    assert verdict.control == "OK", verdict.findings
    refused = judge_text(adult_order_set(go=go_order(dose="15.2", units="mg/m2^milligram"))).orders[0]
    assert "go.dose" in rules_of(refused)


def test_an_rxe4_maximum_that_differs_from_rxe3_must_pass_too_unreadable_is_refused():
    """"an RXE-4 maximum that differs from RXE-3 must pass too".

    Ambiguous for an RXE-4 that is sent but is not a number (`abc`, `20~30`): it cannot be shown to
    pass, so the refusing reading is taken.
    """
    for sent in ("abc", "20~30"):
        verdict = judge_text(adult_order_set(go=go_order(amount_max=sent))).orders[0]
        assert verdict.control == "UA", sent
        assert "go.dose" in rules_of(verdict)
    same = judge_text(adult_order_set(go=go_order(amount_max="15.2"))).orders[0]
    assert same.control == "OK", same.findings


def test_premedications_of_a_go_order_refused_for_its_order_control_are_refused_too():
    """"The premedications that belong to a refused GO dose are refused too, with go.orderset".

    A GO order with an unprocessed ORC-1 (`SC`) is refused (`hl7.order_control`); its premeds must
    not be accepted (and stored as course history) on their own.
    """
    judgement = judge_text(adult_order_set(go=go_order(control="SC")))
    go, *premeds = judgement.orders
    assert go.control == "UA"
    assert [p.control for p in premeds] == ["UA", "UA", "UA"]
    assert all("go.orderset" in rules_of(p) for p in premeds)
    assert judgement.new_orders == []


def test_premedications_stay_accepted_when_their_go_dose_is_accepted():
    judgement = judge_text(adult_order_set())
    assert [v.control for v in judgement.orders] == ["OK"] * 4


def test_age_on_the_date_of_the_planned_start_as_given_with_its_offset():
    """"age in completed years on the date of the planned start" + "timestamps with a UTC offset are honoured".

    Ambiguous when the offset date and the service-zone date differ: a start 2026-12-01 23:30-05:00 is
    2026-12-02 in UTC. A patient born 2024-12-02 is 1 year old on the sender's date and 2 on the UTC
    date. The refusing reading takes the lower age (the patient is < 2 on one of the two dates).
    """
    go = go_order(start="20261201233000-0500", end="20261202033000-0500")
    premeds = standard_premeds(first_start="20261201223000-0500", steroid_start="20261201231000-0500")
    for tz in (UTC, NEW_YORK):
        verdict = judge_text(adult_order_set(dob="20241202", go=go, premeds=premeds), tz=tz).orders[0]
        assert "go.eligibility" in rules_of(verdict), tz
    ok = judge_text(adult_order_set(dob="20241201", go=go, premeds=premeds), tz=UTC).orders[0]
    assert "go.eligibility" not in rules_of(ok)


def test_age_without_offset_uses_the_service_zone_date():
    verdict = judge_text(adult_order_set(dob=GO_START[:8].replace("2026", "2024"))).orders[0]
    assert "go.eligibility" not in rules_of(verdict)
