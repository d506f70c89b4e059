"""Protocols as data: loading, errors, the label regimen as a second file, per-order choice."""

from __future__ import annotations

import ast
import hashlib
import re

import pytest

from tests.builders import (
    BILI,
    UTC,
    adult_order_set,
    go_dose_message,
    go_order,
    obx,
    premed_order,
    rules_of,
    run,
    standard_observations,
    standard_premeds,
)
from tests.paths import ROOT
from validator import InMemoryStore, ProtocolError, load_protocol
from validator.protocol import BUNDLED_DIR, ProtocolSet, bundled_ids, load_protocol_set, parse_protocol

SEED = "go-rr-9mg-d1-d14"
LABEL = "go-rr-label-3mg-d1-d4-d7"


def both() -> ProtocolSet:
    return load_protocol_set(SEED)


def test_bundled_protocols_load_with_file_hash_as_version():
    assert {SEED, LABEL} <= set(bundled_ids())
    for pid in (SEED, LABEL):
        p = load_protocol(pid)
        assert p.id == pid
        assert p.version == hashlib.sha256((BUNDLED_DIR / f"{pid}.yaml").read_bytes()).hexdigest()


def test_malformed_protocol_names_the_field(tmp_path):
    text = (BUNDLED_DIR / f"{SEED}.yaml").read_text().replace("mg_per_m2: 9", "mg_per_m2: nine")
    with pytest.raises(ProtocolError) as exc:
        parse_protocol(text.encode(), "bad.yaml")
    assert "bad.yaml" in str(exc.value) and "dose.mg_per_m2" in str(exc.value)
    with pytest.raises(ProtocolError, match="dose"):
        parse_protocol((BUNDLED_DIR / f"{SEED}.yaml").read_text().replace("dose:\n  mg_per_m2", "dosage:\n  mg_per_m2").encode())
    with pytest.raises(ProtocolError, match="neither a bundled protocol"):
        load_protocol(tmp_path / "nope.yaml")


def test_no_protocol_number_is_a_literal_in_rule_code():
    """Every clinical number lives in the protocol file: no rule module holds one as a constant.

    (Field numbers, unit conversions such as 60/3600 and display rounding are not protocol numbers.)
    """
    clinical = {9, 18, 28, 30, 72, 90, 240, 650, 4.5, 15, 50, 0.9, 1.1, 1.05, 0.95, 2.5}
    for path in (ROOT / "validator" / "rules").glob("*.py"):
        tree = ast.parse(path.read_text())
        numbers = {n.value for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)}
        assert not numbers & clinical, (path.name, numbers & clinical)


def label_dose_message(control: str, day: str, **kw) -> str:
    """The adult example on `day` under the label: 4.5 mg (3 mg/m2 x 1.686 m2 = 5.06, capped) over 120 min."""
    text = go_dose_message(control, day, **kw)
    text = text.replace("|1294580^gemtuzumab ozogamicin^RXNORM|15.2||", "|1294580^gemtuzumab ozogamicin^RXNORM|4.5||")
    return re.sub(r"TQ1\|1\|\|\|\|\|240\^min\|(\d{8})100000\|\d{14}", r"TQ1|1|||||120^min|\g<1>100000|\g<1>120000", text)


def test_same_order_set_under_both_protocols():
    seed_set = adult_order_set("S1")
    label_set = label_dose_message("L1", "20261201")
    seed_under_seed = run(seed_set, protocol=load_protocol(SEED))
    seed_under_label = run(seed_set, protocol=load_protocol(LABEL))
    label_under_label = run(label_set, protocol=load_protocol(LABEL))
    label_under_seed = run(label_set, protocol=load_protocol(SEED))
    assert seed_under_seed.ack_code == "AA"
    assert label_under_label.ack_code == "AA", label_under_label.result["findings"]
    assert {"go.dose", "go.infusion"} <= rules_of(seed_under_label.result["orders"][0])
    assert {"go.dose", "go.infusion"} <= rules_of(label_under_seed.result["orders"][0])
    cap = next(f for f in seed_under_label.result["orders"][0]["findings"] if f["rule"] == "go.dose")
    assert "4.5" in cap["message"]


def test_label_days_1_4_7_then_a_fourth_dose_refused():
    store = InMemoryStore()
    label = load_protocol(LABEL)
    for n, day in enumerate(("20261201", "20261204", "20261207")):
        outcome = run(label_dose_message(f"L{n}", day, placer=f"GO{n}",
                                         premed_placers=(f"A{n}", f"B{n}", f"C{n}")), store, protocol=label)
        assert outcome.ack_code == "AA", (day, outcome.result["findings"])
    fourth = run(label_dose_message("L9", "20261210", placer="GO9", premed_placers=("A9", "B9", "C9")), store,
                 protocol=label)
    assert "go.schedule" in rules_of(fourth.result["orders"][0])


def test_label_day_14_refused():
    store = InMemoryStore()
    label = load_protocol(LABEL)
    run(label_dose_message("L1", "20261201"), store, protocol=label)
    day14 = run(label_dose_message("L2", "20261214", placer="GO2", premed_placers=("A2", "B2", "C2")), store,
                protocol=label)
    assert "go.schedule" in rules_of(day14.result["orders"][0])


def test_label_accepts_dexamethasone_equivalent_seed_does_not():
    # 62 kg x 1 mg/kg methylprednisolone = 62 mg = 11.625 mg dexamethasone (x 0.1875)
    premeds = standard_premeds()[:8] + premed_order("ORD1004", "3264^dexamethasone^RXNORM", "11.6",
                                                    route="IV^Intravenous^HL70162", start="20261201094000")
    text = label_dose_message("D1", "20261201")
    text = text.split("ORC|NW|ORD1001-A")[0].rstrip("\r") + "\r" + "\r".join(premeds) + "\r"
    assert run(text, protocol=load_protocol(LABEL)).ack_code == "AA"
    seed_text = adult_order_set("D2", premeds=premeds)
    assert "go.premedication" in rules_of(run(seed_text, protocol=load_protocol(SEED)).result["orders"][0])


def test_liver_limit_is_a_warning_in_seed_and_an_error_in_label():
    obs = standard_observations()
    obs[4] = obx(5, BILI, "3.0", "mg/dL^mg/dL^UCUM", ref_range="0.2-1.2")
    seed = run(adult_order_set("B1", go=go_order(observations=obs)), protocol=load_protocol(SEED))
    assert seed.ack_code == "AA" and "go.liver" in rules_of(seed.result["orders"][0], "warning")
    label_text = label_dose_message("B2", "20261201").replace(
        "1975-2^Bilirubin.total [Mass/volume] in Serum or Plasma^LN||0.8|", "1975-2^Bilirubin.total [Mass/volume] in Serum or Plasma^LN||3.0|")
    label = run(label_text, protocol=load_protocol(LABEL))
    assert "go.liver" in rules_of(label.result["orders"][0])


def with_indication(text: str, code: str) -> str:
    """Put `code` in RXE-27 of the GO order."""
    lines = text.split("\r")
    for i, line in enumerate(lines):
        if line.startswith("RXE||1294580"):
            fields = line.split("|") + [""] * 30
            fields[27] = code
            lines[i] = "|".join(fields[:28])
    return "\r".join(lines)


def test_order_names_its_protocol_in_rxe27():
    label_set = with_indication(label_dose_message("P1", "20261201"), "GO-LABEL-3MG^Mylotarg label regimen")
    outcome = run(label_set, protocol=both())
    assert outcome.ack_code == "AA", outcome.result["findings"]
    assert outcome.result["orders"][0]["protocol"]["id"] == LABEL
    default = run(adult_order_set("P2"), protocol=both())
    assert default.ack_code == "AA" and default.result["orders"][0]["protocol"]["id"] == SEED


def test_unknown_protocol_code_is_refused():
    outcome = run(with_indication(adult_order_set("P3"), "GO-NOSUCH"), protocol=both())
    go = outcome.result["orders"][0]
    assert go["order_control"] == "UA" and "go.protocol" in rules_of(go)
    assert next(f for f in go["findings"] if f["rule"] == "go.protocol")["location"] == "RXE-27"


def test_other_indications_do_not_name_a_protocol():
    outcome = run(with_indication(adult_order_set("P4"), "C92.00^AML^I10"), protocol=both())
    assert outcome.ack_code == "AA"


@pytest.mark.parametrize("field,edit", [
    ("ORC-4", lambda t: t.replace("ORC|NW|ORD1001||GRP501", "ORC|NW|ORD1001||GO-LABEL-3MG-501")),
    ("NTE", lambda t: t.replace("RXR|IV^Intravenous^HL70162\rOBX|1", "RXR|IV^Intravenous^HL70162\rNTE|1||protocol: GO-LABEL-3MG\rOBX|1", 1)),
])
def test_other_selector_fields(field, edit):
    protocols = load_protocol_set(SEED, field)
    outcome = run(edit(label_dose_message("F1", "20261201")), protocol=protocols)
    assert outcome.result["orders"][0]["protocol"]["id"] == LABEL, outcome.result["findings"]
    assert outcome.ack_code == "AA", outcome.result["findings"]


def test_unknown_selector_field_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        load_protocol_set(SEED, "PID-3")


def test_courses_span_protocols():
    """A label dose counts in the patient's course: a seed dose 4 days later is refused (docs/protocol.md, "Course")."""
    store = InMemoryStore()
    run(with_indication(label_dose_message("C1", "20261201"), "GO-LABEL-3MG"), store, protocol=both())
    seed = run(go_dose_message("C2", "20261205", placer="S2", premed_placers=("a", "b", "c")), store, protocol=both())
    assert "go.schedule" in rules_of(seed.result["orders"][0])
    _ = UTC
