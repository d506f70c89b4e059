"""Exact instants in every window and limit, on both daylight-saving nights of America/New_York
(docs/protocol.md, "Times"): 2026-03-08 02:00 EST -> 03:00 EDT (02:xx is skipped) and
2026-11-01 02:00 EDT -> 01:00 EST (01:xx is repeated). Times below are wall-clock times sent
without an offset, read in the service's zone."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.builders import (
    ACETAMINOPHEN,
    DIPHENHYDRAMINE,
    HYDROXYUREA,
    METHYLPRED,
    WBC,
    adult_order_set,
    go_order,
    judge_text,
    observations_with,
    obx,
    premed_order,
    rules_of,
)
from validator.hl7time import parse_moment

NY = ZoneInfo("America/New_York")
SPRING = "20260308"  # 02:00-02:59 does not exist
FALL = "20261101"  # 01:00-01:59 happens twice


def _stamp(value: datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S")


def dose(go_start: str, *, go_end: str = "", duration: str = "240^min", acetaminophen: str = "",
         diphenhydramine: str = "", steroid: str = "", labs: str = "", cd33: str = "", msh_time: str = "",
         extra_observations: list[str] | None = None, extra_orders: list[str] | None = None):
    """Judge the adult example with its times replaced; unset premed and lab times keep their
    usual distance from the GO start (60 min, 20 min; labs the day before), computed on the wall clock."""
    start = datetime.strptime(go_start, "%Y%m%d%H%M%S")
    acetaminophen = acetaminophen or _stamp(start - timedelta(minutes=60))
    diphenhydramine = diphenhydramine or acetaminophen
    steroid = steroid or _stamp(start - timedelta(minutes=20))
    labs = labs or _stamp(start - timedelta(hours=28))
    cd33 = cd33 or _stamp(start - timedelta(days=16))
    observations = observations_with(body_time=labs, lab_time=labs, cd33_time=cd33, add=extra_observations)
    premeds = (premed_order("P-A", ACETAMINOPHEN, "650", start=acetaminophen)
               + premed_order("P-D", DIPHENHYDRAMINE, "50", route="IV^Intravenous^HL70162", start=diphenhydramine)
               + premed_order("P-M", METHYLPRED, "62", route="IV^Intravenous^HL70162", start=steroid))
    text = adult_order_set(go=go_order(start=go_start, end=go_end, duration=duration, observations=observations),
                           premeds=premeds, extra_orders=extra_orders,
                           time=msh_time or _stamp(start - timedelta(hours=1, minutes=30)))
    received = datetime.strptime(msh_time or _stamp(start - timedelta(hours=1)), "%Y%m%d%H%M%S")
    return judge_text(text, tz=NY, received_at=received.replace(tzinfo=NY))


def go_verdict(judgement):
    return judgement.orders[0]


def messages(verdict) -> str:
    return " | ".join(f.message for f in verdict.findings)


# --- the instants themselves ------------------------------------------------------------------------


def test_a_wall_clock_time_gets_the_offset_of_its_own_date():
    assert parse_moment("20260301100000", NY).earliest.utcoffset() == timedelta(hours=-5)
    assert parse_moment("20260310100000", NY).earliest.utcoffset() == timedelta(hours=-4)
    across = parse_moment(FALL + "030000", NY).earliest - parse_moment("20261031230000", NY).earliest
    assert across == timedelta(hours=5)  # 23:00 EDT -> 03:00 EST is five hours, not four


def test_a_repeated_or_skipped_wall_clock_time_names_two_instants():
    repeated = parse_moment(FALL + "013000", NY)
    assert repeated.latest - repeated.earliest == timedelta(hours=1)
    skipped = parse_moment(SPRING + "023000", NY)
    assert skipped.latest - skipped.earliest == timedelta(hours=1)
    assert parse_moment(FALL + "033000", NY).exact


def test_a_time_coarser_than_a_minute_covers_its_interval():
    day = parse_moment("20261201", NY)
    assert (day.earliest, day.latest - day.earliest, day.has_time_of_day) == (
        datetime(2026, 12, 1, tzinfo=NY), timedelta(days=1), False)
    hour = parse_moment("2026120110", NY)
    assert hour.latest - hour.earliest == timedelta(hours=1) and hour.has_time_of_day
    assert parse_moment("202612011000", NY).exact  # to the minute: seconds are 00
    sent_with_offset = parse_moment("20261201-0500", NY)
    assert sent_with_offset.latest - sent_with_offset.earliest == timedelta(days=1)
    assert parse_moment(FALL, NY).latest - parse_moment(FALL, NY).earliest == timedelta(hours=25)


def test_the_adult_example_moved_to_both_nights_is_accepted():
    assert go_verdict(dose(FALL + "033000")).control == "OK"
    assert go_verdict(dose(SPRING + "043000")).control == "OK"


# --- premedication window ------------------------------------------------------------------------------


def test_fall_back_premed_130_minutes_before_is_outside_the_window():
    # 00:50 EDT -> 02:00 EST: 70 minutes on the wall clock, 130 minutes elapsed
    verdict = go_verdict(dose(FALL + "020000", acetaminophen=FALL + "005000", diphenhydramine=FALL + "005000",
                              steroid=FALL + "020000"))
    assert verdict.control == "UA"
    assert "acetaminophen P-A starts 130 min before the GO start" in messages(verdict)


def test_spring_forward_premed_60_minutes_before_is_inside_the_window():
    # 01:30 EST -> 03:30 EDT: 120 minutes on the wall clock, 60 minutes elapsed
    verdict = go_verdict(dose(SPRING + "033000", acetaminophen=SPRING + "013000", diphenhydramine=SPRING + "013000",
                              steroid=SPRING + "031000"))
    assert verdict.control == "OK", messages(verdict)


def test_a_skipped_premed_time_is_judged_at_the_reading_outside_the_window():
    # 02:30 does not exist on the spring night: 03:30 EDT minus 02:30 is 0 or 60 minutes
    verdict = go_verdict(dose(SPRING + "033000", acetaminophen=SPRING + "023000", diphenhydramine=SPRING + "013000",
                              steroid=SPRING + "031000"))
    assert verdict.control == "UA"
    assert "acetaminophen P-A starts 0 min before the GO start" in messages(verdict)


def test_a_repeated_premed_time_is_judged_at_the_reading_outside_the_window():
    # 01:40 happens twice on the fall night: 02:00 EST minus 01:40 is 20 or 80 minutes; the steroid needs 0-30
    verdict = go_verdict(dose(FALL + "020000", acetaminophen=FALL + "010000", diphenhydramine=FALL + "020000",
                              steroid=FALL + "014000"))
    assert verdict.control == "UA"
    text = messages(verdict)
    assert "methylprednisolone P-M starts 80 min before" in text
    assert "acetaminophen P-A starts 120 min before" in text  # 01:00 EDT or EST: 60 or 120 min


# --- infusion length ---------------------------------------------------------------------------------


def test_fall_back_infusion_of_300_minutes_is_not_240():
    verdict = go_verdict(dose("20261031230000", go_end=FALL + "030000", duration=""))
    assert verdict.control == "UA"
    assert "go.infusion" in rules_of(verdict) and "300" in messages(verdict)


def test_spring_forward_infusion_of_180_minutes_is_not_240():
    verdict = go_verdict(dose(SPRING + "000000", go_end=SPRING + "040000", duration=""))
    assert verdict.control == "UA"
    assert "go.infusion" in rules_of(verdict) and "180" in messages(verdict)


def test_an_infusion_ending_at_a_repeated_time_is_judged_at_its_longer_reading():
    # 21:30 EDT -> 01:30 (EDT 240 min, EST 300 min)
    verdict = go_verdict(dose("20261031213000", go_end=FALL + "013000", duration=""))
    assert "go.infusion" in rules_of(verdict)


# --- lab recency: WBC 72 h, CD33 60 days ----------------------------------------------------------------


def test_fall_back_wbc_73_hours_old_is_not_within_72_hours():
    observations = observations_with(replace={3: obx(3, WBC, "8.4", "10*9/L^10*9/L^UCUM", time="20261029100000")},
                                     body_time="20261031090000", lab_time="20261031090000",
                                     cd33_time="20261020100000")
    text = adult_order_set(go=go_order(start=FALL + "100000", end=FALL + "140000", observations=observations),
                           premeds=_premeds_before(FALL + "100000"), time=FALL + "083000")
    verdict = go_verdict(judge_text(text, tz=NY, received_at=datetime(2026, 11, 1, 8, 30, tzinfo=NY)))
    assert "go.wbc" in rules_of(verdict)
    assert "73 h before the GO start" in messages(verdict)


def test_spring_forward_wbc_71_and_a_half_hours_old_is_within_72_hours():
    observations = observations_with(replace={3: obx(3, WBC, "8.4", "10*9/L^10*9/L^UCUM", time="20260305093000")},
                                     body_time="20260307090000", lab_time="20260307090000",
                                     cd33_time="20260301100000")
    text = adult_order_set(go=go_order(start=SPRING + "100000", end=SPRING + "140000", observations=observations),
                           premeds=_premeds_before(SPRING + "100000"), time=SPRING + "083000")
    verdict = go_verdict(judge_text(text, tz=NY, received_at=datetime(2026, 3, 8, 8, 30, tzinfo=NY)))
    assert verdict.control == "OK", messages(verdict)


def test_a_wbc_dated_by_day_only_is_judged_at_its_oldest_reading():
    observations = observations_with(replace={3: obx(3, WBC, "8.4", "10*9/L^10*9/L^UCUM", time="20261128")})
    # 2026-11-28 00:00 is 82 h before 2026-12-01 10:00: the day alone cannot show 72 h
    verdict = go_verdict(judge_text(adult_order_set(go=go_order(observations=observations)), tz=NY))
    assert "go.wbc" in rules_of(verdict)


def test_fall_back_cd33_60_days_and_an_hour_old_is_too_old():
    observations = observations_with(body_time="20261031090000", lab_time="20261031090000",
                                     cd33_time="20260902100000")
    text = adult_order_set(go=go_order(start=FALL + "100000", end=FALL + "140000", observations=observations),
                           premeds=_premeds_before(FALL + "100000"), time=FALL + "083000")
    verdict = go_verdict(judge_text(text, tz=NY, received_at=datetime(2026, 11, 1, 8, 30, tzinfo=NY)))
    assert "go.cd33" in rules_of(verdict)


def test_spring_forward_cd33_60_days_less_an_hour_is_recent():
    observations = observations_with(body_time="20260307090000", lab_time="20260307090000",
                                     cd33_time="20260107103000")
    # 2026-01-07 10:30 EST -> 2026-03-08 10:00 EDT is 59 days 22.5 h (60 days minus 30 min on the wall clock)
    text = adult_order_set(go=go_order(start=SPRING + "100000", end=SPRING + "140000", observations=observations),
                           premeds=_premeds_before(SPRING + "100000"), time=SPRING + "083000")
    verdict = go_verdict(judge_text(text, tz=NY, received_at=datetime(2026, 3, 8, 8, 30, tzinfo=NY)))
    assert verdict.control == "OK", messages(verdict)


def _premeds_before(go_start: str) -> list[str]:
    start = datetime.strptime(go_start, "%Y%m%d%H%M%S")
    first, steroid = _stamp(start - timedelta(minutes=60)), _stamp(start - timedelta(minutes=20))
    return (premed_order("P-A", ACETAMINOPHEN, "650", start=first)
            + premed_order("P-D", DIPHENHYDRAMINE, "50", route="IV^Intravenous^HL70162", start=first)
            + premed_order("P-M", METHYLPRED, "62", route="IV^Intravenous^HL70162", start=steroid))


# --- observation validity (MSH-7 + 1 h) ---------------------------------------------------------------


def test_spring_forward_observation_50_minutes_after_the_message_is_valid():
    # MSH-7 01:30 EST, OBX-14 03:20 EDT: 110 min on the wall clock, 50 elapsed
    judgement = dose(SPRING + "100000", msh_time=SPRING + "013000",
                     extra_observations=[obx(9, "LOCAL1^note^L", "1", time=SPRING + "032000")])
    assert "go.observation_time" not in {f.rule for f in judgement.message_findings}


def test_fall_back_observation_at_a_repeated_time_may_be_too_late():
    # MSH-7 00:30 EDT, OBX-14 01:20 (EDT: 50 min after; EST: 110 min after)
    judgement = dose(FALL + "100000", msh_time=FALL + "003000",
                     extra_observations=[obx(9, "LOCAL1^note^L", "1", time=FALL + "012000")])
    assert "go.observation_time" in {f.rule for f in judgement.message_findings}


def test_fall_back_observation_61_minutes_after_an_ambiguous_message_time_is_too_late():
    # MSH-7 01:10 (EDT or EST), OBX-14 02:10 EST: 60 or 120 minutes after
    judgement = dose(FALL + "100000", msh_time=FALL + "011000",
                     extra_observations=[obx(9, "LOCAL1^note^L", "1", time=FALL + "021000")])
    assert "go.observation_time" in {f.rule for f in judgement.message_findings}


# --- cytoreduction within 14 days -----------------------------------------------------------------------


def _high_wbc_with_hydroxyurea(go_start: str, hydroxyurea_start: str):
    start = datetime.strptime(go_start, "%Y%m%d%H%M%S")
    labs = _stamp(start - timedelta(hours=28))
    observations = observations_with(replace={3: obx(3, WBC, "45", "10*9/L^10*9/L^UCUM", time=labs)},
                                     body_time=labs, lab_time=labs, cd33_time=_stamp(start - timedelta(days=16)))
    text = adult_order_set(
        go=go_order(start=go_start, end=_stamp(start + timedelta(hours=4)), observations=observations),
        premeds=_premeds_before(go_start),
        extra_orders=premed_order("HU1", HYDROXYUREA, "1000", start=hydroxyurea_start),
        time=_stamp(start - timedelta(minutes=90)))
    return go_verdict(judge_text(text, tz=NY, received_at=(start - timedelta(hours=1)).replace(tzinfo=NY)))


def test_fall_back_hydroxyurea_14_days_and_an_hour_before_does_not_count():
    verdict = _high_wbc_with_hydroxyurea(FALL + "100000", "20261018100000")
    assert "go.wbc" in rules_of(verdict)


def test_spring_forward_hydroxyurea_14_days_less_an_hour_before_counts():
    verdict = _high_wbc_with_hydroxyurea(SPRING + "100000", "20260222103000")
    assert "go.wbc" not in rules_of(verdict) and "go.wbc" in rules_of(verdict, "warning")


# --- the premedication belonging window (4 h) --------------------------------------------------------


def test_spring_forward_premed_three_and_a_half_hours_before_belongs_and_falls_with_its_dose():
    # 00:30 EST -> 05:00 EDT: 4.5 h on the wall clock, 3.5 h elapsed: it prepares this dose
    extra = premed_order("P-X", ACETAMINOPHEN, "650", start=SPRING + "003000")
    judgement = dose(SPRING + "050000", extra_orders=extra,
                     extra_observations=[])
    extra_verdict = judgement.orders[-1]
    assert extra_verdict.order.placer_number == "P-X"
    assert "acetaminophen P-X starts 210 min before" in messages(go_verdict(judgement))
    assert extra_verdict.control == "UA" and "go.orderset" in rules_of(extra_verdict)


def test_fall_back_premed_four_and_a_half_hours_before_does_not_belong():
    # 23:30 EDT -> 03:00 EST: 3.5 h on the wall clock, 4.5 h elapsed: not this dose's premed
    extra = premed_order("P-X", ACETAMINOPHEN, "650", start="20261031233000")
    judgement = dose(FALL + "030000", extra_orders=extra)
    assert go_verdict(judgement).control == "OK", messages(go_verdict(judgement))
    assert "go.scope" in rules_of(judgement.orders[-1], "info")


# --- day spacing and calendar days ----------------------------------------------------------------------


def test_day_14_across_each_night_is_judged_on_calendar_dates():
    from validator.history import HistoryEntry
    from validator.model import Coded

    for day1, day14 in ((datetime(2026, 10, 19, 23, 30), FALL + "003000"),
                        (datetime(2026, 2, 23, 0, 30), SPRING + "033000")):
        history = [HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number="D1",
                                control_id="C1", drug=Coded(code="1294580", system="RXNORM"), protocol_order=True,
                                protocol_id="go-rr-9mg-d1-d14", start=day1.replace(tzinfo=NY))]
        start = datetime.strptime(day14, "%Y%m%d%H%M%S")
        observations = observations_with(body_time=_stamp(start - timedelta(hours=20)),
                                         lab_time=_stamp(start - timedelta(hours=20)),
                                         cd33_time=_stamp(start - timedelta(days=16)))
        text = adult_order_set(go=go_order(start=day14, end=_stamp(start + timedelta(hours=4)),
                                           observations=observations),
                               premeds=_premeds_before(day14), time=_stamp(start - timedelta(hours=3)))
        verdict = go_verdict(judge_text(text, history=history, tz=NY,
                                        received_at=(start - timedelta(hours=3)).replace(tzinfo=NY)))
        assert "go.schedule" not in rules_of(verdict), messages(verdict)
        assert verdict.computed["course_day"] == 14


def test_a_go_start_without_a_time_of_day_fails_the_schedule():
    verdict = go_verdict(judge_text(adult_order_set(go=go_order(start="20261201", end=""))))
    assert "go.schedule" in rules_of(verdict)
    assert "time of day" in messages(verdict)


def test_a_go_start_sent_to_the_hour_is_judged_over_its_hour():
    # 10 covers 10:00-11:00: the steroid at 09:40 is 20-80 min before it
    verdict = go_verdict(judge_text(adult_order_set(go=go_order(start="2026120110", end="20261201140000",
                                                                duration=""))))
    assert verdict.control == "UA" and "go.premedication" in rules_of(verdict)


# --- HSCT 60 days ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("go_start, planned, warned", [
    (FALL + "100000", "20261231", True),  # 2026-12-31 00:00 EST is 59 days 14 h after 10:00 EST
    (FALL + "100000", "20270101", False),
    (FALL + "013000", "20261231", True),  # 01:30 EDT or EST: judged from the later reading
    (SPRING + "100000", "20260507", True),  # 60 calendar days after the date, 59 days 14 h after the dose
    (SPRING + "100000", "20260508", False),
])
def test_hsct_is_judged_as_an_exact_duration_from_the_last_dose(go_start, planned, warned):
    verdict = go_verdict(dose(go_start, extra_observations=[obx(9, "HSCTDATE^Planned HSCT date^L", planned,
                                                                 value_type="DT", time=_stamp(datetime.strptime(go_start, "%Y%m%d%H%M%S") - timedelta(hours=20)))]))
    assert ("go.hsct" in rules_of(verdict, "warning")) is warned, messages(verdict)


def test_fhir_times_without_an_offset_are_exact_instants_too():
    from validator.fhir import _instant

    before, after = _instant(datetime(2026, 10, 31, 23, 0), NY), _instant(datetime(2026, 11, 1, 3, 0), NY)
    assert after - before == timedelta(hours=5)
    assert _instant(datetime(2026, 11, 1, 1, 30), NY).utcoffset() == timedelta(hours=-4)  # the earlier reading
