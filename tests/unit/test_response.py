"""The HL7 response: types, versions, ERR fields, ASCII (docs/interfaces.md §2)."""

from __future__ import annotations

import hl7
import pytest

from tests.builders import adult_order_set, go_order, msh, run
from tests.hl7check import check_response


def segments(response: str, name: str) -> list[str]:
    return [s for s in response.split("\r") if s.startswith(name + "|")]


def test_accepted_response_shape():
    response = run(adult_order_set("R1")).response
    check_response(response, "AA", "R1")
    msh_fields = segments(response, "MSH")[0].split("|")
    assert msh_fields[2:6] == ["RXGATE", "GENHOSP", "PHARMSYS", "GENHOSP"]
    assert msh_fields[8] == "RRE^O12^RRE_O12" and msh_fields[11] == "2.5.1"
    assert [s.split("|")[1] for s in segments(response, "ORC")] == ["OK"] * 4
    assert len(segments(response, "RXE")) == 4 and len(segments(response, "RXR")) == 4
    assert not segments(response, "ERR")


def test_refused_response_has_err_per_error_and_ascii_message():
    response = run(adult_order_set("R2", go=go_order(dose="18.5"))).response
    check_response(response, "AE", "R2")
    errs = segments(response, "ERR")
    dose_err = next(e for e in errs if "|go.dose|" in e).split("|")
    assert dose_err[2] == "RXE^1^3"
    assert dose_err[3] == "207^Application internal error^HL70357"
    assert dose_err[4] == "E"
    assert response.isascii()
    msa = segments(response, "MSA")[0].split("|")
    assert msa[1] == "AE" and msa[2] == "R2" and msa[3]  # MSA-3 reason before 2.7
    assert segments(response, "ORC")[0].split("|")[1] == "UA"


def test_v27_has_no_msa3():
    response = run(adult_order_set("R3", go=go_order(dose="18.5"), version="2.7")).response
    check_response(response, "AE", "R3")
    assert len(segments(response, "MSA")[0].split("|")) == 3


def test_v24_err_has_only_err1():
    response = run(adult_order_set("R4", go=go_order(dose="18.5"), version="2.4")).response
    check_response(response, "AE", "R4")
    err = next(e for e in segments(response, "ERR") if "go.dose" in e)
    fields = err.split("|")
    assert len(fields) == 2
    assert fields[1].startswith("RXE^1^3^207&")


@pytest.mark.parametrize(
    "mtype,version,expected",
    [
        ("RDE^O11^RDE_O11", "2.5.1", "RRE^O12^RRE_O12"),
        ("RDE^O25^RDE_O25", "2.6", "RRE^O26^RRE_O12"),
        ("OMP^O09^OMP_O09", "2.5.1", "ORP^O10^ORP_O10"),
        ("ORM^O01^ORM_O01", "2.4", "ORR^O02^ORR_O02"),
        ("RDE^O01", "2.3", "RRE^O02"),
    ],
)
def test_response_types(mtype, version, expected):
    text = adult_order_set("T", version=version).replace("RDE^O11^RDE_O11", mtype)
    response = run(text).response
    assert segments(response, "MSH")[0].split("|")[8] == expected
    assert segments(response, "MSH")[0].split("|")[11] == version
    check_response(response, run(text).ack_code, "T")


def test_rejection_is_ack_ar_in_251_for_bad_version():
    response = run(adult_order_set("V", version="2.2")).response
    check_response(response, "AR", "V")
    fields = segments(response, "MSH")[0].split("|")
    assert fields[11] == "2.5.1"
    assert fields[8].startswith("ACK")
    assert "|203^" in response


def test_control_id_with_delimiters_is_escaped():
    text = adult_order_set("A&B")
    response = run(text).response
    parsed = hl7.parse(response)
    assert "A" in str(parsed.segment("MSA")[2])
    assert "\\T\\" in segments(response, "MSA")[0]


def test_response_ids_unique_and_short():
    ids = {segments(run(adult_order_set(f"U{i}", mrn=f"M{i}")).response, "MSH")[0].split("|")[9] for i in range(50)}
    assert len(ids) == 50 and all(len(i) <= 20 for i in ids)


def test_non_ascii_in_echoed_order_is_transliterated():
    text = adult_order_set("NA").replace("acetaminophen^RXNORM", "paracétamol^RXNORM")
    response = run(text).response
    assert response.isascii() and "paracetamol" in response


def test_msh_only_message_rejected():
    outcome = run(msh("X1") + "\r")
    assert outcome.ack_code == "AR"
    check_response(outcome.response, "AR", "X1")
