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


# --- premeds add up, wherever they come from ------------------------------------------------------------------

from datetime import datetime as _datetime  # noqa: E402

from tests.builders import DIPHENHYDRAMINE, UTC  # noqa: E402


def test_two_acetaminophen_orders_for_one_dose_are_totalled():
    split = standard_premeds() + premed_order("ORD1009", ACETAMINOPHEN, "650", start="20261201091500")
    verdict = go(judge_text(adult_order_set(premeds=split)))
    assert verdict.control == "UA" and "go.premedication" in rules_of(verdict)
    assert "acetaminophen total 1300 mg" in text_of(verdict)


def test_a_premed_split_in_two_halves_adds_up_to_the_dose():
    premeds = standard_premeds(acetaminophen="325") + premed_order("ORD1009", ACETAMINOPHEN, "325",
                                                                    start="20261201091500")
    verdict = go(judge_text(adult_order_set(premeds=premeds)))
    assert verdict.control == "OK", text_of(verdict)


def test_a_prn_order_does_not_count_in_the_total():
    premeds = standard_premeds() + premed_order("ORD1009", ACETAMINOPHEN, "650", start="20261201091500",
                                                priority="PRN")
    assert go(judge_text(adult_order_set(premeds=premeds))).control == "OK"


def _history_premed(drug, amount, start, *, amount_max=None, placer="H1"):
    from decimal import Decimal

    from validator.history import HistoryEntry
    from validator.model import Coded

    code, text, system = drug.split("^")
    return HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number=placer,
                        control_id="EARLIER", drug=Coded(code=code, text=text, system=system), protocol_order=False,
                        start=start, amount=Decimal(amount), amount_units="mg", route="PO",
                        amount_max=Decimal(amount_max) if amount_max else None)


def test_a_history_premed_adds_to_the_message_premed():
    history = [_history_premed(DIPHENHYDRAMINE, "50", _datetime(2026, 12, 1, 9, 0, tzinfo=UTC))]
    verdict = go(judge_text(adult_order_set(), history=history))
    assert "go.premedication" in rules_of(verdict) and "diphenhydramine total 100 mg" in text_of(verdict)


def test_a_history_premed_is_judged_in_full_its_maximum_included():
    premeds = [seg for seg in standard_premeds() if True]
    without_acetaminophen = premeds[4:]  # the message brings diphenhydramine and methylprednisolone only
    history = [_history_premed(ACETAMINOPHEN, "650", _datetime(2026, 12, 1, 9, 0, tzinfo=UTC), amount_max="1000")]
    verdict = go(judge_text(adult_order_set(premeds=without_acetaminophen), history=history))
    assert "go.premedication" in rules_of(verdict)
    assert "maximum dose (RXE-4) 1000" in text_of(verdict)
    fine = [_history_premed(ACETAMINOPHEN, "650", _datetime(2026, 12, 1, 9, 0, tzinfo=UTC))]
    assert go(judge_text(adult_order_set(premeds=without_acetaminophen), history=fine)).control == "OK"


def test_the_history_entry_keeps_the_rxe4_maximum():
    from validator.verdict import _history_entry

    text = adult_order_set(premeds=standard_premeds())
    judgement = judge_text(text.replace("|650||mg^milligram^UCUM", "|650|700|mg^milligram^UCUM"))
    entry = next(e for e in judgement.new_orders if e.placer_number == "ORD1002")
    assert str(entry.amount_max) == "700"
    assert _history_entry  # the one place history entries are made


# --- admixtures (RXC) are judged as GO -------------------------------------------------------------------------

SALINE = "8000^sodium chloride 0.9%^L"


def _bag(go_mg: str = "15.2", *, volume: str = "100", rate: str = "25", go_units: str = "mg",
         extra_rxc: list[str] | None = None) -> list[str]:
    segs = [orc("ORD1001"), rxe(SALINE, volume, "mL^mL^UCUM", rate=rate, rate_units="mL/h"),
            "TQ1|1|||||240^min|20261201100000|20261201140000", rxr(),
            f"RXC|B|{SALINE}|{volume}|mL", f"RXC|A|{GO_DRUG}|{go_mg}|{go_units}", *(extra_rxc or [])]
    return segs + standard_observations()


def test_go_as_an_additive_in_a_saline_bag_is_judged_as_go():
    accepted = judge_text(adult_order_set(go=_bag()))
    assert accepted.orders[0].protocol_order and accepted.orders[0].control == "OK", text_of(accepted.orders[0])
    overdosed = go(judge_text(adult_order_set(go=_bag("30"))))
    assert overdosed.control == "UA" and "go.dose" in rules_of(overdosed)


def test_a_refused_admixture_refuses_its_premeds():
    judgement = judge_text(adult_order_set(go=_bag("30")))
    assert all(v.control == "UA" for v in judgement.orders[1:])
    assert "go.orderset" in rules_of(judgement.orders[1])


def test_an_admixture_rate_disagreeing_with_its_volume_is_refused():
    # 100 mL at 50 mL/h is 120 minutes, not 240
    verdict = go(judge_text(adult_order_set(go=_bag(rate="50"))))
    assert "go.infusion" in rules_of(verdict)


def test_an_admixture_whose_rxe3_volume_disagrees_with_its_components_is_refused():
    # RXE-3 says 200 mL (480 min at 25 mL/h), the RXC components 100 mL (240 min)
    segs = _bag()
    segs[1] = rxe(SALINE, "200", "mL^mL^UCUM", rate="25", rate_units="mL/h")
    verdict = go(judge_text(adult_order_set(go=segs)))
    assert "go.infusion" in rules_of(verdict)


def test_a_go_component_without_a_readable_amount_is_refused():
    verdict = go(judge_text(adult_order_set(go=_bag("fifteen"))))
    assert verdict.control == "UA" and "go.dose" in rules_of(verdict)


def test_two_go_components_are_summed():
    segs = _bag("7.6", extra_rxc=[f"RXC|A|{GO_DRUG}|7.6|mg"])
    assert go(judge_text(adult_order_set(go=segs))).control == "OK"
    segs = _bag("15.2", extra_rxc=[f"RXC|A|{GO_DRUG}|7.6|mg"])
    assert "go.dose" in rules_of(go(judge_text(adult_order_set(go=segs))))


def test_a_premed_sent_as_an_additive_is_recognised():
    premeds = standard_premeds()
    bag = [orc("ORD1003"), rxe(SALINE, "50", "mL^mL^UCUM"), "TQ1|1||||||20261201090000", rxr(),
           f"RXC|B|{SALINE}|50|mL", f"RXC|A|{DIPHENHYDRAMINE}|100|mg"]
    premeds = premeds[:4] + bag + premeds[8:]
    verdict = go(judge_text(adult_order_set(premeds=premeds)))
    assert "go.premedication" in rules_of(verdict) and "diphenhydramine ORD1003: dose 100 mg" in text_of(verdict)


def test_a_history_premed_sent_again_in_the_message_counts_once():
    # ORD1003 (diphenhydramine 50 mg) was accepted earlier and comes again, the same, in this message
    history = [_history_premed(DIPHENHYDRAMINE, "50", _datetime(2026, 12, 1, 9, 0, tzinfo=UTC), placer="ORD1003")
               .model_copy(update={"route": "IV"})]
    verdict = go(judge_text(adult_order_set(), history=history))
    assert verdict.control == "OK", text_of(verdict)
