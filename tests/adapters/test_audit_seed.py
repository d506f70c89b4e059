"""`rxgate audit seed`: a new database anchored on the old one, seeded with its recent history (docs/interfaces.md §5)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, update

from tests.builders import audit_cli, go_dose_message
from validator import load_protocol, process_text
from workers.cli.usage import UsageError
from workers.store import open_sql_store
from workers.store.schema import FindingRow, HistoryRow, MessageKeyRow
from workers.store.seed import default_days, seed_store

audit = audit_cli  # tests.builders: `rxgate audit` in-process


DAY1 = go_dose_message("S001", "20261201", placer="ORD1", mrn="SEEDMRN1")
DAY14 = go_dose_message("S014", "20261214", placer="ORD14", mrn="SEEDMRN1")
DAY5 = go_dose_message("S005", "20261205", placer="ORD5", mrn="SEEDMRN1")  # off schedule once day 1 is known


@pytest.fixture
def old_db(tmp_path, monkeypatch):
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = open_sql_store(url, create=True)
    try:
        (day1,) = process_text(DAY1, store, load_protocol(), tz=UTC)
        assert day1.ack_code == "AA"
    finally:
        store.dispose()
    return url, day1


def seeded(old_url: str, tmp_path) -> str:
    new_url = f"sqlite:///{tmp_path / 'new.db'}"
    code, out = audit("seed", "--from", old_url, "--db", new_url, "--days", "3650")
    assert code == 0 and "seeded 4 course history rows and 1 message keys"  # GO + 3 premeds in out
    return new_url


def test_seeded_database_judges_day_14_and_resends_against_the_old_history(old_db, tmp_path):
    old_url, day1 = old_db
    new_url = seeded(old_url, tmp_path)
    new = open_sql_store(new_url, create=False)
    try:
        (resend,) = process_text(DAY1, new, load_protocol(), tz=UTC)
        assert resend.result == day1.result and resend.response == day1.response  # the stored answer, byte for byte
        (day14,) = process_text(DAY14, new, load_protocol(), tz=UTC)
        assert day14.ack_code == "AA", day14.result["findings"]
        # the seeded day 1 is what the course is judged against: a day-5 dose is off its schedule
        (day5,) = process_text(DAY5, new, load_protocol(), tz=UTC)
        assert day5.ack_code == "AE" and "go.schedule" in {f["rule"] for f in day5.result["findings"]}
    finally:
        new.dispose()
    assert audit("verify", "--db", new_url)[1].startswith("audit chain intact: 3 records")  # anchor, day 14, day 5 (a resend writes none)
    # without the seed the same day-5 dose would start a course of its own
    bare = open_sql_store(f"sqlite:///{tmp_path / 'bare.db'}", create=True)
    try:
        (alone,) = process_text(DAY5, bare, load_protocol(), tz=UTC)
        assert alone.ack_code == "AA"
    finally:
        bare.dispose()


def test_seeded_chain_is_intact_and_its_first_record_names_the_old_head(old_db, tmp_path):
    old_url, _ = old_db
    code, old_head = audit("head", "--db", old_url)
    new_url = seeded(old_url, tmp_path)
    code, out = audit("verify", "--db", new_url)
    assert code == 0 and "intact: 1 records" in out
    new = open_sql_store(new_url, create=False)
    try:
        with new.read_session() as s:
            note = s.execute(select(FindingRow.message).where(FindingRow.message_id == 1)).scalar_one()
        assert old_head.strip() in note
    finally:
        new.dispose()
    assert audit("head", "--db", old_url)[1] == old_head  # the old database is untouched


@pytest.mark.parametrize("tamper", [
    delete(HistoryRow),
    delete(MessageKeyRow),
    update(MessageKeyRow).values(result='{"ack_code":"AA"}'),
    update(HistoryRow).values(start=datetime(2026, 11, 1, tzinfo=UTC)),
])
def test_tampering_with_the_seeded_rows_breaks_the_chain(old_db, tmp_path, tamper):
    new_url = seeded(old_db[0], tmp_path)
    new = open_sql_store(new_url, create=False)
    try:
        with new.engine.begin() as conn:
            conn.execute(tamper)
    finally:
        new.dispose()
    code, out = audit("verify", "--db", new_url)
    assert code == 1 and "BROKEN at sequence number 1" in out


def test_a_non_empty_target_is_refused(old_db, tmp_path):
    old_url, _ = old_db
    with pytest.raises(UsageError, match="not empty"):
        audit("seed", "--from", old_url, "--db", old_url)
    new_url = seeded(old_url, tmp_path)
    with pytest.raises(UsageError, match="not empty"):
        audit("seed", "--from", old_url, "--db", new_url)
    assert audit("verify", "--db", new_url)[1].startswith("audit chain intact: 1 records")


def test_seed_usage_errors(old_db, tmp_path):
    old_url, _ = old_db
    for argv, words in [
        (["seed", "--db", f"sqlite:///{tmp_path / 'n.db'}"], "--from"),
        (["seed", "--from", f"sqlite:///{tmp_path / 'missing.db'}", "--db", f"sqlite:///{tmp_path / 'n.db'}"],
         "missing.db"),
        (["seed", "--from", old_url, "--db", f"sqlite:///{tmp_path / 'n.db'}", "--days", "0"], "--days"),
        (["verify", "--from", old_url], "apply to `audit seed` only"),
    ]:
        with pytest.raises(UsageError, match=words):
            audit(*argv)
    assert not (tmp_path / "missing.db").exists()


def test_days_window_and_its_default(old_db, tmp_path):
    old = open_sql_store(old_db[0], create=False)
    new = open_sql_store(f"sqlite:///{tmp_path / 'w.db'}", create=True)
    try:
        # a year after day 1 nothing of the 30-day window is left; the anchor is still written
        result = seed_store(old, new, 30, now=datetime(2027, 12, 1, tzinfo=UTC))
        assert (result.history, result.keys) == (0, 0)
    finally:
        old.dispose()
        new.dispose()
    from validator.protocol import load_protocol_set
    from workers.settings import Settings

    settings = Settings()
    protocols = load_protocol_set(settings.protocol, settings.protocol_field)
    assert default_days(protocols) == max(p.schedule.course_days for p in protocols.protocols) + 60


def test_a_seeded_order_cancelled_in_the_new_database_verifies(old_db, tmp_path):
    from tests.builders import cancel_message

    new_url = seeded(old_db[0], tmp_path)
    new = open_sql_store(new_url, create=False)
    try:
        (cancel,) = process_text(cancel_message("S100", "ORD1", mrn="SEEDMRN1"), new, load_protocol(), tz=UTC)
        with new.read_session() as s:
            cancelled = s.execute(select(HistoryRow.cancelled_by).where(HistoryRow.placer_number == "ORD1")).scalar()
    finally:
        new.dispose()
    assert cancel.ack_code == "AA" and cancelled == 2  # the seeded day-1 row, cancelled by record 2
    code, out = audit("verify", "--db", new_url)
    assert code == 0 and "intact: 2 records" in out
