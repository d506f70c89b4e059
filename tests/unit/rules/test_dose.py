"""go.dose: 9 mg/m² × Mosteller BSA within ±5 % (inclusive), units converted, BSA chosen per the spec."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest

from tests.builders import (
    BSA,
    HEIGHT,
    WEIGHT,
    adult_order_set,
    go_order,
    judge_text,
    message,
    msh,
    obx,
    pid,
    pv1,
    rules_of,
    standard_observations,
    standard_premeds,
)
from validator import load_protocol
from validator.observations import mosteller_m2

RULE = "go.dose"
# The shared example: 165 cm, 62 kg.
BSA_M2 = mosteller_m2(Decimal(165), Decimal(62))
EXPECTED_MG = Decimal(9) * BSA_M2


def labs() -> list[str]:
    """The standard WBC, CD33 and liver results, without height and weight."""
    return standard_observations()[2:]


def body(height: str | None = "165", weight: str | None = "62", *, bsa: str | None = None,
         time: str = "20261130090000") -> list[str]:
    segs = []
    if height is not None:
        segs.append(obx(11, HEIGHT, height, "cm^centimeter^UCUM", time=time))
    if weight is not None:
        segs.append(obx(12, WEIGHT, weight, "kg^kilogram^UCUM", time=time))
    if bsa is not None:
        segs.append(obx(13, BSA, bsa, "m2^square meter^UCUM", time=time))
    return segs


def mg_at(percent: str, expected: Decimal = EXPECTED_MG) -> str:
    """The dose `percent` % away from `expected`, in Decimal, to 1e-9 mg."""
    dose = expected * (1 + Decimal(percent) / 100)
    return str(dose.quantize(Decimal("0.000000001"), rounding=ROUND_HALF_UP))


def judge_go(*, observations: list[str] | None = None, methylprednisolone: str = "62", protocol=None,
             time: str = "20261201083000", **go):
    text = adult_order_set(go=go_order(observations=observations, **go),
                           premeds=standard_premeds(methylprednisolone=methylprednisolone), time=time)
    return judge_text(text, protocol=protocol)


def dose_findings(judgement, severity: str = "error"):
    return [f for f in judgement.orders[0].findings if f.rule == RULE and f.severity == severity]


def assert_refused(judgement, location: str | None = None):
    go = judgement.orders[0]
    assert go.control == "UA", go.findings
    assert RULE in rules_of(go, "error")
    if location is not None:
        assert location in {f.location.short() for f in dose_findings(judgement) if f.location}
    return dose_findings(judgement)


def assert_accepted(judgement):
    assert judgement.ack_code == "AA", [f.message for f in judgement.findings if f.severity == "error"]
    assert judgement.orders[0].control == "OK"
    assert dose_findings(judgement) == []


# --- tolerance, both sides, in Decimal -------------------------------------------------------

@pytest.mark.parametrize("percent", ["0", "4.9", "5", "-4.9", "-5"])
def test_dose_within_tolerance_is_accepted(percent):
    judgement = judge_go(dose=mg_at(percent))
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["dose_deviation_percent"]) == Decimal(percent)


@pytest.mark.parametrize("percent", ["5.1", "-5.1"])
def test_dose_beyond_tolerance_is_refused(percent):
    judgement = judge_go(dose=mg_at(percent))
    [found] = assert_refused(judgement, "RXE-3")
    assert Decimal(judgement.orders[0].computed["dose_deviation_percent"]) == Decimal(percent)
    assert "tolerance 5%" in found.message
    assert ("exceeds" if percent[0] != "-" else "is below") in found.message
    assert f"{percent}%" in found.message.replace("+", "")


def test_exact_bsa_boundaries():
    """160 cm × 90 kg / 3600 = 4: BSA exactly 2 m², expected exactly 18 mg."""
    obs = body("160", "90") + labs()
    for dose in ("18.9", "17.1", "18.882", "17.118"):
        assert_accepted(judge_go(dose=dose, observations=obs, methylprednisolone="90"))
    for dose in ("18.918", "17.082", "18.90001"):
        assert_refused(judge_go(dose=dose, observations=obs, methylprednisolone="90"), "RXE-3")


def test_message_names_values_seen_and_expected():
    [found] = assert_refused(judge_go(dose="18.5"))
    assert found.message == "dose 18.5 mg exceeds 9 mg/m² × 1.69 m² = 15.2 mg (+22%, tolerance 5%)"
    assert found.location.short() == "RXE-3"


def test_spec_example_message():
    """The spec's example: 9 mg/m² × 1.82 m² = 16.4 mg; 18.5 mg is +13 %."""
    obs = body(height=None, bsa="1.82") + labs()
    judgement = judge_go(dose="18.5", observations=obs)
    [found] = assert_refused(judgement)
    assert found.message == "dose 18.5 mg exceeds 9 mg/m² × 1.82 m² = 16.4 mg (+13%, tolerance 5%)"


def test_computed_values_for_audit():
    judgement = judge_go()
    computed = judgement.orders[0].computed
    assert Decimal(computed["bsa_m2"]) == BSA_M2
    assert computed["bsa_source"] == "mosteller"
    assert Decimal(computed["height_cm"]) == 165 and Decimal(computed["weight_kg"]) == 62
    assert Decimal(computed["expected_dose_mg"]) == EXPECTED_MG
    assert Decimal(computed["dose_mg"]) == Decimal("15.2")
    assert Decimal(computed["dose_deviation_percent"]) == Decimal("0.187724")


def test_missing_or_non_numeric_amount_is_refused():
    found = assert_refused(judge_go(dose="fifteen"), "RXE-3")
    assert "'fifteen'" in found[0].message
    found = assert_refused(judge_go(dose=""), "RXE-3")
    assert "no dose amount" in found[0].message


# --- units --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dose, units", [
    ("15200", "ug^microgram^UCUM"),
    ("15200", "mcg"),
    ("15200", "µg"),
    ("0.0152", "g^gram^UCUM"),
    ("15.2", "MG"),
    ("15.2", "^milligram"),
])
def test_mass_units_are_converted(dose, units):
    judgement = judge_go(dose=dose, units=units)
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["dose_mg"]) == Decimal("15.2")


@pytest.mark.parametrize("dose, units", [("18500", "ug^microgram^UCUM"), ("0.0185", "g^gram^UCUM")])
def test_converted_units_over_tolerance_are_refused(dose, units):
    [found] = assert_refused(judge_go(dose=dose, units=units), "RXE-3")
    assert "(18.5" in found.message


@pytest.mark.parametrize("dose", ["9", "9.45", "8.55", "8.6"])
def test_mg_per_m2_within_tolerance_is_accepted(dose):
    judgement = judge_go(dose=dose, units="mg/m2^milligram per square meter^UCUM")
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["dose_mg"]) == Decimal(dose) * BSA_M2


@pytest.mark.parametrize("dose", ["9.5", "8.5"])
def test_mg_per_m2_beyond_tolerance_is_refused(dose):
    [found] = assert_refused(judge_go(dose=dose, units="mg/m2"), "RXE-3")
    assert f"dose {dose} mg/m2" in found.message and "1.69 m²" in found.message


def test_mg_per_m2_still_needs_bsa():
    obs = body(height=None, weight=None) + labs()
    judgement = judge_go(dose="9", units="mg/m2", observations=obs)
    [found] = assert_refused(judgement)
    assert "cannot be verified" in found.message


@pytest.mark.parametrize("units", ["mg/kg^mg per kg^UCUM", "mL^milliliter^UCUM", "", "ug/m2"])
def test_unknown_unit_is_refused_naming_it(units):
    [found] = assert_refused(judge_go(units=units), "RXE-5")
    label = units.split("^")[0] or "(no unit)"
    assert f"'{label}'" in found.message


# --- RXE-4 maximum -----------------------------------------------------------------------------

def test_rxe4_maximum_beyond_tolerance_is_refused():
    [found] = assert_refused(judge_go(dose="15.2", amount_max="18.5"), "RXE-4")
    assert found.message.startswith("maximum dose (RXE-4) 18.5 mg exceeds")


def test_rxe4_maximum_below_tolerance_is_refused():
    assert_refused(judge_go(dose="15.2", amount_max="14"), "RXE-4")


def test_rxe4_maximum_within_tolerance_is_accepted():
    judgement = judge_go(dose="15.2", amount_max=mg_at("5"))
    assert_accepted(judgement)
    judgement = judge_go(dose="15.2", amount_max="15.2")
    assert_accepted(judgement)


# --- BSA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, weight, missing", [(None, "62", "height"), ("165", None, "weight"),
                                                     (None, None, "height and weight")])
def test_missing_height_or_weight_is_refused(height, weight, missing):
    obs = body(height, weight) + labs()
    [found] = assert_refused(judge_go(observations=obs), "RXE-3")
    assert f"no {missing} observation" in found.message
    assert "cannot be verified" in found.message


def test_bsa_observation_alone_is_used():
    """No height: the sent BSA is used (weight stays, for the methylprednisolone mg/kg)."""
    obs = body(height=None, bsa="1.70") + labs()
    judgement = judge_go(observations=obs)
    assert_accepted(judgement)
    computed = judgement.orders[0].computed
    assert computed["bsa_source"] == "observation" and Decimal(computed["bsa_m2"]) == Decimal("1.70")
    assert Decimal(computed["expected_dose_mg"]) == Decimal("15.30")


def test_bsa_observation_without_height_and_weight_satisfies_the_dose_rule():
    obs = body(height=None, weight=None, bsa="1.70") + labs()
    judgement = judge_go(observations=obs)
    assert dose_findings(judgement) == []  # premedication (mg/kg) refuses it for want of a weight
    assert judgement.orders[0].computed["bsa_source"] == "observation"


def test_bsa_observation_alone_beyond_tolerance_is_refused():
    obs = body(height=None, bsa="2.0") + labs()
    [found] = assert_refused(judge_go(observations=obs), "RXE-3")
    assert "9 mg/m² × 2.00 m² = 18.0 mg" in found.message


@pytest.mark.parametrize("bsa", ["2.18", "2.2", "1.82", "1.8"])
def test_bsa_cross_check_within_limit_is_accepted(bsa):
    """Computed BSA 2 m² (160 cm, 90 kg); a sent BSA 9 % or exactly 10 % away only cross-checks."""
    obs = body("160", "90", bsa=bsa) + labs()
    judgement = judge_go(dose="18", observations=obs, methylprednisolone="90")
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["bsa_m2"]) == 2  # the computed one is used


@pytest.mark.parametrize("bsa", ["2.22", "1.78"])
def test_bsa_cross_check_beyond_limit_is_refused(bsa):
    obs = body("160", "90", bsa=bsa) + labs()
    [found] = assert_refused(judge_go(dose="18", observations=obs, methylprednisolone="90"), "OBX-5")
    assert f"sent BSA {bsa} m²" in found.message and "2.00 m²" in found.message and "limit 10%" in found.message


def test_unreadable_bsa_observation_next_to_height_and_weight_is_refused():
    obs = body(bsa="large") + labs()
    assert_refused(judge_go(observations=obs), "OBX-5")


def test_bsa_is_unrounded():
    """BSA 1.68572 m² unrounded: 15.930 mg is +4.9993 % (accepted), 15.931 mg +5.006 % (refused);
    with the BSA rounded to 1.69 m² (15.21 mg) both would pass at +4.7 %."""
    assert_accepted(judge_go(dose="15.930"))
    [found] = assert_refused(judge_go(dose="15.931"))
    assert "(+5.01%" in found.message  # the display keeps the digits that show why it is refused


def test_weight_after_dose_start_is_ignored():
    """The message is sent at 12:00 for a 10:00 start: the 11:00 weight is not the pre-dose one."""
    obs = body() + [obx(14, WEIGHT, "80", "kg^kilogram^UCUM", time="20261201110000")] + labs()
    judgement = judge_go(observations=obs, time="20261201120000")
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["weight_kg"]) == 62


def test_weight_after_dose_start_with_nothing_earlier_is_refused():
    obs = body(weight=None) + [obx(14, WEIGHT, "62", "kg^kilogram^UCUM", time="20261201110000")] + labs()
    judgement = judge_go(observations=obs, time="20261201120000")
    assert_refused(judgement)


def test_dated_weight_wins_over_undated():
    obs = body() + [obx(14, WEIGHT, "80", "kg^kilogram^UCUM", time="")] + labs()
    judgement = judge_go(observations=obs)
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["weight_kg"]) == 62


def test_undated_height_and_weight_count_as_current():
    obs = body(time="") + labs()
    judgement = judge_go(observations=obs)
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["bsa_m2"]) == BSA_M2


def test_undated_weight_alone_is_used_and_judged():
    obs = body(weight=None) + [obx(14, WEIGHT, "80", "kg^kilogram^UCUM", time="")] + labs()
    judgement = judge_go(observations=obs, methylprednisolone="80")
    assert_refused(judgement)  # 9 × √(165 × 80 / 3600) = 17.2 mg: 15.2 mg is -12 %
    assert Decimal(judgement.orders[0].computed["weight_kg"]) == 80


def test_most_recent_dated_weight_is_used():
    obs = body(weight=None) + [
        obx(14, WEIGHT, "80", "kg^kilogram^UCUM", time="20261101090000"),
        obx(15, WEIGHT, "62", "kg^kilogram^UCUM", time="20261130090000"),
    ] + labs()
    assert_accepted(judge_go(observations=obs))


def test_weight_in_pounds_is_converted():
    obs = body(weight=None) + [obx(14, WEIGHT, "136.6870", "[lb_av]^pound^UCUM")] + labs()
    judgement = judge_go(observations=obs)
    assert_accepted(judgement)
    assert abs(Decimal(judgement.orders[0].computed["weight_kg"]) - 62) < Decimal("0.001")


@pytest.mark.parametrize("value, units, value_type", [
    ("tall", "cm^centimeter^UCUM", "ST"),
    ("165", "furlong", "NM"),
    ("0", "cm^centimeter^UCUM", "NM"),
    (">^150", "cm^centimeter^UCUM", "SN"),
])
def test_unusable_height_is_refused_at_its_obx(value, units, value_type):
    obs = body(height=None, bsa="1.70") + [obx(14, HEIGHT, value, units, value_type=value_type)] + labs()
    assert_refused(judge_go(observations=obs), "OBX-5")


def test_non_final_weight_does_not_count():
    obs = body(weight=None) + [obx(14, WEIGHT, "62", "kg^kilogram^UCUM", status="P")] + labs()
    assert_refused(judge_go(observations=obs))


def test_absurd_values_give_findings_not_exceptions():
    judgement = judge_go(dose="9" * 80)
    assert_refused(judgement)
    obs = body(height="9" * 80) + labs()
    assert_refused(judge_go(observations=obs))


# --- orders without RXE (ORM^O01 v2.3, OMP^O09) ---------------------------------------------------

def orc_v23(placer: str, timing: str) -> str:
    return f"ORC|NW|{placer}||GRP501|||{timing}||20261201083000"


def rxo(drug: str, amount: str, units: str = "mg^milligram^UCUM", amount_max: str = "") -> str:
    return f"RXO|{drug}|{amount}|{amount_max}|{units}"


def orm_v23(go_dose: str = "15.2", *, go_timing: str = "^^M240^20261201100000^20261201140000",
            amount_max: str = "") -> str:
    premed = "^^^20261201090000"
    return message(
        msh(message_type="ORM^O01", version="2.3"), pid(), pv1(),
        orc_v23("ORD1001", go_timing),
        rxo("1294580^gemtuzumab ozogamicin^RXNORM", go_dose, amount_max=amount_max),
        "RXR|IV^Intravenous^HL70162",
        standard_observations(),
        orc_v23("ORD1002", premed), rxo("161^acetaminophen^RXNORM", "650"), "RXR|PO^Oral^HL70162",
        orc_v23("ORD1003", premed), rxo("3498^diphenhydramine^RXNORM", "50"), "RXR|IV^Intravenous^HL70162",
        orc_v23("ORD1004", "^^^20261201094000"), rxo("6902^methylprednisolone^RXNORM", "62"),
        "RXR|IV^Intravenous^HL70162",
    )


def test_orm_v23_rxo_only_is_accepted():
    judgement = judge_text(orm_v23())
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["dose_mg"]) == Decimal("15.2")


def test_orm_v23_rxo_overdose_is_refused_at_rxo2():
    [found] = assert_refused(judge_text(orm_v23("18.5")), "RXO-2")
    assert found.message.startswith("dose 18.5 mg exceeds")


def test_orm_v23_rxo3_maximum_is_judged():
    assert_refused(judge_text(orm_v23("15.2", amount_max="18.5")), "RXO-3")


def omp_o09(go_dose: str) -> str:
    def group(placer: str, drug: str, amount: str, route: str, start: str, end: str = "", duration: str = ""):
        return [f"ORC|NW|{placer}||GRP501|||||20261201083000", f"TQ1|1|||||{duration}|{start}|{end}",
                rxo(drug, amount), f"RXR|{route}"]
    return message(
        msh(message_type="OMP^O09^OMP_O09"), pid(), pv1(),
        group("ORD1001", "1294580^gemtuzumab ozogamicin^RXNORM", go_dose, "IV^Intravenous^HL70162",
              "20261201100000", "20261201140000", "240^min"),
        standard_observations(),
        group("ORD1002", "161^acetaminophen^RXNORM", "650", "PO^Oral^HL70162", "20261201090000"),
        group("ORD1003", "3498^diphenhydramine^RXNORM", "50", "IV^Intravenous^HL70162", "20261201090000"),
        group("ORD1004", "6902^methylprednisolone^RXNORM", "62", "IV^Intravenous^HL70162", "20261201094000"),
    )


def test_omp_o09_rxo_only():
    assert_accepted(judge_text(omp_o09("15.2")))
    assert_refused(judge_text(omp_o09("14")), "RXO-2")


# --- a protocol with a per-dose cap (the 2017 label: 3 mg/m², at most one 4.5 mg vial) -----------

def capped_protocol():
    base = load_protocol()
    dose = base.dose.model_copy(update={"mg_per_m2": Decimal(3), "max_mg_per_dose": Decimal("4.5")})
    return base.model_copy(update={"dose": dose})


@pytest.mark.parametrize("dose", ["4.5", "4.3", "4.275"])
def test_capped_dose_at_or_just_under_the_cap_is_accepted(dose):
    """3 mg/m² × 1.69 m² = 5.06 mg, capped at 4.5 mg; 4.275 mg is exactly -5 %."""
    judgement = judge_go(dose=dose, protocol=capped_protocol())
    assert_accepted(judgement)
    assert Decimal(judgement.orders[0].computed["expected_dose_mg"]) == Decimal("4.5")


def test_dose_above_the_cap_is_refused_naming_it():
    [found] = assert_refused(judge_go(dose="4.6", protocol=capped_protocol()), "RXE-3")
    assert "maximum of 4.5 mg per dose" in found.message


def test_full_uncapped_dose_is_refused_when_capped():
    [found] = assert_refused(judge_go(dose=str(Decimal(3) * BSA_M2), protocol=capped_protocol()))
    assert "4.5 mg" in found.message


def test_dose_below_the_capped_dose_is_refused():
    [found] = assert_refused(judge_go(dose="4.2", protocol=capped_protocol()), "RXE-3")
    assert "is below" in found.message and "capped at 4.5 mg" in found.message


def test_small_patient_under_the_cap_gets_mg_per_m2():
    """144 cm × 25 kg: BSA exactly 1 m², 3 mg (under the cap)."""
    obs = body("144", "25") + labs()
    protocol = capped_protocol()
    assert_accepted(judge_go(dose="3.15", observations=obs, methylprednisolone="25", protocol=protocol))
    assert_refused(judge_go(dose="3.2", observations=obs, methylprednisolone="25", protocol=protocol))


def test_within_tolerance_but_above_the_cap_is_refused():
    """160 cm × 48.6 kg: BSA 1.47 m², 4.41 mg (under the cap); 4.6 mg is +4.3 % but above 4.5 mg."""
    obs = body("160", "48.6") + labs()
    judgement = judge_go(dose="4.6", observations=obs, methylprednisolone="48.6", protocol=capped_protocol())
    [found] = assert_refused(judgement)
    assert Decimal(judgement.orders[0].computed["dose_deviation_percent"]) <= 5
    assert "maximum of 4.5 mg" in found.message
