"""Overrides with a reason in the audit log: the record's overridden orders, `rxgate audit --overridden`,
the audit API's `overridden` filter and the auditor page (docs/protocol.md, "Overrides with a reason")."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from tests.adapters.test_audit_cli import audit
from tests.builders import AUDIT_AUTH as AUTH
from tests.builders import AUDIT_TOKEN_SHA as TOKEN_SHA
from tests.builders import adult_order_set
from tests.unit.test_overrides import _overdosed, _protocol
from validator import process_text
from workers.http.app import create_app
from workers.store import open_sql_store, parse_filter, query_messages

WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
REASON = "weight from today's bed scale, BSA rechecked by the ward"


def _log(url: str) -> None:
    store = open_sql_store(url, create=True)
    for text in (adult_order_set("PLAIN1", mrn="MRN77701"), _overdosed().replace("|T0001|", "|OVR1|")):
        [outcome] = process_text(text, store, _protocol(), tz=UTC, received_at=WHEN)
        assert outcome.ack_code == "AA", outcome.result["findings"]
    store.dispose()


def test_the_record_marks_the_overridden_order(sqlite_url):
    _log(sqlite_url)
    store = open_sql_store(sqlite_url, create=False)
    try:
        total, rows = query_messages(store, parse_filter(overridden=True), UTC)
        assert total == 1 and rows[0]["control_id"] == "OVR1"
        assert rows[0]["overrides"] == [{"order_index": 0, "placer_order_number": "ORD1001", "rule": "go.dose",
                                         "reason": REASON, "verified_by": "PHARM17"}]
        _total, everything = query_messages(store, parse_filter(), UTC)
        assert [r["overrides"] for r in everything][0] == []
    finally:
        store.dispose()


def test_rxgate_audit_overridden_lists_only_overridden_orders(sqlite_url):
    _log(sqlite_url)
    code, out = audit("--db", sqlite_url, "--overridden", "--format", "json")
    assert code == 0
    [line] = out.splitlines()
    assert json.loads(line)["control_id"] == "OVR1"
    code, table = audit("--db", sqlite_url, "--overridden")
    assert code == 0 and f"overridden: order ORD1001 go.dose by PHARM17: {REASON}" in table
    assert "PLAIN1" not in table


def test_the_auditor_page_and_api_show_the_override(sqlite_url):
    _log(sqlite_url)
    with TestClient(create_app(sqlite_url, TOKEN_SHA, tz=UTC)) as client:
        listed = client.get("/ui", params={"overridden": "1"}, headers=AUTH).text
        assert "OVR1" in listed and "PLAIN1" not in listed and "go.dose by PHARM17" in listed
        detail = client.get("/ui/messages/2", headers=AUTH).text
        assert 'id="overrides"' in detail and "PHARM17" in detail and "bed scale" in detail
        api = client.get("/audit/messages", params={"overridden": "true"}, headers=AUTH)
        assert api.status_code == 200, api.text
        assert [m["control_id"] for m in api.json()["items"]] == ["OVR1"]


def test_protocol_check_shows_the_new_parameters():
    from validator import load_protocol
    from workers.cli.protocol import summary

    bundled = summary(load_protocol())
    assert "overridable: none; override verifiers (ORC-11): none" in bundled
    assert "route: IV by code first (RXR-1.3 HL70162" in bundled and "other systems: none (unreadable)" in bundled
    assert "valid up to 60 min after MSH-7 (exact instants" in bundled
    site = summary(_protocol())
    assert "overridable: go.dose, go.premedication; override verifiers (ORC-11): PHARM17" in site
