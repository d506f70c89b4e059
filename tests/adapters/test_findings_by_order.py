"""Findings filed under the order they were found on, by order index, never by matching their text
(issue 13 item 8): three premeds refused with their GO dose have three `go.orderset` findings that read
alike; each belongs to its own order in the JSON result, the database, the detail the API and page show,
and the page's segment highlight."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from tests.builders import adult_order_set, go_order
from validator import InMemoryStore, load_protocol, process_text
from workers.http.segments import annotate_segments
from workers.store import open_sql_store
from workers.store.audit import get_message
from workers.store.records import finding_rows

WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
PREMEDS = ["ORD1002", "ORD1003", "ORD1004"]


def refused_dose_with_premeds() -> str:
    return adult_order_set("FO1", go=go_order(route="PO^Oral^HL70162"))  # GO refused (go.route): premeds too


def orderset(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["rule"] == "go.orderset"]


def test_json_findings_carry_their_order_index():
    [outcome] = process_text(refused_dose_with_premeds(), InMemoryStore(), load_protocol(),
                             tz=UTC, received_at=WHEN)
    found = orderset(outcome.result["findings"])
    assert len({f["message"] for f in found}) == 1  # the same text three times ...
    assert [f["order_index"] for f in found] == [1, 2, 3]  # ... on three orders
    assert all(f["order_index"] is None for f in outcome.result["findings"] if f["rule"] == "go.bsa")


def test_database_and_detail_file_each_finding_under_its_order(tmp_path):
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    store = open_sql_store(url, create=True)
    process_text(refused_dose_with_premeds(), store, load_protocol(), tz=UTC, received_at=WHEN)
    with sqlite3.connect(tmp_path / "rx.db") as conn:
        rows = conn.execute("SELECT order_index, placer_number FROM findings WHERE rule = 'go.orderset' "
                            "ORDER BY position").fetchall()
    assert rows == [(1, "ORD1002"), (2, "ORD1003"), (3, "ORD1004")]
    detail = get_message(store, 1, UTC)  # what GET /audit/messages/1 and the detail page show
    store.dispose()
    assert [f["placer_order_number"] for f in orderset(detail["findings"])] == PREMEDS


def test_a_result_stored_without_order_index_is_filed_by_position_not_by_text():
    same = {"rule": "go.orderset", "severity": "error", "location": "ORC-1", "message": "refused"}
    result = {"orders": [{"placer_order_number": "GO1", "findings": [dict(same, rule="go.route")]},
                         {"placer_order_number": "P1", "findings": [same]},
                         {"placer_order_number": "P2", "findings": [same]}],
              "findings": [{"rule": "go.bsa", "severity": "info", "location": None, "message": "m"},
                           dict(same, rule="go.route"), same, same]}
    assert [(r["order_index"], r["placer_number"]) for r in finding_rows(1, result)] == \
        [(None, None), (0, "GO1"), (1, "P1"), (2, "P2")]


def test_page_highlights_each_order_note_on_its_own_orc():
    text = refused_dose_with_premeds()
    [outcome] = process_text(text, InMemoryStore(), load_protocol(), tz=UTC,
                             received_at=WHEN)
    views = annotate_segments(text, orderset(outcome.result["findings"])[2:], outcome.response)  # the third
    marked = [v.occurrence for v in views if v.name == "ORC" and v.flagged]
    assert marked == [4]  # ORC 4 is the fourth order (index 3), the third premed — not the first premed's ORC
