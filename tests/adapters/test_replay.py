"""`rxgate replay` (docs/interfaces.md §5 "Operators"): a day of traffic judged again, against a scratch history."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.builders import adult_order_set, go_dose_message, go_order
from tests.paths import ROOT
from workers.bootstrap import bootstrap
from workers.cli.replay import register
from workers.cli.usage import UsageError
from workers.settings import Settings
from workers.store import open_sql_store, verify_chain

# mg of GO per patient on 2026-12-01; the expected dose of the standard adult is ~15.1 mg
DOSES = {"RP01": "15.2", "RP02": "15.7", "RP03": "14.6", "RP04": "16.6", "RP05": "15.1", "RP06": "14.5"}


def _within(dose: str, percent: float) -> bool:
    return abs(float(dose) - 15.12) / 15.12 * 100 <= percent


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A day of traffic (Dec 1) judged with the bundled protocol, after a course started on Nov 17 (day 1 of
    patient RPH, whose day-14 dose comes on Nov 30 and must be judged against that history)."""
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RXGATE_PROTOCOL", raising=False)
    url = f"sqlite:///{tmp_path / 'live.db'}"
    service = bootstrap(Settings(database_url=url))
    service.process(go_dose_message("RH01", "20261117", mrn="RPH"), received_at=datetime(2026, 11, 17, 8, tzinfo=UTC))
    service.process(go_dose_message("RX01", "20261129", mrn="RPX"), received_at=datetime(2026, 11, 29, 8, tzinfo=UTC))
    for n, (cid, dose) in enumerate(DOSES.items()):
        text = adult_order_set(cid, mrn=f"M{cid}", go=go_order(dose=dose))
        service.process(text, received_at=datetime(2026, 12, 1, 8, n, tzinfo=UTC))
    day14 = go_dose_message("RH14", "20261130", mrn="RPH")
    service.process(day14, received_at=datetime(2026, 12, 1, 9, tzinfo=UTC))
    service.process(day14, received_at=datetime(2026, 12, 1, 9, 5, tzinfo=UTC))  # a redelivery: counted once
    # patient RPX (RX01 above, Nov 29), another dose only two days later: refused because of that history
    too_soon = service.process(go_dose_message("RX02", "20261201", mrn="RPX", placer="ORD2001"),
                               received_at=datetime(2026, 12, 1, 10, tzinfo=UTC))
    assert too_soon[0].ack_code == "AE"  # judged against the Nov 29 dose: seeding the scratch history matters
    service.store.dispose()
    return url


def replay(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["replay", *argv])
    out, err = io.StringIO(), io.StringIO()
    return args.func(args, out=out, err=err), out.getvalue(), err.getvalue()


def live_state(url: str):
    store = open_sql_store(url, create=False)
    try:
        with store.engine.connect() as conn:
            history = conn.exec_driver_sql("SELECT count(*) FROM course_history").scalar()
            keys = conn.exec_driver_sql("SELECT count(*) FROM message_keys").scalar()
        return store.head(), history, keys, verify_chain(store).intact
    finally:
        store.dispose()


def edited_protocol(tmp_path: Path) -> Path:
    text = (ROOT / "protocols" / "go-rr-9mg-d1-d14.yaml").read_text()
    assert "  tolerance_percent: 5 " in text
    path = tmp_path / "go-3pct.yaml"
    path.write_text(text.replace("  tolerance_percent: 5 ", "  tolerance_percent: 3 ", 1))
    return path


def test_the_protocol_it_was_judged_with_changes_nothing(db):
    before = live_state(db)
    code, out, _err = replay("--db", db, "--since", "2026-12-01", "--format", "json")
    assert code == 0
    [summary] = [json.loads(line) for line in out.splitlines()]
    assert summary["summary"]["changed"] == 0
    assert summary["summary"]["replayed"] == len(DOSES) + 2  # the day's messages, RH14 and RX02 included
    assert live_state(db) == before  # nothing written to the live history, keys or chain


def test_an_edited_protocol_lists_exactly_the_messages_whose_verdict_changes(db, tmp_path):
    before = live_state(db)
    code, out, _err = replay("--db", db, "--since", "2026-12-01", "--protocol", str(edited_protocol(tmp_path)),
                             "--format", "json")
    lines = [json.loads(line) for line in out.splitlines()]
    changes, summary = lines[:-1], lines[-1]["summary"]
    expected = sorted(cid for cid, dose in DOSES.items() if _within(dose, 5) != _within(dose, 3))
    assert expected  # the fixture has doses between 3 % and 5 % off
    assert code == 1
    assert sorted(c["control_id"] for c in changes) == expected
    for c in changes:
        assert c["old"]["ack"] == "AA" and c["new"]["ack"] == "AE" and "go.dose" in c["new"]["rules"]
    assert summary["changed"] == len(expected) and summary["transitions"] == {"AA->AE": len(expected)}
    assert live_state(db) == before


def test_table_and_csv_and_progress(db, tmp_path):
    protocol = str(edited_protocol(tmp_path))
    code, out, err = replay("--db", db, "--protocol", protocol, "--progress-every", "3")
    assert code == 1
    assert "AA -  ->  AE go.dose" in out and "would change (AA -> AE: 3)" in out
    assert "rxgate replay: 3 of 10 records" in err and "rxgate replay: 10 of 10 records" in err
    code, out, err = replay("--db", db, "--protocol", protocol, "--format", "csv", "--patient", "MRP02")
    assert out.splitlines() == ["id,received_at,control_id,old_ack,old_rules,new_ack,new_rules",
                                out.splitlines()[1]] and ",RP02,AA,,AE," in out
    assert "replayed 1 messages" in err


def test_without_since_the_whole_log_is_replayed_from_an_empty_history(db):
    code, out, _err = replay("--db", db)
    assert code == 0 and "replayed 10 messages" in out and "0 would change" in out


def test_usage_errors(db, tmp_path):
    for argv, words in [(["--protocol", "no-such-protocol"], "--protocol"),
                        (["--since", "2026-02-30"], "since"),
                        (["--db", f"sqlite:///{tmp_path / 'none.db'}"], "no rxgate audit log")]:
        with pytest.raises(UsageError, match=words):
            replay(*(["--db", db] if "--db" not in argv else []), *argv)
