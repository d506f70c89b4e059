"""go.infusion: 240 ± 15 min (inclusive) from every source (TQ1-6, TQ1-8 − TQ1-7, rate), sources ≤ 5 min apart."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.builders import (
    adult_order_set,
    go_order,
    judge_text,
    message,
    msh,
    pid,
    pv1,
    rules_of,
    standard_observations,
)

RULE = "go.infusion"


def judge_go(**go):
    return judge_text(adult_order_set(go=go_order(**go)))


def infusion_findings(judgement, severity: str = "error"):
    return [f for f in judgement.orders[0].findings if f.rule == RULE and f.severity == severity]


def assert_refused(judgement, location: str | None = None):
    go = judgement.orders[0]
    assert go.control == "UA", go.findings
    assert RULE in rules_of(go, "error")
    found = infusion_findings(judgement)
    if location is not None:
        assert location in {f.location.short() for f in found if f.location}, [f.message for f in found]
    return found


def assert_accepted(judgement):
    assert judgement.ack_code == "AA", [f.message for f in judgement.findings if f.severity == "error"]
    assert judgement.orders[0].control == "OK"
    assert infusion_findings(judgement) == []


def minutes(judgement) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in judgement.orders[0].computed["infusion_minutes"].items()}


def end_after(minutes_after_start: int) -> str:
    """TQ1-8 for an end this many minutes after the 10:00 start."""
    total = 10 * 60 + minutes_after_start
    return f"20261201{total // 60:02d}{total % 60:02d}00"


# --- service duration TQ1-6 ---------------------------------------------------------------------

@pytest.mark.parametrize("duration, expected", [("240^min", 240), ("225^min", 225), ("255^min", 255),
                                                ("4^h", 240), ("4^hour^UCUM", 240), ("14400^s", 14400 / 60),
                                                ("^^min", None)])
def test_service_duration_within_tolerance_is_accepted(duration, expected):
    if expected is None:  # a duration with no number is no source; the start/end remains
        judgement = judge_go(duration=duration)
        assert_accepted(judgement)
        assert "service_duration" not in minutes(judgement)
        return
    judgement = judge_go(duration=duration, end="")
    assert_accepted(judgement)
    assert minutes(judgement) == {"service_duration": Decimal(str(expected))}


@pytest.mark.parametrize("duration", ["224^min", "256^min", "2^h", "120^min", "4^d"])
def test_service_duration_outside_tolerance_is_refused(duration):
    [found] = assert_refused(judge_go(duration=duration, end=""), "TQ1-6")
    assert "240 ± 15 min (225–255 min)" in found.message


def test_refusal_message_names_the_value():
    [found] = assert_refused(judge_go(duration="224^min", end=""))
    assert found.message.startswith("infusion duration 224 min (service duration TQ1-6 = 224 min)")


def test_unknown_duration_unit_is_refused_naming_it():
    [found] = assert_refused(judge_go(duration="240^fortnights", end=""), "TQ1-6")
    assert "'fortnights'" in found.message


def test_unknown_duration_unit_is_refused_even_with_a_good_end():
    judgement = judge_go(duration="4^moons")
    [found] = assert_refused(judgement, "TQ1-6")
    assert "'moons'" in found.message
    assert minutes(judgement) == {"end_minus_start": Decimal(240)}


# --- planned end − start -------------------------------------------------------------------------

@pytest.mark.parametrize("after", [225, 240, 255])
def test_end_minus_start_only_within_tolerance_is_accepted(after):
    judgement = judge_go(duration="", end=end_after(after))
    assert_accepted(judgement)
    assert minutes(judgement) == {"end_minus_start": Decimal(after)}


@pytest.mark.parametrize("after", [224, 256, 120, -30])
def test_end_minus_start_outside_tolerance_is_refused(after):
    end = end_after(after) if after >= 0 else "20261201093000"
    [found] = assert_refused(judge_go(duration="", end=end), "TQ1-8")
    assert "TQ1-8 − TQ1-7" in found.message


def test_end_to_the_second():
    """255 min + 1 s is past the bound: refused, and the display does not round it back to 255."""
    [found] = assert_refused(judge_go(duration="", end="20261201141501"))
    assert "255.02 min" in found.message


def test_end_with_utc_offset_is_honoured():
    """10:00 UTC to 09:00-05:00 (14:00 UTC) is 240 min."""
    judgement = judge_go(duration="", end="20261201090000-0500")
    assert_accepted(judgement)
    assert minutes(judgement) == {"end_minus_start": Decimal(240)}


# --- rate RXE-23/24 with a volume -------------------------------------------------------------------

RXC_100_ML = "RXC|B|0.9% sodium chloride|100|mL^milliliter^UCUM"


def test_rate_only_with_rxc_volume_is_accepted():
    judgement = judge_go(duration="", end="", rate="25", rate_units="mL/h^milliliter per hour^UCUM",
                         extra=[RXC_100_ML])
    assert_accepted(judgement)
    assert minutes(judgement) == {"rate": Decimal(240)}


def test_rxc_volumes_are_summed_and_other_components_ignored():
    extra = ["RXC|B|0.9% sodium chloride|90|mL", "RXC|A|gemtuzumab ozogamicin|15.2|mg", "RXC|B|flush|10|ml"]
    judgement = judge_go(duration="", end="", rate="25", rate_units="mL/h", extra=extra)
    assert_accepted(judgement)
    assert minutes(judgement) == {"rate": Decimal(240)}


@pytest.mark.parametrize("rate", ["23.5", "26.7"])
def test_rate_outside_tolerance_is_refused(rate):
    """100 mL at 23.5 mL/h = 255.3 min; at 26.7 mL/h = 224.7 min."""
    [found] = assert_refused(judge_go(duration="", end="", rate=rate, rate_units="mL/h", extra=[RXC_100_ML]),
                             "RXE-23")
    assert "RXC volume 100 mL at rate" in found.message


@pytest.mark.parametrize("rate, expected", [("26.666", Decimal(100) / Decimal("26.666") * 60),
                                            ("23.53", Decimal(100) / Decimal("23.53") * 60)])
def test_rate_just_inside_tolerance_is_accepted(rate, expected):
    judgement = judge_go(duration="", end="", rate=rate, rate_units="mL/h", extra=[RXC_100_ML])
    assert_accepted(judgement)
    assert minutes(judgement)["rate"] == expected


def test_rate_with_give_amount_in_ml():
    """A give amount in mL is the volume (go.dose refuses the mL dose itself; the rate is still a source)."""
    judgement = judge_go(dose="100", units="mL^milliliter^UCUM", duration="", end="", rate="25", rate_units="mL/h")
    assert infusion_findings(judgement) == []
    assert minutes(judgement) == {"rate": Decimal(240)}


def test_rate_in_other_units_is_not_a_source():
    judgement = judge_go(duration="", end="", rate="3.8", rate_units="mg/h", extra=[RXC_100_ML])
    found = assert_refused(judgement)
    assert "no infusion duration" in found[0].message
    assert any("not in mL/h" in f.message for f in infusion_findings(judgement, "info"))


def test_rate_without_volume_is_not_a_source():
    judgement = judge_go(duration="", end="", rate="25", rate_units="mL/h")
    assert_refused(judgement)
    assert any("no volume" in f.message for f in infusion_findings(judgement, "info"))


def test_rate_without_volume_next_to_a_good_duration_is_accepted():
    judgement = judge_go(rate="25", rate_units="mL/h")
    assert_accepted(judgement)
    assert set(minutes(judgement)) == {"service_duration", "end_minus_start"}


def test_zero_rate_is_refused():
    assert_refused(judge_go(rate="0", rate_units="mL/h", extra=[RXC_100_ML]), "RXE-23")


def test_unreadable_rate_is_refused():
    assert_refused(judge_go(rate="fast", rate_units="mL/h", extra=[RXC_100_ML]), "RXE-23")


# --- sources together ----------------------------------------------------------------------------

def test_three_agreeing_sources_are_accepted():
    judgement = judge_go(rate="25", rate_units="mL/h", extra=[RXC_100_ML])
    assert_accepted(judgement)
    assert minutes(judgement) == {"service_duration": 240, "end_minus_start": 240, "rate": 240}


def test_sources_5_minutes_apart_are_accepted():
    assert_accepted(judge_go(duration="240^min", end=end_after(245)))
    assert_accepted(judge_go(duration="250^min", end=end_after(245)))


def test_sources_6_minutes_apart_are_refused():
    judgement = judge_go(duration="240^min", end=end_after(246))
    [found] = assert_refused(judgement, "TQ1-8")  # the source further from 240 min
    assert "6 min apart" in found.message and "at most 5 min" in found.message
    assert minutes(judgement) == {"service_duration": 240, "end_minus_start": 246}


def test_rate_disagreeing_with_duration_is_refused():
    """100 mL at 24 mL/h = 250 min; TQ1-6 and TQ1-8 − TQ1-7 say 240 min."""
    judgement = judge_go(rate="24", rate_units="mL/h", extra=[RXC_100_ML])
    [found] = assert_refused(judgement, "RXE-23")
    assert "disagree" in found.message


def test_source_outside_tolerance_and_disagreeing_reports_both():
    found = assert_refused(judge_go(duration="120^min"))
    messages = " / ".join(f.message for f in found)
    assert "120 min" in messages and "disagree" in messages


def test_no_source_is_refused():
    [found] = assert_refused(judge_go(duration="", end=""))
    assert "no infusion duration" in found.message and "240 ± 15 min" in found.message


# --- v2.3 TQ (ORC-7): M240 / H4 -----------------------------------------------------------------

def orm_v23(go_timing: str) -> str:
    def group(placer: str, timing: str, drug: str, amount: str, route: str) -> list[str]:
        return [f"ORC|NW|{placer}||GRP501|||{timing}||20261201083000", f"RXO|{drug}|{amount}||mg^milligram^UCUM",
                f"RXR|{route}"]
    return message(
        msh(message_type="ORM^O01", version="2.3"), pid(), pv1(),
        group("ORD1001", go_timing, "1294580^gemtuzumab ozogamicin^RXNORM", "15.2", "IV^Intravenous^HL70162"),
        standard_observations(),
        group("ORD1002", "^^^20261201090000", "161^acetaminophen^RXNORM", "650", "PO^Oral^HL70162"),
        group("ORD1003", "^^^20261201090000", "3498^diphenhydramine^RXNORM", "50", "IV^Intravenous^HL70162"),
        group("ORD1004", "^^^20261201094000", "6902^methylprednisolone^RXNORM", "62", "IV^Intravenous^HL70162"),
    )


@pytest.mark.parametrize("timing", ["^^M240^20261201100000^20261201140000", "^^H4^20261201100000",
                                    "^^M225^20261201100000", "^^^20261201100000^20261201141500"])
def test_v23_tq_durations_are_accepted(timing):
    assert_accepted(judge_text(orm_v23(timing)))


@pytest.mark.parametrize("timing", ["^^M224^20261201100000", "^^H2^20261201100000^20261201120000",
                                    "^^M240^20261201100000^20261201141000", "^^^20261201100000"])
def test_v23_tq_durations_are_refused(timing):
    assert_refused(judge_text(orm_v23(timing)), "ORC-7")


def test_v23_month_duration_is_an_unknown_unit():
    """`L1` (months) reads as unit `mo`, which the protocol does not convert: refused, naming it."""
    [found] = assert_refused(judge_text(orm_v23("^^L1^20261201100000")), "ORC-7")
    assert "'mo'" in found.message
