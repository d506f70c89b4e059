"""go.route: GO is given intravenously (RXR-1 code IV, or text "intravenous")."""

from __future__ import annotations

import pytest

from tests.builders import adult_order_set, go_order, judge_text


def route_errors(route: str | None) -> tuple[list, object]:
    verdict = judge_text(adult_order_set(go=go_order(route=route))).orders[0]
    return [f for f in verdict.findings if f.rule == "go.route" and f.severity == "error"], verdict


def test_oral_route_is_refused():
    errors, verdict = route_errors("PO^Oral^HL70162")
    [found] = errors
    assert found.message == "route 'Oral' is not allowed for GO; expected IV"
    assert found.location.short() == "RXR-1"
    assert verdict.control == "UA"


@pytest.mark.parametrize("route", [
    "IV^Intravenous^HL70162",
    "iv^^HL70162",
    "IV",
    "^intravenous",  # the text counts when the code is empty
])
def test_iv_code_or_intravenous_text_is_accepted(route):
    """Routes by code first (docs/protocol.md, "Routes")."""
    errors, verdict = route_errors(route)
    assert errors == []
    assert verdict.control == "OK", verdict.findings


@pytest.mark.parametrize("route", ["IM^Intramuscular^HL70162", "SC^Subcutaneous^HL70162", "IT^Intrathecal^HL70162",
                                   "IVP^IV push^L"])
def test_other_routes_are_refused(route):
    errors, _ = route_errors(route)
    assert len(errors) == 1


def test_no_rxr_is_refused():
    errors, verdict = route_errors(None)
    [found] = errors
    assert "no route (RXR-1)" in found.message
    assert found.location.short() == "RXR-1"
    assert verdict.control == "UA"


def test_empty_rxr1_is_refused():
    errors, _ = route_errors("")
    [found] = errors
    assert "no route" in found.message


@pytest.mark.parametrize("route", ["IVINF^Intravenous infusion^L", "PO^Intravenous^HL70162", "PO^Intravenous",
                                   "47625008^INTRAVENOUS^SCT"])  # the bundled protocols have no route map
def test_a_code_that_is_not_iv_or_not_readable_is_refused_whatever_its_text(route):
    errors, verdict = route_errors(route)
    assert len(errors) == 1 and verdict.control == "UA"
