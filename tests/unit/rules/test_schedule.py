"""go.schedule: day 1 and day 14 of a 28-day course, at most 2 doses, in start order."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.builders import (
    UTC,
    adult_order_set,
    go_dose_message,
    go_order,
    judge_text,
    rules_of,
    run,
    standard_premeds,
)
from validator import InMemoryStore, load_protocol
from validator.history import HistoryEntry
from validator.model import Coded

PATIENT = "MRN55501^GENHOSP"
SENDER = "PHARMSYS^GENHOSP"


def schedule_errors(verdict) -> list:
    return [f for f in verdict.findings if f.rule == "go.schedule" and f.severity == "error"]


def result_rules(order: dict, severity: str = "error") -> set[str]:
    return rules_of(order, severity)


def go_doses_in_store(store: InMemoryStore) -> list[HistoryEntry]:
    return [h for h in store.orders_for(PATIENT) if h.protocol_order]


def prior_dose(start: datetime, placer: str = "ORD0001", protocol_id: str = "go-rr-9mg-d1-d14",
               protocol_order: bool = True) -> HistoryEntry:
    return HistoryEntry(
        patient_key=PATIENT, sender=SENDER, placer_number=placer, control_id="EARLIER",
        drug=Coded(code="1294580", text="gemtuzumab ozogamicin", system="RXNORM"),
        protocol_order=protocol_order, protocol_id=protocol_id if protocol_order else "", start=start,
    )


def day1_history() -> list[HistoryEntry]:
    return [prior_dose(datetime(2026, 12, 1, 10, 0, tzinfo=UTC))]


def dose_on(day: str, time: str = "100000", placer: str = "ORD2001") -> str:
    """One GO dose (plus its premeds and labs) on `day`, judged against a history."""
    return go_dose_message("S" + day, day, placer=placer, start_time=time)


# --- across messages, through the service -------------------------------------------------------

def test_day1_then_day14_across_two_messages_is_accepted():
    store = InMemoryStore()
    first = run(go_dose_message("C1", "20261201"), store)
    second = run(go_dose_message("C2", "20261214", placer="ORD2001"), store)
    assert first.ack_code == "AA", first.result["findings"]
    assert second.ack_code == "AA", second.result["findings"]
    assert "go.schedule" not in result_rules(second.result["orders"][0])
    assert [h.placer_number for h in go_doses_in_store(store)] == ["ORD1001", "ORD2001"]
    assert store.audit[-1].computed["ORD2001"]["course_day"] == 14
    assert store.audit[-1].computed["ORD2001"]["course_day1_date"] == "2026-12-01"
    assert store.audit[0].computed["ORD1001"]["course_day"] == 1


@pytest.mark.parametrize("day, course_day", [("20261208", 8), ("20261213", 13), ("20261215", 15)])
def test_second_dose_off_day14_is_refused(day, course_day):
    store = InMemoryStore()
    assert run(go_dose_message("C1", "20261201"), store).ack_code == "AA"
    outcome = run(go_dose_message("C2", day, placer="ORD2001"), store)
    go = outcome.result["orders"][0]
    assert go["order_control"] == "UA"
    messages = [f["message"] for f in go["findings"] if f["rule"] == "go.schedule"]
    assert len(messages) == 1
    assert f"is course day {course_day};" in messages[0]
    assert "dose 2 on day 14 (2026-12-14)" in messages[0]
    assert [h.placer_number for h in go_doses_in_store(store)] == ["ORD1001"]


def test_day8_message_names_both_days():
    judgement = judge_text(dose_on("20261208"), history=day1_history())
    [found] = schedule_errors(judgement.orders[0])
    assert found.message == (
        "GO dose on 2026-12-08 is course day 8; the protocol gives dose 2 on day 14 (2026-12-14)"
    )
    assert found.location.short() == "TQ1-7"
    assert judgement.orders[0].control == "UA"
    assert judgement.orders[0].computed["course_day"] == 8


def test_day14_at_any_time_of_day_is_day14():
    early = judge_text(dose_on("20261214", time="000000"), history=day1_history())
    late = judge_text(dose_on("20261214", time="235959"), history=day1_history())
    assert not schedule_errors(early.orders[0])
    assert not schedule_errors(late.orders[0])


def test_second_dose_on_day1_is_refused():
    judgement = judge_text(dose_on("20261201", time="160000"), history=day1_history())
    [found] = schedule_errors(judgement.orders[0])
    assert "course day 1;" in found.message and "day 14" in found.message


def test_third_dose_is_refused():
    history = day1_history() + [prior_dose(datetime(2026, 12, 14, 10, 0, tzinfo=UTC), "ORD0002")]
    for day, course_day in (("20261221", 21), ("20261228", 28)):  # the last day of the course too
        judgement = judge_text(dose_on(day), history=history)
        [found] = schedule_errors(judgement.orders[0])
        assert "would be dose 3" in found.message
        assert "at most 2 doses per course (days 1, 14)" in found.message
        assert f"course day {course_day})" in found.message
        assert judgement.orders[0].control == "UA"


def test_third_dose_through_the_service_is_refused_and_not_stored():
    store = InMemoryStore()
    assert run(go_dose_message("C1", "20261201"), store).ack_code == "AA"
    assert run(go_dose_message("C2", "20261214", placer="ORD2001"), store).ack_code == "AA"
    third = run(go_dose_message("C3", "20261221", placer="ORD3001"), store)
    assert "go.schedule" in result_rules(third.result["orders"][0])
    assert len(go_doses_in_store(store)) == 2


def test_dose_on_day1_plus_course_days_starts_a_new_course():
    history = day1_history() + [prior_dose(datetime(2026, 12, 14, 10, 0, tzinfo=UTC), "ORD0002")]
    judgement = judge_text(dose_on("20261229"), history=history)  # 2026-12-01 + 28 days
    verdict = judgement.orders[0]
    assert not schedule_errors(verdict)
    assert verdict.computed["course_day"] == 1
    assert verdict.computed["course_day1_date"] == "2026-12-29"


def test_new_course_through_the_service_then_its_day14():
    store = InMemoryStore()
    for control_id, day, placer in (("C1", "20261201", "ORD1001"), ("C2", "20261214", "ORD2001"),
                                    ("C3", "20261229", "ORD3001"), ("C4", "20270111", "ORD4001")):
        outcome = run(go_dose_message(control_id, day, placer=placer), store)
        assert "go.schedule" not in result_rules(outcome.result["orders"][0]), (day, outcome.result["findings"])
    assert store.audit[-1].computed["ORD4001"]["course_day"] == 14
    assert store.audit[-1].computed["ORD4001"]["course_day1_date"] == "2026-12-29"


def test_dose_earlier_than_latest_accepted_dose_is_refused():
    history = day1_history() + [prior_dose(datetime(2026, 12, 14, 10, 0, tzinfo=UTC), "ORD0002")]
    judgement = judge_text(dose_on("20261208"), history=history)
    [found] = schedule_errors(judgement.orders[0])
    assert "before the latest accepted dose" in found.message
    assert "ORD0002, 2026-12-14 10:00" in found.message


def test_dose_before_day1_is_refused():
    store = InMemoryStore()
    assert run(go_dose_message("C1", "20261201"), store).ack_code == "AA"
    earlier = run(go_dose_message("C2", "20261130", placer="ORD0900"), store)
    go = earlier.result["orders"][0]
    assert go["order_control"] == "UA"
    assert any("before the latest accepted dose" in f["message"] for f in go["findings"] if f["rule"] == "go.schedule")


def test_same_day_earlier_time_than_day1_is_refused():
    judgement = judge_text(dose_on("20261201", time="093000"), history=day1_history())
    [found] = schedule_errors(judgement.orders[0])
    assert "before the latest accepted dose" in found.message


def test_no_start_time_is_refused():
    text = adult_order_set(go=go_order(start="", end=""))
    verdict = judge_text(text).orders[0]
    [found] = schedule_errors(verdict)
    assert "no start time" in found.message
    assert found.location.short() == "TQ1-7"
    assert verdict.control == "UA"


def test_unreadable_start_time_is_refused():
    verdict = judge_text(adult_order_set(go=go_order(start="2026-12-01"))).orders[0]
    [found] = schedule_errors(verdict)
    assert "not a valid date and time" in found.message


def test_first_dose_is_day1():
    verdict = judge_text(adult_order_set()).orders[0]
    assert not schedule_errors(verdict)
    assert verdict.computed["course_day"] == 1
    assert verdict.computed["course_day1_date"] == "2026-12-01"


def test_a_dose_of_another_protocol_keeps_the_patient_in_its_course():
    history = [prior_dose(datetime(2026, 11, 25, 10, 0, tzinfo=UTC), "OTHER1", protocol_id="another-protocol")]
    errors = schedule_errors(judge_text(adult_order_set(), history=history).orders[0])
    assert "patient is in a course of another-protocol started 2026-11-25" in errors[0].message


def test_non_go_history_does_not_count():
    history = [
        prior_dose(datetime(2026, 11, 26, 10, 0, tzinfo=UTC), "PREMED1", protocol_order=False),
        prior_dose(datetime(2026, 11, 27, 10, 0, tzinfo=UTC), "NOSTART").model_copy(update={"start": None}),
    ]
    verdict = judge_text(adult_order_set(), history=history).orders[0]
    assert not schedule_errors(verdict)
    assert verdict.computed["course_day"] == 1


def test_history_out_of_order_is_sorted_by_start():
    history = [prior_dose(datetime(2026, 12, 14, 10, 0, tzinfo=UTC), "ORD0002")] + day1_history()
    judgement = judge_text(dose_on("20261221"), history=history)
    assert "would be dose 3" in schedule_errors(judgement.orders[0])[0].message


# --- several doses in one message -----------------------------------------------------------------

def _two_dose_message(second_day: str, *, second_first: bool = False) -> str:
    day1 = go_order("ORD1001") + standard_premeds()
    later = go_order("ORD1005", start=f"{second_day}100000", end=f"{second_day}140000", observations=[]) + \
        standard_premeds(first_start=f"{second_day}090000", steroid_start=f"{second_day}094000",
                         placers=("ORD1006", "ORD1007", "ORD1008"))
    orders = later + day1 if second_first else day1 + later
    return adult_order_set(go=orders, premeds=[])


@pytest.mark.parametrize("second_first", [False, True])
def test_both_doses_in_one_message_fit_the_schedule(second_first):
    judgement = judge_text(_two_dose_message("20261214", second_first=second_first))
    by_placer = {v.order.placer_number: v for v in judgement.orders}
    assert by_placer["ORD1001"].control == "OK", by_placer["ORD1001"].findings
    assert not schedule_errors(by_placer["ORD1001"])
    # Day 14 may be refused by go.wbc (no WBC within 72 h of its own start); never by go.schedule.
    assert not schedule_errors(by_placer["ORD1005"])
    assert by_placer["ORD1005"].computed["course_day"] == 14


def test_off_schedule_second_dose_in_one_message_keeps_day1_accepted():
    judgement = judge_text(_two_dose_message("20261208"))
    by_placer = {v.order.placer_number: v for v in judgement.orders}
    assert by_placer["ORD1001"].control == "OK"
    assert by_placer["ORD1005"].control == "UA"
    assert "is course day 8" in schedule_errors(by_placer["ORD1005"])[0].message
    assert [h.placer_number for h in judgement.new_orders if h.protocol_order] == ["ORD1001"]


def test_refused_dose_does_not_count_for_the_next_one():
    # Day 8 is refused; a dose on day 14 in the same message is still dose 2 of the course.
    day8 = go_order("ORD1009", start="20261208100000", end="20261208140000", observations=[])
    text = adult_order_set(go=go_order("ORD1001") + standard_premeds() + day8 + go_order(
        "ORD1005", start="20261214100000", end="20261214140000", observations=[]), premeds=[])
    by_placer = {v.order.placer_number: v for v in judge_text(text).orders}
    assert schedule_errors(by_placer["ORD1009"])
    assert not schedule_errors(by_placer["ORD1005"])
    assert by_placer["ORD1005"].computed["course_dose_number"] == 2


# --- time zone and protocol parameters --------------------------------------------------------------

def test_course_days_are_calendar_dates_in_the_service_time_zone():
    new_york = ZoneInfo("America/New_York")
    # 2026-12-15 02:00 UTC is 2026-12-14 21:00 in New York: day 14 there, day 15 in UTC.
    text = adult_order_set(go=go_order(start="20261215020000+0000", end="20261215060000+0000"))
    in_new_york = judge_text(text, history=day1_history(), tz=new_york).orders[0]
    in_utc = judge_text(text, history=day1_history(), tz=UTC).orders[0]
    assert not schedule_errors(in_new_york)
    assert in_new_york.computed["course_day"] == 14
    assert "course day 15" in schedule_errors(in_utc)[0].message


def _protocol_with(**schedule):
    protocol = load_protocol()
    return protocol.model_copy(update={"schedule": protocol.schedule.model_copy(update=schedule)})


def test_tolerance_days_is_inclusive():
    protocol = _protocol_with(tolerance_days=1)
    for day, refused in (("20261212", True), ("20261213", False), ("20261215", False), ("20261216", True)):
        verdict = judge_text(dose_on(day), history=day1_history(), protocol=protocol).orders[0]
        assert bool(schedule_errors(verdict)) is refused, day
    message = schedule_errors(judge_text(dose_on("20261216"), history=day1_history(), protocol=protocol)
                              .orders[0])[0].message
    assert "tolerance ±1 days" in message


def test_three_dose_protocol_days_1_4_7():
    protocol = _protocol_with(days=[1, 4, 7])
    history = [prior_dose(datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
               prior_dose(datetime(2026, 12, 4, 10, 0, tzinfo=UTC), "ORD0002")]
    day7 = judge_text(dose_on("20261207"), history=history, protocol=protocol).orders[0]
    assert not schedule_errors(day7)
    assert day7.computed["course_dose_number"] == 3
    day8 = judge_text(dose_on("20261208"), history=history, protocol=protocol).orders[0]
    assert "dose 3 on day 7 (2026-12-07)" in schedule_errors(day8)[0].message
    fourth = judge_text(dose_on("20261210"), protocol=protocol,
                        history=history + [prior_dose(datetime(2026, 12, 7, 10, 0, tzinfo=UTC), "ORD0003")])
    assert "at most 3 doses" in schedule_errors(fourth.orders[0])[0].message


def test_course_days_parameter_sets_the_new_course_boundary():
    protocol = _protocol_with(course_days=21)
    history = day1_history() + [prior_dose(datetime(2026, 12, 14, 10, 0, tzinfo=UTC), "ORD0002")]
    day21 = judge_text(dose_on("20261221"), history=history, protocol=protocol).orders[0]
    day22 = judge_text(dose_on("20261222"), history=history, protocol=protocol).orders[0]
    assert "would be dose 3" in schedule_errors(day21)[0].message
    assert not schedule_errors(day22)
    assert day22.computed["course_day1_date"] == "2026-12-22"

