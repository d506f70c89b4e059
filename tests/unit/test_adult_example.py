
from tests.builders import adult_order_set, judge_text, run


def test_builder_matches_shared_example_verdict():
    judgement = judge_text(adult_order_set())
    assert judgement.ack_code == "AA"
    assert [v.control for v in judgement.orders] == ["OK", "OK", "OK", "OK"]
    assert judgement.orders[0].protocol_order


def test_shared_example_is_accepted(shared_dir):
    text = (shared_dir / "samples/go/adult-day1-accept.hl7").read_bytes().decode()
    outcome = run(text)
    assert outcome.ack_code == "AA", outcome.result["findings"]
    assert [o["order_control"] for o in outcome.result["orders"]] == ["OK"] * 4
