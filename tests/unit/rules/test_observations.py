"""validator/observations.py and "How values are chosen": future-dated observations, final results only,
undated height/weight, numeric forms (NM, SN bounds, text ranges). MSH-7 of the default message is
2026-12-01 08:30 UTC, so anything dated after 09:30:00 is invalid data; the GO dose starts at 10:00."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from tests.builders import (
    CD33,
    HEIGHT,
    UTC,
    WBC,
    adult_order_set,
    go_order,
    judge_labs,
    judge_text,
    observations_with,
    obx,
)
from validator import load_protocol
from validator.er7 import split_messages
from validator.observations import (
    RULE_OBSERVATION_TIME,
    height_cm,
    latest_at,
    matches,
    usable_observations,
    weight_kg,
)
from validator.protocol import ObservationMatch
from validator.reader import read_order_set

PROTOCOL = load_protocol()
RECEIVED = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def read(observations: list[str], *, time: str = "20261201083000"):
    text = adult_order_set(go=go_order(observations=observations), time=time)
    return read_order_set(split_messages(text).messages[0], UTC)


def single(segment: str):
    observations = read([segment]).observations
    assert len(observations) == 1
    return observations[0]


def rules(findings, severity: str) -> list[str]:
    return [f.rule for f in findings if f.severity == severity]


# --- future-dated observations ----------------------------------------------------------------------

def test_future_dated_observation_is_a_warning_and_ignored():
    future_cd33 = obx(4, CD33, "72", "%", time="20261201093001")
    judgement = judge_labs(observations_with(replace={4: future_cd33}))
    warnings = [f for f in judgement.message_findings if f.rule == RULE_OBSERVATION_TIME]
    assert [f.severity for f in warnings] == ["warning"]
    assert "2026-12-01 09:30" in warnings[0].message and warnings[0].location.short() == "OBX-14"
    # Ignored: the dose now has no CD33 at all.
    go = judgement.orders[0]
    assert go.control == "UA"
    assert any(f.rule == "go.cd33" and "no CD33 result" in f.message for f in go.findings)


def test_observation_exactly_at_message_time_plus_tolerance_is_kept():
    order_set = read(observations_with(replace={4: obx(4, CD33, "72", "%", time="20261201093000")}))
    kept, findings = usable_observations(order_set, PROTOCOL, RECEIVED)
    assert findings == []
    assert len(kept) == 7


def test_one_second_over_the_tolerance_is_dropped():
    order_set = read(observations_with(replace={4: obx(4, CD33, "72", "%", time="20261201093001")}))
    kept, findings = usable_observations(order_set, PROTOCOL, RECEIVED)
    assert rules(findings, "warning") == [RULE_OBSERVATION_TIME]
    assert all(o.code.code != "CD33BL" for o in kept) and len(kept) == 6


def test_without_msh7_the_time_received_is_the_reference():
    text = adult_order_set(go=go_order(observations=observations_with(
        replace={4: obx(4, CD33, "72", "%", time="20261201080100")})), time="")
    early = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)  # limit 08:00: the 08:01 CD33 is future data
    judgement = judge_text(text, received_at=early)
    assert rules(judgement.message_findings, "warning") == [RULE_OBSERVATION_TIME]
    judgement = judge_text(text, received_at=RECEIVED)
    assert rules(judgement.message_findings, "warning") == []


def test_future_dated_weight_is_ignored_too():
    future_weight = obx(2, "29463-7^Body weight^LN", "62", "kg", time="20261202090000")
    judgement = judge_labs(observations_with(replace={2: future_weight}))
    assert rules(judgement.message_findings, "warning") == [RULE_OBSERVATION_TIME]


# --- final results only --------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["P", "R", "I", "X", ""])
def test_non_final_results_are_ignored(status):
    order_set = read(observations_with(replace={3: obx(3, WBC, "8.4", "10*9/L", status=status)}))
    kept, _ = usable_observations(order_set, PROTOCOL, RECEIVED)
    assert all(o.code.code != "6690-2" for o in kept)


def test_preliminary_wbc_leaves_the_dose_without_a_wbc():
    judgement = judge_labs(observations_with(replace={3: obx(3, WBC, "8.4", "10*9/L", status="P")}))
    assert any(f.rule == "go.wbc" and "no WBC result" in f.message for f in judgement.orders[0].findings)
    assert judgement.orders[0].control == "UA"


@pytest.mark.parametrize("status", ["F", "C", "f", "c"])
def test_final_and_corrected_results_count(status):
    order_set = read([obx(3, WBC, "8.4", "10*9/L", status=status)])
    kept, _ = usable_observations(order_set, PROTOCOL, RECEIVED)
    assert len(kept) == 1


# --- choosing: dated vs undated -------------------------------------------------------------------

def test_undated_height_counts_when_it_is_the_only_one():
    observations = read([obx(1, HEIGHT, "170", "cm", time="")]).observations
    measure = height_cm(observations, PROTOCOL, START)
    assert measure.value == Decimal(170)


def test_undated_height_loses_to_a_dated_one():
    observations = read([obx(1, HEIGHT, "170", "cm", time=""), obx(2, HEIGHT, "165", "cm", time="20261101090000")]
                        ).observations
    assert height_cm(observations, PROTOCOL, START).value == Decimal(165)
    # Order in the message does not matter.
    observations = read([obx(2, HEIGHT, "165", "cm", time="20261101090000"), obx(1, HEIGHT, "170", "cm", time="")]
                        ).observations
    assert height_cm(observations, PROTOCOL, START).value == Decimal(165)


def test_undated_weight_is_used_when_the_dated_one_is_after_the_start():
    observations = read([obx(2, "29463-7^Body weight^LN", "70", "kg", time=""),
                         obx(3, "29463-7^Body weight^LN", "62", "kg", time="20261201110000")]).observations
    assert weight_kg(observations, PROTOCOL, START).value == Decimal(70)


def test_most_recent_dated_height_at_or_before_the_start_wins():
    observations = read([obx(1, HEIGHT, "160", "cm", time="20261001090000"),
                         obx(2, HEIGHT, "165", "cm", time="20261201100000"),
                         obx(3, HEIGHT, "199", "cm", time="20261201100001")]).observations
    assert height_cm(observations, PROTOCOL, START).value == Decimal(165)


def test_undated_lab_does_not_count():
    observations = read([obx(3, WBC, "8.4", "10*9/L", time="")]).observations
    assert latest_at(observations, START, undated_counts=False) is None
    assert latest_at(observations, START, undated_counts=True) is observations[0]


def test_undated_height_in_the_default_message_is_accepted():
    judgement = judge_labs(observations_with(replace={1: obx(1, HEIGHT, "165", "cm^centimeter^UCUM", time="")}))
    assert judgement.orders[0].control == "OK", [f.message for f in judgement.orders[0].findings]


# --- numeric forms --------------------------------------------------------------------------------

def test_nm_value():
    obs = single(obx(4, CD33, "72", "%"))
    assert obs.quantity.value == Decimal(72) and obs.quantity.comparator == ""


def test_sn_comparator_is_a_bound():
    obs = single(obx(4, CD33, ">^90", "%", value_type="SN"))
    assert obs.quantity.value == Decimal(90) and obs.quantity.comparator == ">"


def test_sn_range_takes_the_lower_value():
    obs = single(obx(4, CD33, "^30^-^40", "%", value_type="SN"))
    assert obs.quantity.value == Decimal(30)


@pytest.mark.parametrize("value_type", ["ST", "NM", "TX"])
def test_text_range_takes_the_lower_value(value_type):
    obs = single(obx(4, CD33, "30-40", "%", value_type=value_type))
    assert obs.quantity.value == Decimal(30)


@pytest.mark.parametrize(("text", "value", "comparator"), [("85 %", "85", ""), (">90%", "90", ">"),
                                                             ("<=5 %", "5", "<=")])
def test_text_number_with_percent(text, value, comparator):
    obs = single(obx(4, CD33, text, "", value_type="ST"))
    assert obs.quantity.value == Decimal(value) and obs.quantity.comparator == comparator
    assert obs.quantity.unit.code == "%"


def test_word_alone_has_no_number():
    assert single(obx(4, CD33, "positive", "", value_type="ST")).quantity is None


def test_range_30_40_satisfies_cd33_at_30_and_29_40_does_not():
    ok = judge_labs(observations_with(replace={4: obx(4, CD33, "30-40", "%", time="20261115120000")}))
    assert ok.orders[0].control == "OK", [f.message for f in ok.orders[0].findings]
    low = judge_labs(observations_with(replace={4: obx(4, CD33, "29-40", "%", time="20261115120000")}))
    assert any(f.rule == "go.cd33" and f.severity == "error" for f in low.orders[0].findings)


def test_sn_bound_satisfies_cd33():
    judgement = judge_labs(observations_with(replace={4: obx(4, CD33, ">^90", "%", value_type="SN",
                                                                time="20261115120000")}))
    assert judgement.orders[0].control == "OK", [f.message for f in judgement.orders[0].findings]


# --- matching -------------------------------------------------------------------------------------

def test_matches_by_code_or_text_case_insensitively():
    obs = single(obx(4, "XYZ^cd33 on blasts^L", "72", "%"))
    assert matches(obs, ObservationMatch(text_contains=["CD33"]))
    assert not matches(obs, ObservationMatch(codes=["CD33BL"]))
    assert matches(single(obx(4, "cd33bl^x^L", "72", "%")), ObservationMatch(codes=["CD33BL"]))
