"""validator/service.py: the typed result built in one place, and `Order.is_new` for every rule."""

from __future__ import annotations

from tests.builders import adult_order_set, judge_text, rules_of, run
from validator.model import Order
from validator.service import CheckResult


def test_judged_result_has_the_documented_keys_in_order():
    result = run(adult_order_set("R1")).result
    assert list(result) == ["control_id", "message_type", "ack_code", "patient_id", "orders", "findings",
                            "protocol", "response"]
    assert result["ack_code"] == "AA" and result["patient_id"] == "MRN55501"


def test_rejected_result_is_built_by_the_same_model():
    result = run("MSH|^~\\&|A|B|C|D|20261201083000||ADT^A01|X1|P|2.5.1\r").result
    rebuilt = CheckResult.rejected(None, "x", "y", None, "z").to_json()
    assert set(result) == set(rebuilt)
    assert result["ack_code"] == "AR" and result["orders"] == []


def test_is_new_compares_the_control_as_read():
    assert Order(index=0, control="NW").is_new and Order(index=0, control="").is_new
    assert Order(index=0, control="XO").is_new and Order(index=0, control="RP").is_new
    assert not Order(index=0, control="CA").is_new
    # not normalised (built by hand): not a new order, as the engine refuses it
    assert not Order(index=0, control="nw").is_new and not Order(index=0, control=" NW").is_new


def test_reader_normalises_orc1_so_a_lower_case_nw_is_a_new_order_everywhere():
    text = adult_order_set("R2").replace("ORC|NW|ORD1002", "ORC| nw |ORD1002")
    judgement = judge_text(text)
    premed = next(v for v in judgement.orders if v.order.placer_number == "ORD1002")
    assert premed.order.is_new and premed.control == "OK"
    assert judgement.ack_code == "AA"


def test_a_cancelled_premed_in_the_same_message_is_no_evidence():
    # the acetaminophen of the message is a CA: not evidence for go.premedication
    text = adult_order_set("R3").replace("ORC|NW|ORD1002", "ORC|CA|ORD1002")
    assert "go.premedication" in rules_of(judge_text(text).orders[0])

