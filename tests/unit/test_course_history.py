"""The course history through the service: cancellations, replacements, de-duplication, patient id."""

from __future__ import annotations

from tests.builders import (
    adult_order_set,
    cancel_message,
    go_dose_message,
    go_order,
    message,
    msh,
    pv1,
    rules_of,
    run,
    standard_premeds,
)
from validator import InMemoryStore

PATIENT = "MRN55501^GENHOSP"


def go_doses(store: InMemoryStore) -> list[tuple[str, str]]:
    return [(h.placer_number, f"{h.start:%Y%m%d%H%M}") for h in store.orders_for(PATIENT) if h.protocol_order]


def orc1_of_response(response: str) -> list[str]:
    return [seg.split("|")[1] for seg in response.split("\r") if seg.startswith("ORC|")]


def msa_of(response: str) -> list[str]:
    return next(seg for seg in response.split("\r") if seg.startswith("MSA|")).split("|")


def accepted_day1(store: InMemoryStore) -> None:
    outcome = run(go_dose_message("D1", "20261201"), store)
    assert outcome.ack_code == "AA", outcome.result["findings"]
    assert go_doses(store) == [("ORD1001", "202612011000")]


# --- cancellations --------------------------------------------------------------------------------

def test_cancel_of_future_dose_leaves_history_and_a_new_day1_is_accepted():
    store = InMemoryStore()
    accepted_day1(store)
    cancel = run(cancel_message("X1", "ORD1001", time="20261201083000"), store)
    assert cancel.ack_code == "AA"
    assert cancel.result["orders"][0]["order_control"] == "CR"
    assert orc1_of_response(cancel.response) == ["CR"]
    assert msa_of(cancel.response)[1] == "AA"
    assert not rules_of(cancel.result["orders"][0], "info") & {"go.cancel"}
    assert go_doses(store) == []
    # Without the cancellation this dose would be course day 5 (refused); now it is a new day 1.
    again = run(go_dose_message("D2", "20261205", placer="ORD1101"), store)
    assert "go.schedule" not in rules_of(again.result["orders"][0])
    assert again.ack_code == "AA", again.result["findings"]
    assert store.audit[-1].computed["ORD1101"]["course_day"] == 1
    assert store.audit[-1].computed["ORD1101"]["course_day1_date"] == "2026-12-05"


def test_cancel_one_second_before_start_leaves_history():
    store = InMemoryStore()
    accepted_day1(store)
    cancel = run(cancel_message("X1", "ORD1001", time="20261201095959"), store)
    assert cancel.result["orders"][0]["order_control"] == "CR"
    assert go_doses(store) == []


def test_cancel_of_started_dose_stays_in_history_with_info():
    store = InMemoryStore()
    accepted_day1(store)
    cancel = run(cancel_message("X1", "ORD1001", time="20261201120000"), store)
    assert cancel.ack_code == "AA"
    order = cancel.result["orders"][0]
    assert order["order_control"] == "CR"
    infos = [f for f in order["findings"] if f["rule"] == "go.cancel" and f["severity"] == "info"]
    assert len(infos) == 1 and "stays in the course history" in infos[0]["message"]
    assert "ERR|" not in cancel.response  # info findings are not ERR segments
    assert go_doses(store) == [("ORD1001", "202612011000")]
    # Day 14 still counts from the partly given day-1 dose.
    day14 = run(go_dose_message("D2", "20261214", placer="ORD2001"), store)
    assert "go.schedule" not in rules_of(day14.result["orders"][0])
    assert store.audit[-1].computed["ORD2001"]["course_day"] == 14
    day8 = run(go_dose_message("D3", "20261208", placer="ORD3001"), store)
    assert "go.schedule" in rules_of(day8.result["orders"][0])


def test_cancel_at_the_start_time_counts_as_started():
    # Safe reading: a dose whose start equals the request time may have begun; it keeps counting.
    store = InMemoryStore()
    accepted_day1(store)
    cancel = run(cancel_message("X1", "ORD1001", time="20261201100000"), store)
    assert cancel.result["orders"][0]["order_control"] == "CR"
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_cancel_of_unknown_order_is_uc_ae():
    store = InMemoryStore()
    accepted_day1(store)
    cancel = run(cancel_message("X1", "ORD9999"), store)
    assert cancel.ack_code == "AE"
    order = cancel.result["orders"][0]
    assert order["order_control"] == "UC"
    assert "go.cancel" in rules_of(order)
    assert orc1_of_response(cancel.response) == ["UC"]
    assert msa_of(cancel.response)[1] == "AE"
    assert "|go.cancel|" in cancel.response
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_cancel_from_another_sender_is_not_matched():
    store = InMemoryStore()
    accepted_day1(store)
    text = cancel_message("X1", "ORD1001").replace(msh("X1"), msh("X1", sender=("OTHERSYS", "GENHOSP")))
    cancel = run(text, store)
    assert cancel.result["orders"][0]["order_control"] == "UC"
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_cancel_for_another_patient_is_not_matched():
    store = InMemoryStore()
    accepted_day1(store)
    cancel = run(cancel_message("X1", "ORD1001", mrn="MRN00002"), store)
    assert cancel.result["orders"][0]["order_control"] == "UC"
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_cancel_twice_second_is_unable():
    store = InMemoryStore()
    accepted_day1(store)
    assert run(cancel_message("X1", "ORD1001"), store).result["orders"][0]["order_control"] == "CR"
    again = run(cancel_message("X2", "ORD1001"), store)
    assert again.result["orders"][0]["order_control"] == "UC"
    assert again.ack_code == "AE"


def test_discontinue_is_dr_and_unknown_is_ud():
    store = InMemoryStore()
    accepted_day1(store)
    unknown = run(cancel_message("X1", "ORD9999", control="DC"), store)
    assert unknown.result["orders"][0]["order_control"] == "UD"
    assert unknown.ack_code == "AE"
    assert "go.cancel" in rules_of(unknown.result["orders"][0])
    done = run(cancel_message("X2", "ORD1001", control="DC"), store)
    assert done.result["orders"][0]["order_control"] == "DR"
    assert done.ack_code == "AA"
    assert orc1_of_response(done.response) == ["DR"]
    assert go_doses(store) == []


def test_cancel_and_new_day1_in_one_message():
    # The cancellation applies before the message's new orders are judged: the new dose is day 1.
    store = InMemoryStore()
    assert run(go_dose_message("D1", "20261205"), store).ack_code == "AA"
    new = go_dose_message("D2", "20261203", placer="ORD1201")  # MSH-7 2026-12-03 08:30
    cancel_group = cancel_message("unused", "ORD1001", start="20261205100000").split("\r")[3:7]
    text = new.replace("PV1|1|I|ONC^4B^12\r", "PV1|1|I|ONC^4B^12\r" + "\r".join(cancel_group) + "\r")
    outcome = run(text, store)
    controls = {o["placer_order_number"]: o["order_control"] for o in outcome.result["orders"]}
    assert controls["ORD1001"] == "CR"
    # Without the cancellation the new dose would start before the latest accepted dose (refused).
    assert controls["ORD1201"] == "OK", outcome.result["findings"]
    assert outcome.ack_code == "AA"
    assert go_doses(store) == [("ORD1201", "202612031000")]


# --- replacement and other order control codes ------------------------------------------------------

def test_xo_replaces_the_accepted_order_in_history():
    store = InMemoryStore()
    accepted_day1(store)
    # Sent before the day-1 dose started (MSH-7 2026-12-01 08:30), moving it to the next day: judged as
    # a new order in place of the old one; without the replacement it would be course day 2.
    text = go_dose_message("D2", "20261202", control="XO", premed_placers=("ORD1012", "ORD1013", "ORD1014"))
    xo = run(text.replace("|20261202083000||RDE^O11", "|20261201083000||RDE^O11"), store)
    assert xo.result["orders"][0]["order_control"] == "OK", xo.result["findings"]
    assert "go.schedule" not in rules_of(xo.result["orders"][0])
    assert store.audit[-1].computed["ORD1001"]["course_day"] == 1
    assert go_doses(store) == [("ORD1001", "202612021000")]
    day14 = run(go_dose_message("D3", "20261215", placer="ORD2001"), store)
    assert "go.schedule" not in rules_of(day14.result["orders"][0])


def test_xo_of_a_started_dose_cannot_remove_it():
    """A partly given dose counts (docs/protocol.md, Cancellations): replacing it after its start is judged
    as another dose of the course and the original stays in the history."""
    store = InMemoryStore()
    accepted_day1(store)
    xo = run(go_dose_message("D2", "20261202", control="XO", premed_placers=("ORD1012", "ORD1013", "ORD1014")),
             store)
    assert xo.result["orders"][0]["order_control"] == "UA"
    assert "go.schedule" in rules_of(xo.result["orders"][0])
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_refused_xo_keeps_the_original_order():
    store = InMemoryStore()
    accepted_day1(store)
    xo = run(adult_order_set("D2", go=go_order("ORD1001", control="XO", route="PO^Oral^HL70162"),
                             premeds=standard_premeds(placers=("ORD1012", "ORD1013", "ORD1014"))), store)
    assert xo.result["orders"][0]["order_control"] == "UA"
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_unknown_order_control_is_refused():
    store = InMemoryStore()
    outcome = run(adult_order_set(go=go_order(control="SC")), store)
    assert outcome.ack_code == "AE"
    go = outcome.result["orders"][0]
    assert go["order_control"] == "UA"
    assert "hl7.order_control" in rules_of(go)
    assert "'SC'" in next(f["message"] for f in go["findings"] if f["rule"] == "hl7.order_control")
    assert go_doses(store) == []


# --- de-duplication ---------------------------------------------------------------------------------

def test_redelivery_gets_the_same_answer_and_counts_once():
    store = InMemoryStore()
    text = go_dose_message("DUP1", "20261201")
    first = run(text, store)
    second = run(text, store)
    assert not first.redelivered and second.redelivered
    assert second.response == first.response  # byte for byte, same response MSH-10
    assert second.result == first.result
    assert go_doses(store) == [("ORD1001", "202612011000")]
    assert len(store.audit) == 1
    assert len(store.deliveries) == 2


def test_redelivery_with_other_separators_and_mllp_is_the_same_message():
    store = InMemoryStore()
    text = go_dose_message("DUP1", "20261201")
    first = run(text, store)
    second = run("\x0b" + text.replace("\r", "\r\n") + "\x1c\r", store)
    assert second.redelivered
    assert second.response == first.response
    assert len(go_doses(store)) == 1


def test_same_control_id_other_content_is_rejected_and_not_stored():
    store = InMemoryStore()
    assert run(go_dose_message("DUP1", "20261201"), store).ack_code == "AA"
    other = run(go_dose_message("DUP1", "20261214", placer="ORD2001"), store)
    assert not other.redelivered
    assert other.ack_code == "AR"
    assert other.result["orders"] == []
    assert [f["rule"] for f in other.result["findings"]] == ["hl7.duplicate_control_id"]
    assert msa_of(other.response)[1] == "AR"
    assert go_doses(store) == [("ORD1001", "202612011000")]


def test_same_control_id_from_another_sender_is_a_new_message():
    store = InMemoryStore()
    assert run(go_dose_message("DUP1", "20261201"), store).ack_code == "AA"
    text = go_dose_message("DUP1", "20261214", placer="ORD2001").replace(
        "MSH|^~\\&|PHARMSYS|", "MSH|^~\\&|OTHERSYS|")
    other = run(text, store)
    assert other.ack_code != "AR"
    assert not other.redelivered


# --- patient identifier --------------------------------------------------------------------------------

def test_message_without_pid3_refuses_every_go_order():
    day14 = go_order("ORD1005", start="20261214100000", end="20261214140000", observations=[])
    text = message(
        msh("NOPID"), "PID|1||||DOE^JANE^A||19660412|F", pv1(),
        go_order("ORD1001"), standard_premeds(), day14,
    )
    store = InMemoryStore()
    outcome = run(text, store)
    assert outcome.ack_code == "AE"
    go = [o for o in outcome.result["orders"] if o["protocol_order"]]
    assert len(go) == 2
    for order in go:
        assert order["order_control"] == "UA"
        assert "go.patient" in rules_of(order)
    assert store.orders == {} or all(not v for v in store.orders.values())


def test_message_with_pid3_has_no_patient_finding():
    outcome = run(adult_order_set(), InMemoryStore())
    assert "go.patient" not in rules_of(outcome.result["orders"][0])


def test_history_changed_while_judging_is_judged_again():
    """A store that reports a concurrent history change gets the message judged again on the new history."""
    from validator.history import HistoryChanged

    class RacingStore(InMemoryStore):
        def __init__(self):
            super().__init__()
            self.raced = False

        def save(self, processed):
            if not self.raced and processed.new_orders:
                # another worker accepts a day-1 dose for the same patient between our read and our save
                self.raced = True
                super().save(rival)
                raise HistoryChanged("changed")
            super().save(processed)

    store = RacingStore()
    other = InMemoryStore()
    run(go_dose_message("R0", "20261201", placer="RIVAL"), other)
    rival = other.audit[-1].model_copy(update={"key": None})
    outcome = run(go_dose_message("R1", "20261201"), store)
    assert store.raced
    assert outcome.result["orders"][0]["order_control"] == "UA"
    assert "go.schedule" in rules_of(outcome.result["orders"][0])


def test_orc_without_rxe_is_refused_but_a_bare_cancel_is_fine():
    store = InMemoryStore()
    text = adult_order_set("B1", extra_orders=["ORC|NW|EMPTY1||GRP501"])
    outcome = run(text, store)
    empty = outcome.result["orders"][-1]
    assert empty["order_control"] == "UA" and "hl7.structure" in rules_of(empty)
    assert outcome.result["orders"][0]["order_control"] == "OK"  # the GO order keeps its own outcome
    cancel = run("\r".join(["MSH|^~\\&|PHARMSYS|GENHOSP|RXGATE|GENHOSP|20261201083000||RDE^O11^RDE_O11|B2|P|2.5.1",
                            "PID|1||MRN55501^^^GENHOSP^MR||DOE^JANE^A||19660412|F", "ORC|CA|ORD1001"]) + "\r", store)
    assert cancel.ack_code == "AA" and cancel.result["orders"][0]["order_control"] == "CR"
    only_orc = run("\r".join(["MSH|^~\\&|PHARMSYS|GENHOSP|RXGATE|GENHOSP|20261201083000||RDE^O11^RDE_O11|B3|P|2.5.1",
                              "PID|1||MRN9^^^GENHOSP^MR||DOE^JANE^A||19660412|F", "ORC|NW|X1"]) + "\r", store)
    assert only_orc.ack_code == "AR" and "|101^" in only_orc.response
