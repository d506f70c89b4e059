"""go.eligibility: age in completed years at the planned GO start; pediatric below 18."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from tests.builders import UTC, adult_order_set, go_order, judge_text, message, msh, pv1, standard_premeds
from validator import load_protocol
from validator.er7 import split_messages
from validator.reader import read_order_set
from validator.rules.base import DoseContext
from validator.rules.eligibility import age_in_years


def eligibility_errors(verdict) -> list:
    return [f for f in verdict.findings if f.rule == "go.eligibility" and f.severity == "error"]


def go_verdict(text: str, **kwargs):
    return judge_text(text, **kwargs).orders[0]


def test_two_years_old_on_the_start_date_is_accepted():
    verdict = go_verdict(adult_order_set(dob="20241201"))  # GO starts 2026-12-01
    assert not eligibility_errors(verdict)
    assert verdict.computed["age_years"] == 2
    assert verdict.control == "OK", verdict.findings


def test_the_day_before_the_second_birthday_is_refused():
    verdict = go_verdict(adult_order_set(dob="20241202"))
    [found] = eligibility_errors(verdict)
    assert verdict.control == "UA"
    assert found.message == "patient is 1 year old on 2026-12-01; the protocol requires at least 2 years"
    assert found.location.short() == "PID-7"
    assert found.values["age_years"] == 1


def test_birth_time_in_pid7_is_read_as_a_date():
    verdict = go_verdict(adult_order_set(dob="202412010830"))
    assert not eligibility_errors(verdict)
    assert verdict.computed["age_years"] == 2


def test_age_uses_the_start_date_in_the_service_time_zone():
    # 2026-12-01 03:00 UTC is still 2026-11-30 in New York: the day before the 2nd birthday there.
    text = adult_order_set(dob="20241201", go=go_order(start="20261201030000+0000", end="20261201070000+0000"))
    assert not eligibility_errors(go_verdict(text, tz=UTC))
    in_new_york = go_verdict(text, tz=ZoneInfo("America/New_York"))
    assert "1 year old on 2026-11-30" in eligibility_errors(in_new_york)[0].message


@pytest.mark.parametrize("dob, age", [("20090412", 17), ("20081202", 17), ("20081201", 18)])
def test_pediatric_below_18(dob, age):
    verdict = go_verdict(adult_order_set(dob=dob))
    assert not eligibility_errors(verdict)
    assert verdict.computed["age_years"] == age
    order_set = read_order_set(split_messages(adult_order_set(dob=dob)).messages[0], UTC)
    ctx = DoseContext(order_set=order_set, dose=order_set.orders[0], protocol=load_protocol(), history=[],
                      observations=[], tz=UTC, received_at=order_set.message_time,
                      age_years=age_in_years(order_set.patient.birth_date, order_set.orders[0].timing.start, UTC))
    assert ctx.pediatric is (age < 18)


def test_partial_birth_date_is_refused():
    verdict = go_verdict(adult_order_set(dob="196604"))
    [found] = eligibility_errors(verdict)
    assert "'196604' is partial or invalid" in found.message
    assert "minimum 2 years" in found.message
    assert verdict.control == "UA"


def test_invalid_birth_date_is_refused():
    [found] = eligibility_errors(go_verdict(adult_order_set(dob="19661341")))
    assert "'19661341'" in found.message


def test_missing_birth_date_is_refused():
    verdict = go_verdict(adult_order_set(dob=""))
    [found] = eligibility_errors(verdict)
    assert "no birth date (PID-7)" in found.message
    assert found.location.short() == "PID-7"
    assert verdict.control == "UA"


def test_birth_after_the_start_is_refused():
    assert eligibility_errors(go_verdict(adult_order_set(dob="20270101")))


def test_no_start_leaves_the_finding_to_go_schedule():
    verdict = go_verdict(adult_order_set(dob="20250601", go=go_order(start="", end="")))
    assert not eligibility_errors(verdict)
    assert "go.schedule" in {f.rule for f in verdict.findings if f.severity == "error"}


def test_protocol_minimum_age_is_a_parameter():
    protocol = load_protocol()
    protocol = protocol.model_copy(update={"eligibility": protocol.eligibility.model_copy(
        update={"min_age_years": 18})})
    assert eligibility_errors(go_verdict(adult_order_set(dob="20081202"), protocol=protocol))
    assert not eligibility_errors(go_verdict(adult_order_set(dob="20081201"), protocol=protocol))


def test_each_go_order_is_judged_at_its_own_start():
    # Born 2024-12-10: 1 year old on day 1 (2026-12-01), 2 years old on day 14 (2026-12-14).
    day14 = go_order("ORD1005", start="20261214100000", end="20261214140000", observations=[])
    text = message(msh(), "PID|1||MRN55501^^^GENHOSP^MR||DOE^JANE^A||20241210|F", pv1(),
                   go_order("ORD1001"), standard_premeds(), day14)
    by_placer = {v.order.placer_number: v for v in judge_text(text).orders}
    assert eligibility_errors(by_placer["ORD1001"])
    assert not eligibility_errors(by_placer["ORD1005"])
    assert by_placer["ORD1005"].computed["age_years"] == 2
