"""One hypothesis property per clinical-safety class of issue 14: random order sets made wrong in
that class are never accepted (the GO order is never `OK`). Fast at RXGATE_FUZZ_SCALE=1 (tests/budget.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from tests.budget import examples
from tests.builders import (
    ACETAMINOPHEN,
    CD33,
    DIPHENHYDRAMINE,
    GO_DRUG,
    METHYLPRED,
    WBC,
    adult_order_set,
    go_order,
    judge_text,
    observations_with,
    obx,
    orc,
    premed_order,
    rxe,
    rxr,
    standard_observations,
    standard_premeds,
)
from tests.unit.test_overrides import _overdosed, _protocol
from tests.unit.test_protocols import LABEL, SEED, label_dose_message, with_indication
from validator import load_protocol
from validator.history import HistoryEntry
from validator.model import Coded
from validator.protocol import OVERRIDABLE_RULES, ProtocolSet

NY = ZoneInfo("America/New_York")
SETTINGS = examples(10)
PROTOCOLS = ProtocolSet(load_protocol(SEED), [load_protocol(LABEL)])
# the two daylight-saving nights of 2026 in New York, as UTC instants
NIGHTS = (datetime(2026, 3, 8, 7, 0, tzinfo=UTC), datetime(2026, 11, 1, 6, 0, tzinfo=UTC))


def _wall(at: datetime) -> str:
    """An instant as the New York wall-clock time a sender would write, without an offset."""
    return at.astimezone(NY).strftime("%Y%m%d%H%M%S")


def _go_control(text: str, protocol=None, history=None, tz=UTC, received_at=None) -> str:
    return judge_text(text, protocol=protocol, history=history, tz=tz, received_at=received_at).orders[0].control


@SETTINGS
@given(night=st.sampled_from(NIGHTS), shift=st.integers(-6 * 60, 6 * 60),
       gap=st.one_of(st.integers(-60, 29), st.integers(91, 239)))
def test_a_premed_outside_its_window_across_a_dst_night_is_never_accepted(night, shift, gap):
    go_start = night + timedelta(minutes=shift)
    premed = go_start - timedelta(minutes=gap)  # the exact elapsed gap is outside 30-90 min
    steroid = go_start - timedelta(minutes=20)
    labs = go_start - timedelta(hours=20)
    observations = observations_with(body_time=_wall(labs), lab_time=_wall(labs),
                                     cd33_time=_wall(go_start - timedelta(days=10)))
    premeds = (premed_order("P-A", ACETAMINOPHEN, "650", start=_wall(premed))
               + premed_order("P-D", DIPHENHYDRAMINE, "50", route="IV^Intravenous^HL70162",
                              start=_wall(go_start - timedelta(minutes=60)))
               + premed_order("P-M", METHYLPRED, "62", route="IV^Intravenous^HL70162", start=_wall(steroid)))
    message_time = go_start - timedelta(hours=6)
    text = adult_order_set(go=go_order(start=_wall(go_start), end=_wall(go_start + timedelta(hours=4)),
                                       duration="", observations=observations),
                           premeds=premeds, time=_wall(message_time))
    assert _go_control(text, tz=NY, received_at=message_time) != "OK"


@SETTINGS
@given(night=st.sampled_from(NIGHTS), shift=st.integers(-4 * 60, 4 * 60),
       minutes=st.one_of(st.integers(60, 224), st.integers(256, 400)))
def test_an_infusion_of_the_wrong_length_across_a_dst_night_is_never_accepted(night, shift, minutes):
    go_start = night + timedelta(minutes=shift)
    text = adult_order_set(go=go_order(start=_wall(go_start), end=_wall(go_start + timedelta(minutes=minutes)),
                                       duration=""))
    assert _go_control(text, tz=NY, received_at=go_start - timedelta(hours=2)) != "OK"


@SETTINGS
@given(days_later=st.integers(0, 27), label_first=st.booleans())
def test_a_dose_of_another_protocol_inside_a_course_is_never_accepted(days_later, label_first):
    day1 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    history = [HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number="D1",
                            control_id="C1", drug=Coded(code="1294580", system="RXNORM"), protocol_order=True,
                            protocol_id=LABEL if label_first else SEED, start=day1)]
    day = (day1 + timedelta(days=days_later)).strftime("%Y%m%d")
    if label_first:
        from tests.builders import go_dose_message
        text = go_dose_message("C2", day, placer="S2", premed_placers=("a", "b", "c"))
    else:
        text = with_indication(label_dose_message("C2", day, placer="L2", premed_placers=("a", "b", "c")),
                               "GO-LABEL-3MG")
    received = datetime.strptime(day, "%Y%m%d").replace(hour=8, minute=30, tzinfo=UTC)
    assert _go_control(text, protocol=PROTOCOLS, history=history, received_at=received) != "OK"


@SETTINGS
@given(first=st.integers(585, 715), second=st.integers(131, 715), drug=st.sampled_from(["a", "d"]))
def test_a_premed_split_into_two_orders_that_add_up_too_high_is_never_accepted(first, second, drug):
    if drug == "a":
        premeds = standard_premeds(acetaminophen=str(first)) + premed_order(
            "ORD1009", ACETAMINOPHEN, str(second), start="20261201091000")
    else:
        premeds = standard_premeds() + premed_order("ORD1009", DIPHENHYDRAMINE, str(second % 56 + 6),
                                                    route="IV^Intravenous^HL70162", start="20261201091000")
    assert _go_control(adult_order_set(premeds=premeds)) != "OK"


@SETTINGS
@given(unit=st.sampled_from(["mg/kg", "mL", "mg/m2/d", "unit", "mmol", "mcg/kg"]),
       text=st.sampled_from(["mg", "milligram", "mg/m2"]))
def test_a_go_dose_unit_read_by_its_text_is_never_accepted(unit, text):
    assert _go_control(adult_order_set(go=go_order(units=f"{unit}^{text}^UCUM"))) != "OK"


@SETTINGS
@given(code=st.sampled_from(["PO", "IM", "SC", "IT", "NG", "TOP", "INH"]),
       system=st.sampled_from(["HL70162", "", "L", "SCT"]))
def test_a_route_whose_code_is_not_iv_is_never_accepted_whatever_its_text(code, system):
    route = f"{code}^Intravenous^{system}" if system else f"{code}^Intravenous"
    assert _go_control(adult_order_set(go=go_order(route=route))) != "OK"


@SETTINGS
@given(mg=st.one_of(st.decimals("0.5", "14.4", places=1), st.decimals("16.0", "60", places=1)),
       split=st.booleans())
def test_an_admixture_with_the_wrong_go_amount_is_never_accepted(mg, split):
    saline = "8000^sodium chloride 0.9%^L"
    additives = ([f"RXC|A|{GO_DRUG}|{mg / 2}|mg", f"RXC|A|{GO_DRUG}|{mg / 2}|mg"] if split
                 else [f"RXC|A|{GO_DRUG}|{mg}|mg"])
    bag = [orc("ORD1001"), rxe(saline, "100", "mL^mL^UCUM", rate="25", rate_units="mL/h"),
           "TQ1|1|||||240^min|20261201100000|20261201140000", rxr(), f"RXC|B|{saline}|100|mL", *additives]
    assert _go_control(adult_order_set(go=bag + standard_observations())) != "OK"


@SETTINGS
@given(low=st.integers(1, 29), high=st.integers(30, 300), sn=st.booleans())
def test_a_wbc_range_reaching_the_threshold_without_cytoreduction_is_never_accepted(low, high, sn):
    value, value_type = (f"^{low}^-^{high}", "SN") if sn else (f"{low}-{high}", "ST")
    observations = observations_with(replace={3: obx(3, WBC, value, "10*9/L^10*9/L^UCUM", value_type=value_type)})
    assert _go_control(adult_order_set(go=go_order(observations=observations))) != "OK"


@SETTINGS
@given(low=st.integers(0, 29), high=st.integers(30, 100))
def test_a_cd33_range_starting_below_the_minimum_is_never_accepted(low, high):
    observations = observations_with(replace={4: obx(4, CD33, f"{low}-{high}", "%^percent^UCUM", value_type="ST",
                                                     time="20261115120000")})
    assert _go_control(adult_order_set(go=go_order(observations=observations))) != "OK"


@SETTINGS
@given(timing=st.sampled_from([
    "TQ1|1||Q14D|||240^min|20261201100000|20261201140000",
    "TQ1|1||BID|||240^min|20261201100000|20261201140000",
    "TQ1|1|||0900~2100||240^min|20261201100000|20261201140000",
    "TQ1|1|||||240^min|20261201100000|20261201140000||||||3",
    "TQ1|1|||||240^min|20261201100000|20261201140000||||||x",
]), second=st.booleans())
def test_a_go_order_planning_more_than_one_start_is_never_accepted(timing, second):
    segs = go_order()
    segs[2] = timing
    if second:
        segs[2] = "TQ1|1|||||240^min|20261201100000|20261201140000"
        segs.insert(3, "TQ1|2|||||240^min|20261214100000|20261214140000")
    assert _go_control(adult_order_set(go=segs)) != "OK"


@SETTINGS
@given(rule=st.sampled_from(["go.eligibility", "go.cd33", "go.schedule", "go.patient", "go.orderset",
                             "hl7.structure", "go.dose"]),
       verifier=st.sampled_from(["PHARM17", "NURSE9", ""]))
def test_an_override_that_is_not_valid_never_accepts_the_order(rule, verifier):
    # the protocol marks only go.premedication overridable; go.dose is then not overridable either
    note = f"NTE|1||RXGATE-OVERRIDE {rule}: reason given"
    protocol = _protocol(overridable=("go.premedication",))
    assert _go_control(_overdosed(note, verifier=verifier), protocol=protocol) != "OK"
    assert "go.dose" in OVERRIDABLE_RULES
