"""Spec gaps closed by the spec (docs/protocol.md, "How values are chosen"): each case was accepted
before and must be refused (or judged) now."""

from __future__ import annotations

from tests.builders import (
    ACETAMINOPHEN,
    CD33,
    WBC,
    adult_order_set,
    go_order,
    judge_labs,
    judge_text,
    observations_with,
    obx,
    premed_order,
    rules_of,
    standard_premeds,
)


def go(judgement):
    return judgement.orders[0]


def text_of(verdict) -> str:
    return " | ".join(f.message for f in verdict.findings)


# --- units by code first ---------------------------------------------------------------------------------


def test_a_rxe5_identifier_that_is_not_a_mass_unit_is_refused_whatever_its_text():
    verdict = go(judge_text(adult_order_set(go=go_order(units="mg/kg^mg^UCUM"))))
    assert verdict.control == "UA" and "go.dose" in rules_of(verdict)
    assert "mg/kg" in text_of(verdict)


def test_a_unit_text_counts_when_the_identifier_is_empty():
    assert go(judge_text(adult_order_set(go=go_order(units="^mg")))).control == "OK"


def test_a_premed_unit_identifier_that_is_not_a_mass_unit_is_refused():
    premeds = standard_premeds()
    premeds[1] = premeds[1].replace("|650||mg^milligram^UCUM", "|650||mg/kg^mg^UCUM")
    verdict = go(judge_text(adult_order_set(premeds=premeds)))
    assert "go.premedication" in rules_of(verdict) and "mg/kg" in text_of(verdict)


def test_an_observation_unit_identifier_wins_over_its_text():
    observations = observations_with(replace={2: obx(2, "29463-7^Body weight^LN", "62", "[lb_av]^kg^UCUM",
                                                     time="20261130090000")})
    verdict = go(judge_labs(observations))
    assert "go.dose" in rules_of(verdict)  # 62 lb, not 62 kg: 15.2 mg is far over 9 mg/m2 x BSA


# --- routes by code first --------------------------------------------------------------------------------


def test_a_route_code_that_says_oral_is_oral_whatever_its_text():
    verdict = go(judge_text(adult_order_set(go=go_order(route="PO^Intravenous^HL70162"))))
    assert verdict.control == "UA" and "go.route" in rules_of(verdict)


def test_a_route_text_counts_only_when_the_code_is_empty():
    assert go(judge_text(adult_order_set(go=go_order(route="^Intravenous")))).control == "OK"


def test_a_route_code_of_another_system_counts_only_through_the_route_map():
    from validator import load_protocol
    from validator.protocol import RouteCode

    snomed = "47625008^Intravenous route^SCT"
    assert go(judge_text(adult_order_set(go=go_order(route=snomed)))).control == "UA"  # bundled: no map
    mapped = load_protocol().model_copy(update={"route_codes": [RouteCode(systems=["SCT"], code="47625008",
                                                                          route="IV")]})
    assert go(judge_text(adult_order_set(go=go_order(route=snomed)), protocol=mapped)).control == "OK"
    unknown = go(judge_text(adult_order_set(go=go_order(route="IV^Intravenous^LOCALROUTES"))))
    assert unknown.control == "UA" and "go.route" in rules_of(unknown)
    assert "route map" in text_of(unknown)


def test_a_premed_route_code_wins_over_its_text():
    premeds = standard_premeds()
    premeds[3] = "RXR|IV^Oral^HL70162"  # acetaminophen must be PO
    verdict = go(judge_text(adult_order_set(premeds=premeds)))
    assert "go.premedication" in rules_of(verdict)
    assert "acetaminophen ORD1002: route" in text_of(verdict)


# --- ranges and comparators at the end least favourable to accepting -----------------------------------------


def test_a_wbc_range_takes_its_upper_end():
    observations = observations_with(replace={3: obx(3, WBC, "25-35", "10*9/L^10*9/L^UCUM", value_type="ST")})
    verdict = go(judge_labs(observations))
    assert "go.wbc" in rules_of(verdict) and "cytoreduction" in text_of(verdict)


def test_a_wbc_sn_range_takes_its_upper_end():
    observations = observations_with(replace={3: obx(3, WBC, "^25^-^35", "10*9/L^10*9/L^UCUM", value_type="SN")})
    assert "go.wbc" in rules_of(go(judge_labs(observations)))


def test_a_wbc_above_a_bound_below_the_threshold_may_be_high():
    observations = observations_with(replace={3: obx(3, WBC, ">^25", "10*9/L^10*9/L^UCUM", value_type="SN")})
    assert "go.wbc" in rules_of(go(judge_labs(observations)))


def test_a_wbc_below_the_threshold_bound_is_below_it():
    observations = observations_with(replace={3: obx(3, WBC, "<^30", "10*9/L^10*9/L^UCUM", value_type="SN")})
    assert "go.wbc" not in rules_of(go(judge_labs(observations)))


def test_a_cd33_range_takes_its_lower_end():
    observations = observations_with(replace={4: obx(4, CD33, "20-40", "%^percent^UCUM", value_type="ST",
                                                     time="20261115120000")})
    assert "go.cd33" in rules_of(go(judge_labs(observations)))


def test_a_cd33_below_a_bound_is_not_shown_positive():
    observations = observations_with(replace={4: obx(4, CD33, "<^40", "%^percent^UCUM", value_type="SN",
                                                     time="20261115120000")})
    assert "go.cd33" in rules_of(go(judge_labs(observations)))
    above = observations_with(replace={4: obx(4, CD33, ">^90", "%^percent^UCUM", value_type="SN",
                                              time="20261115120000")})
    assert "go.cd33" not in rules_of(go(judge_labs(above)))


def test_a_liver_range_takes_its_upper_end():
    from tests.builders import BILI

    observations = observations_with(replace={5: obx(5, BILI, "1.0-3.0", "mg/dL^mg/dL^UCUM", value_type="ST",
                                                     ref_range="0.2-1.2")})
    assert "go.liver" in rules_of(go(judge_labs(observations)), "warning")


def test_a_weight_range_is_not_a_weight():
    observations = observations_with(replace={2: obx(2, "29463-7^Body weight^LN", "60-64", "kg^kilogram^UCUM",
                                                     value_type="ST", time="20261130090000")})
    assert "go.dose" in rules_of(go(judge_labs(observations)))
    _ = ACETAMINOPHEN, premed_order


# --- one start per GO order ---------------------------------------------------------------------------------

import pytest  # noqa: E402

from tests.builders import GO_DRUG, message, msh, orc, pid, pv1, rxe, rxr, standard_observations  # noqa: E402


def _go_with_timing(*timing: str, version: str = "2.5.1", rxe1: str = "", orc7: str = "") -> str:
    order = [orc("ORD1001").replace("ORC|NW|ORD1001||GRP501|||", f"ORC|NW|ORD1001||GRP501|||{orc7}")]
    give = rxe(GO_DRUG, "15.2")
    order.append(give.replace("RXE||", f"RXE|{rxe1}|", 1))
    order += list(timing) + [rxr()] + standard_observations()
    return message(msh(version=version), pid(), pv1(), order, standard_premeds())


@pytest.mark.parametrize("timing", [
    ["TQ1|1|||||240^min|20261201100000|20261201140000", "TQ1|2|||||240^min|20261214100000|20261214140000"],
    ["TQ1|1||Q14D|||240^min|20261201100000|20261201140000"],
    ["TQ1|1|||||240^min|20261201100000|20261201140000||||||2"],
    ["TQ1|1|||1000~2200||240^min|20261201100000|20261201140000"],
    ["TQ1|1|||||240^min|20261201100000|20261201140000||||||two"],
])
def test_a_go_order_that_plans_more_than_one_start_is_refused(timing):
    verdict = go(judge_text(_go_with_timing(*timing)))
    assert verdict.control == "UA" and "go.schedule" in rules_of(verdict)
    assert "one order per dose: this order plans more than one start" in text_of(verdict)


def test_a_go_order_planned_once_is_accepted():
    once = "TQ1|1||ONCE|||240^min|20261201100000|20261201140000||||||1"
    assert go(judge_text(_go_with_timing(once))).control == "OK"


@pytest.mark.parametrize("tq", ["^Q14D^M240^20261201100000^20261201140000",
                                "^^X2^20261201100000^20261201140000",
                                "^^M240^20261201100000^20261201140000~^^M240^20261214100000^20261214140000"])
def test_a_v23_go_order_that_repeats_is_refused(tq):
    text = _go_with_timing(rxe1=tq, version="2.4")
    assert "one order per dose" in text_of(go(judge_text(text)))
