"""The order's own protocol governs everything about that order (docs/protocol.md, "Which orders
are protocol orders"): the premeds refused with it (go.orderset), which steroids count, the
observation validity window and the premed belonging window — not the service's default."""

from __future__ import annotations

from decimal import Decimal

from tests.builders import METHYLPRED, judge_text, observations_with, obx, premed_order, rules_of
from tests.unit.test_protocols import LABEL, SEED, label_dose_message, with_indication
from validator import load_protocol
from validator.protocol import ProtocolSet

DEXAMETHASONE = "3264^dexamethasone^RXNORM"


def _label_set() -> ProtocolSet:
    return ProtocolSet(load_protocol(SEED), [load_protocol(LABEL)])


def _custom(**premedication_or_observations) -> ProtocolSet:
    """The seed default plus a copy of the label protocol (id go-custom) with some parameters changed."""
    label = load_protocol(LABEL)
    update: dict = {"id": "go-custom", "order_codes": ["GO-CUSTOM"]}
    if "belongs_within_hours" in premedication_or_observations:
        update["premedication"] = label.premedication.model_copy(
            update={"belongs_within_hours": Decimal(premedication_or_observations["belongs_within_hours"])})
    if "future_tolerance_minutes" in premedication_or_observations:
        update["observations"] = label.observations.model_copy(
            update={"future_tolerance_minutes": Decimal(premedication_or_observations["future_tolerance_minutes"])})
    return ProtocolSet(load_protocol(SEED), [label.model_copy(update=update)])


def _with_dexamethasone(text: str, mg: str) -> str:
    return text.replace(f"RXE||{METHYLPRED}|62||", f"RXE||{DEXAMETHASONE}|{mg}||")


def _by_placer(judgement, placer: str):
    return next(v for v in judgement.orders if v.order.placer_number == placer)


def test_label_dose_with_a_dexamethasone_premed_is_accepted():
    # 62 kg x 1 mg/kg methylprednisolone x 0.1875 = 11.625 mg dexamethasone
    text = with_indication(_with_dexamethasone(label_dose_message("L1", "20261201"), "11.625"), "GO-LABEL-3MG")
    judgement = judge_text(text, protocol=_label_set())
    assert judgement.ack_code == "AA", [f.message for f in judgement.findings]
    assert judgement.orders[0].computed["protocol_id"] == LABEL


def test_the_steroid_equivalent_of_a_refused_label_dose_is_refused_with_it():
    text = label_dose_message("L2", "20261201").replace("RXE||1294580^gemtuzumab ozogamicin^RXNORM|4.5||",
                                                      "RXE||1294580^gemtuzumab ozogamicin^RXNORM|9||")
    text = with_indication(_with_dexamethasone(text, "11.625"), "GO-LABEL-3MG")
    judgement = judge_text(text, protocol=_label_set())
    assert judgement.orders[0].control == "UA" and "go.dose" in rules_of(judgement.orders[0])
    steroid = _by_placer(judgement, "ORD1001-M")
    assert steroid.control == "UA" and "go.orderset" in rules_of(steroid)


def test_an_overdosed_steroid_equivalent_refuses_the_dose_and_is_refused():
    text = with_indication(_with_dexamethasone(label_dose_message("L3", "20261201"), "40"), "GO-LABEL-3MG")
    judgement = judge_text(text, protocol=_label_set())
    assert "go.premedication" in rules_of(judgement.orders[0])
    assert "dexamethasone ORD1001-M: dose 40 mg" in " ".join(f.message for f in judgement.orders[0].findings)
    steroid = _by_placer(judgement, "ORD1001-M")
    assert steroid.control == "UA" and "go.orderset" in rules_of(steroid)


def test_the_observation_validity_window_is_the_orders_protocol():
    # MSH-7 2026-12-01 08:30; WBC at 09:00 is 30 min after it: valid under 60 min, invalid under 0
    text = label_dose_message("L4", "20261201")
    text = text.replace("OBX|3|NM|6690-2", "OBX|3|NM|6690-2", 1)
    observations_note = obx(3, "6690-2^Leukocytes^LN", "8.4", "10*9/L^10*9/L^UCUM", time="20261201090000")
    text = text.replace(text.split("\r")[next(i for i, s in enumerate(text.split("\r")) if s.startswith("OBX|3|"))],
                        observations_note)
    accepted = judge_text(with_indication(text, "GO-LABEL-3MG"), protocol=_label_set())
    assert accepted.ack_code == "AA", [f.message for f in accepted.findings]
    strict = judge_text(with_indication(text, "GO-CUSTOM"), protocol=_custom(future_tolerance_minutes=0))
    assert "go.observation_time" in {f.rule for f in strict.message_findings}
    assert "go.wbc" in rules_of(strict.orders[0])


def test_the_belonging_window_is_the_orders_protocol():
    # The custom protocol's premeds belong within 6 h: an acetaminophen 5 h before a refused dose falls with it.
    text = label_dose_message("L5", "20261201").replace("RXE||1294580^gemtuzumab ozogamicin^RXNORM|4.5||",
                                                      "RXE||1294580^gemtuzumab ozogamicin^RXNORM|9||")
    extra = premed_order("EXTRA", "161^acetaminophen^RXNORM", "650", start="20261201050000")
    text = text + "\r".join(extra) + "\r"
    judgement = judge_text(with_indication(text, "GO-CUSTOM"), protocol=_custom(belongs_within_hours=6))
    assert judgement.orders[0].control == "UA"
    extra_verdict = _by_placer(judgement, "EXTRA")
    assert extra_verdict.control == "UA" and "go.orderset" in rules_of(extra_verdict)
    assert "acetaminophen EXTRA starts 300 min before" in " ".join(f.message for f in judgement.orders[0].findings)
    _ = observations_with


# --- one course across protocols ---------------------------------------------------------------------


def _run_both(*texts):
    from tests.builders import run
    from validator import InMemoryStore
    from validator.protocol import load_protocol_set

    store = InMemoryStore()
    return [run(t, store, protocol=load_protocol_set(SEED)) for t in texts]


def test_a_label_dose_three_days_after_a_seed_day_1_is_not_a_new_course():
    from tests.builders import go_dose_message

    seed_day1, label = _run_both(
        go_dose_message("C1", "20261201"),
        with_indication(label_dose_message("C2", "20261204", placer="L2", premed_placers=("a", "b", "c")),
                        "GO-LABEL-3MG"))
    assert seed_day1.ack_code == "AA"
    order = label.result["orders"][0]
    assert order["order_control"] == "UA" and "go.schedule" in rules_of(order)
    message = next(f["message"] for f in order["findings"] if f["rule"] == "go.schedule")
    assert f"patient is in a course of {SEED} started 2026-12-01; finish or cancel it first" in message


def test_a_seed_dose_inside_a_label_course_is_refused_and_after_it_starts_a_new_course():
    from tests.builders import go_dose_message

    label_day1, seed_inside, seed_after = _run_both(
        with_indication(label_dose_message("C1", "20261201"), "GO-LABEL-3MG"),
        go_dose_message("C2", "20261214", placer="S2", premed_placers=("a", "b", "c")),
        go_dose_message("C3", "20261229", placer="S3", premed_placers=("d", "e", "f")))
    assert label_day1.ack_code == "AA"
    assert "go.schedule" in rules_of(seed_inside.result["orders"][0])
    assert f"course of {LABEL} started 2026-12-01" in str(seed_inside.result["orders"][0]["findings"])
    assert seed_after.ack_code == "AA", seed_after.result["findings"]  # 2026-12-01 + 28 days: a new course
