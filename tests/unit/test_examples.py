"""The bundled examples give the answers examples/expected.json (and the README) promise."""

from __future__ import annotations

import json

from tests.builders import UTC
from tests.hl7check import check_response
from tests.paths import EXAMPLES
from validator import InMemoryStore, load_protocol, process_text
from validator.er7 import decode


def test_examples_run_together_give_expected_answers():
    expected = json.loads((EXAMPLES / "expected.json").read_text())
    store = InMemoryStore()
    protocol = load_protocol()
    assert len(expected) >= 12
    for name in sorted(expected):
        outcome = process_text(decode((EXAMPLES / name).read_bytes()), store, protocol, tz=UTC)[0]
        want = expected[name]
        assert outcome.ack_code == want["ack_code"], (name, outcome.result["findings"])
        check_response(outcome.response, want["ack_code"], outcome.control_id)
        if want["rule"]:
            errors = {f["rule"] for f in outcome.result["findings"] if f["severity"] == "error"}
            go_errors = {f["rule"] for o in outcome.result["orders"] if o["protocol_order"] for f in o["findings"]
                         if f["severity"] == "error"} or errors
            # a refused example violates exactly one rule on its GO order(s)
            assert go_errors == {want["rule"]}, (name, go_errors)


def test_refused_examples_stand_alone():
    """Each single-violation example is refused for its rule even without the others' history."""
    expected = json.loads((EXAMPLES / "expected.json").read_text())
    for name, want in expected.items():
        if name.startswith("refused-"):
            outcome = process_text(decode((EXAMPLES / name).read_bytes()), InMemoryStore(), load_protocol(), tz=UTC)[0]
            assert outcome.ack_code == "AE", name
            assert want["rule"] in {f["rule"] for f in outcome.result["findings"]}, name
