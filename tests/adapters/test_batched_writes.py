"""Writes of many messages in one transaction (`BatchedStore`, `save_all`, the bridge's batches):
the same answers as one by one, each patient judged on the written history, nothing answered unwritten."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import fakeredis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from sqlalchemy import event, text

from tests.budget import examples
from tests.builders import UTC, adult_order_set, cancel_message, go_dose_message, rules_of
from tests.fakes import FakeClock
from validator import BatchedStore, InMemoryStore, load_protocol, process_text
from validator.history import HistoryChanged
from workers.bootstrap import bootstrap
from workers.queue.bridge import Bridge, ensure_group
from workers.settings import Settings
from workers.store import verify_chain


def texts_with_repeats() -> list[str]:
    """Distinct patients, a second day-1 dose for one of them, a redelivery and a reused control id."""
    texts = [adult_order_set(f"W{i:03d}", mrn=f"PW{i:03d}") for i in range(6)]
    texts.insert(3, go_dose_message("W900", "20261201", placer="ORD9", mrn="PW001"))  # P1 again: day 1 twice
    texts.insert(5, texts[0])  # redelivery of W000
    texts.append(adult_order_set("W002", mrn="PW002", dob="19700101"))  # W002 reused for other content
    return texts


def one_by_one(texts: list[str]) -> list[tuple[str, list]]:
    store = InMemoryStore()
    return [_summary(o) for t in texts for o in process_text(t, store, load_protocol(), tz=UTC)]


def batched(texts: list[str], store, flush_every: int | None = None) -> list[tuple[str, list]]:
    """The answers with every write held in a `BatchedStore` over `store`, written every `flush_every`
    messages and at the end (reads flush what they depend on in between)."""
    staged = BatchedStore(store)
    answers = []
    for i, t in enumerate(texts):
        answers.extend(_summary(o) for o in process_text(t, staged, load_protocol(), tz=UTC))
        if flush_every and (i + 1) % flush_every == 0:
            staged.flush()
    staged.flush()
    return answers


def _summary(outcome) -> tuple[str, list]:
    return outcome.ack_code, [(o["order_control"], sorted(rules_of(o))) for o in outcome.result["orders"]]


# --- the core wrapper ---------------------------------------------------------------------------


def test_held_writes_are_invisible_until_flush_then_written_together():
    inner = InMemoryStore()
    calls = []
    real = inner.save_all
    inner.save_all = lambda batch, deliveries=(): (calls.append(len(batch)), real(batch, deliveries))
    staged = BatchedStore(inner)
    for i in range(4):
        process_text(adult_order_set(f"H{i}", mrn=f"PH{i}"), staged, load_protocol(), tz=UTC)
    assert inner.audit == [] and staged.staged == 4 and staged.written == 0
    staged.flush()
    assert calls == [4] and len(inner.audit) == 4 and staged.written == 4


def test_batched_answers_equal_one_by_one_answers():
    """Same patient twice, redelivery, reused control id: reads flush the held writes they depend on."""
    texts = texts_with_repeats()
    answers = batched(texts, InMemoryStore())
    assert answers == one_by_one(texts)
    second_dose = answers[3]
    assert second_dose[0] == "AE" and "go.schedule" in second_dose[1][0][1]  # judged on the written day 1
    assert answers[5] == answers[0]  # the redelivery got the first answer
    assert answers[-1] == ("AR", [])  # W002 reused for other content: refused as a whole


def test_failed_flush_writes_nothing_and_counts_nothing_written():
    inner = InMemoryStore()
    staged = BatchedStore(inner)
    process_text(adult_order_set("F1", mrn="PF1"), staged, load_protocol(), tz=UTC)
    inner.save_all = lambda batch, deliveries=(): (_ for _ in ()).throw(HistoryChanged("rival"))
    with pytest.raises(HistoryChanged):
        staged.flush()
    assert inner.audit == [] and staged.written == 0 and staged.held == []


def test_in_memory_save_all_is_all_or_nothing():
    store = InMemoryStore()
    process_text(adult_order_set("A1", mrn="PA1"), store, load_protocol(), tz=UTC)
    first = store.audit[0]
    other = first.model_copy(update={"patient_key": "PA2^GENHOSP", "key": first.key.model_copy(update={"control_id": "A2"})})
    from validator.history import KeyTaken

    with pytest.raises(KeyTaken):
        store.save_all([other, first])  # the second's key is taken: the first is not written either
    assert len(store.audit) == 1 and "PA2^GENHOSP" not in store.orders


# --- the SQL store ------------------------------------------------------------------------------


def test_sql_save_all_one_commit_for_a_batch_and_the_chain_verifies(store):
    commits = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    staged = BatchedStore(store)
    texts = [adult_order_set(f"S{i:03d}", mrn=f"PS{i:03d}") for i in range(12)]
    for t in texts:
        process_text(t, staged, load_protocol(), tz=UTC)
    assert commits == []
    staged.flush()
    assert commits == [1]
    assert store.count() == 12
    report = verify_chain(store)
    assert report.intact and report.checked == 12, report.describe()


def test_sql_batched_answers_equal_one_by_one(store):
    texts = texts_with_repeats()
    assert batched(texts, store) == one_by_one(texts)
    assert verify_chain(store).intact


def test_sql_save_all_refuses_a_batch_when_a_patient_history_changed_meanwhile(store):
    """Another worker accepts a day-1 dose for a patient this batch judged: none of the batch is written."""
    import threading

    staged = BatchedStore(store)
    process_text(adult_order_set("C1", mrn="PC1"), staged, load_protocol(), tz=UTC)
    process_text(go_dose_message("C2", "20261201", mrn="PC2"), staged, load_protocol(), tz=UTC)
    rival = threading.Thread(target=lambda: process_text(go_dose_message("R2", "20261201", placer="RIVAL", mrn="PC2"),
                                                         store, load_protocol(), tz=UTC))
    rival.start()
    rival.join()
    with pytest.raises(HistoryChanged):
        staged.flush()
    assert store.count() == 1  # only the rival's record


# --- the bridge ---------------------------------------------------------------------------------


def bridge_for(client, store, **kw) -> Bridge:
    s = Settings(stream_prefix="t", retry_budget=0.2, retry_initial_delay=0.01, retry_max_delay=0.05, error_retries=1,
                 claim_idle=0.05, stream_batch=50, stream_block_ms=10, **kw)
    # a clock that stands still: batches are cut by `store_batch` (and dependent reads) only, never by the
    # 20 ms window, which a busy machine closes early (tests/adapters/test_bridge_unit.py drives the window)
    bridge = Bridge(bootstrap(s, store=store), client, s, consumer="c1", clock=FakeClock())
    ensure_group(client, bridge.streams)
    return bridge


def outbound(client) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _id, f in client.xrange("t:outbound")]


@pytest.mark.parametrize("store_batch", [1, 4, 100])
def test_bridge_answers_the_same_whatever_the_batch(store, store_batch):
    client = fakeredis.FakeRedis()
    commits = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    texts = texts_with_repeats()
    for t in texts:
        client.xadd("t:inbound", {"hl7": t})
    bridge_for(client, store, store_batch=store_batch).step()
    out = outbound(client)
    assert len(out) == len(texts) and client.xlen("t:inbound") == 0
    assert [o["ack_code"] for o in out] == [a for a, _ in one_by_one(texts)]
    assert store.count() == len(texts) - 1  # the redelivery is not a new record
    assert verify_chain(store).intact
    with store.read_session() as s:  # every delivery of a keyed message, the redelivery of W000 included
        assert s.execute(text("SELECT count(*) FROM deliveries")).scalar_one() == len(texts) - 1
    # one commit per message one by one; batched: one per `store_batch` entries and before a dependent read
    if store_batch == 1:
        assert len(commits) == len(texts)
    else:
        assert 2 <= len(commits) <= len(texts) // 2


class FailingBatches(InMemoryStore):
    """`save_all` of more than one message fails (e.g. a rival's HistoryChanged) `failures` times."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def save_all(self, batch, deliveries=()):
        if len(batch) > 1 and self.failures:
            self.failures -= 1
            raise HistoryChanged("a rival changed a history")
        super().save_all(batch, deliveries)


def test_bridge_failed_batch_write_is_processed_again_one_by_one(caplog):
    client = fakeredis.FakeRedis()
    store = FailingBatches(failures=1)
    texts = [adult_order_set(f"X{i:03d}", mrn=f"PX{i:03d}") for i in range(8)]
    for t in texts:
        client.xadd("t:inbound", {"hl7": t})
    with caplog.at_level(logging.WARNING, logger="rxgate.bridge"):
        bridge_for(client, store, store_batch=100).step()
    out = outbound(client)
    assert [o["control_id"] for o in out] == [f"X{i:03d}" for i in range(8)]  # each answered once, in order
    assert all(o["ack_code"] == "AA" for o in out)
    assert len(store.audit) == 8 and client.xlen("t:deadletter") == 0
    assert "8 entries processed again one by one" in caplog.text
    assert "PX0" not in caplog.text  # no patient identifiers in the log


def test_bridge_answers_entries_written_before_a_failed_batch_and_redoes_the_rest():
    client = fakeredis.FakeRedis()
    store = FailingBatches(failures=0)
    texts = [adult_order_set(f"Y{i:03d}", mrn=f"PY{i:03d}") for i in range(7)]
    for t in texts:
        client.xadd("t:inbound", {"hl7": t})
    bridge = bridge_for(client, store, store_batch=3)
    real = store.save_all
    calls = []

    def second_fails(batch, deliveries=()):
        calls.append(len(batch))
        if len(calls) == 2:
            raise HistoryChanged("rival")
        real(batch, deliveries)

    store.save_all = second_fails
    bridge.step()
    out = outbound(client)
    assert [o["control_id"] for o in out] == [f"Y{i:03d}" for i in range(7)]
    assert len(store.audit) == 7
    assert calls[:2] == [3, 3]  # the first three written together, the next three failed and were redone


# --- SQLite: writers queue on a file lock, not on SQLite's sleeping busy handler ----------------


def test_sqlite_writers_queue_on_a_file_lock_released_at_commit(sqlite_url, monkeypatch):
    """The second writer waits on the writers' lock, not in SQLite's sleeping busy handler: it leaves the
    queue only after the first writer committed, so its BEGIN IMMEDIATE never finds the database locked.
    Shown by the order of events, not by a time measured on a machine that may be busy."""
    import threading

    from workers.store import make_engine
    from workers.store.engine import QueuedWriterConnection

    events: list[str] = []
    real_queue = QueuedWriterConnection.queue_for_write

    def queue_for_write(self):
        if threading.current_thread().name == "second":
            events.append("second waits for the lock")
        real_queue(self)
        if threading.current_thread().name == "second":
            events.append("second holds the lock")

    monkeypatch.setattr(QueuedWriterConnection, "queue_for_write", queue_for_write)
    engine = make_engine(sqlite_url, create=True)
    try:
        first = engine.connect()
        first.begin()  # BEGIN IMMEDIATE: holds the writers' lock
        assert Path(sqlite_url.removeprefix("sqlite:///") + ".writers").exists()

        def second_writer():
            with engine.begin():
                events.append("second writes")

        t = threading.Thread(target=second_writer, name="second")
        t.start()
        deadline = time.monotonic() + 60
        while "second waits for the lock" not in events and time.monotonic() < deadline:
            time.sleep(0.001)
        assert events == ["second waits for the lock"]  # it cannot pass while the first holds the lock
        events.append("first commits")
        first.commit()
        t.join(60)
        assert not t.is_alive()
        assert events == ["second waits for the lock", "first commits", "second holds the lock", "second writes"]
        first.close()
    finally:
        engine.dispose()


def test_sqlite_writer_lock_times_out_as_database_is_locked(sqlite_url):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from workers.bootstrap import is_transient
    from workers.store import make_engine
    from workers.store.engine import QueuedWriterConnection

    engine = make_engine(sqlite_url, create=True)
    path = sqlite_url.removeprefix("sqlite:///")
    try:
        with engine.begin():
            other = sqlite3.connect(path, timeout=0.1, factory=QueuedWriterConnection)
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.queue_for_write()
            assert is_transient(OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")))
            other.close()
    finally:
        engine.dispose()


def test_reads_share_a_connection_only_where_a_read_cannot_block_the_write(sqlite_url, tmp_path):
    from workers.store import open_sql_store

    wal = open_sql_store(sqlite_url, create=True)
    memory = open_sql_store("sqlite://", create=True)
    try:
        assert wal._reads_can_share  # WAL: readers never block the writer
        assert not memory._reads_can_share  # one connection for everything
        # in memory the batch still works (reads and the write on the one connection, one at a time)
        staged = BatchedStore(memory)
        with memory.reads_together():
            for i in range(3):
                process_text(adult_order_set(f"M{i}", mrn=f"PM{i}"), staged, load_protocol(), tz=UTC)
            process_text(go_dose_message("M9", "20261201", placer="ORD9", mrn="PM1"), staged, load_protocol(), tz=UTC)
            staged.flush()
        assert memory.count() == 4
    finally:
        wal.dispose()
        memory.dispose()


# --- property: batching never changes a verdict --------------------------------------------------

STEP = st.tuples(
    st.sampled_from(["day1", "day14", "cancel", "resend", "reuse"]),
    st.sampled_from(["PQ1", "PQ2", "PQ3"]),  # few patients: repeats inside a batch are the point
    st.sampled_from(["ORDA", "ORDB"]),
)


def course_texts(steps) -> list[str]:
    texts: list[str] = []
    for i, (kind, mrn, placer) in enumerate(steps):
        cid = f"Q{i:03d}"
        if kind == "day1":
            texts.append(go_dose_message(cid, "20261201", placer=placer, mrn=mrn))
        elif kind == "day14":
            texts.append(go_dose_message(cid, "20261214", placer=placer, mrn=mrn))
        elif kind == "cancel":
            texts.append(cancel_message(cid, placer, mrn=mrn))
        elif kind == "resend" and texts:
            texts.append(texts[i % len(texts)])
        elif kind == "reuse" and texts:
            texts.append(go_dose_message("Q000", "20261214", placer=placer, mrn=mrn))  # Q000 reused
        else:
            texts.append(adult_order_set(cid, mrn=mrn))
    return texts


@examples(25)
@given(steps=st.lists(STEP, min_size=2, max_size=14), flush_every=st.integers(1, 6))
def test_batched_verdicts_equal_one_by_one_for_any_course(steps, flush_every):
    """Day-1/day-14 doses, cancellations, resends and reused control ids of three patients, written in
    batches of any size: every answer equals the answer one message at a time."""
    texts = course_texts(steps)
    assert batched(texts, InMemoryStore(), flush_every) == one_by_one(texts)


@examples(8, extra_health_checks=(HealthCheck.function_scoped_fixture,))
@given(steps=st.lists(STEP, min_size=2, max_size=10), flush_every=st.integers(2, 5))
def test_batched_verdicts_equal_one_by_one_on_sqlite_with_shared_reads(tmp_path_factory, steps, flush_every):
    """The same on the SQL store as the bridge uses it: one shared read connection, held writes."""
    from workers.store import open_sql_store

    store = open_sql_store(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'rx.db'}", create=True)
    try:
        texts = course_texts(steps)
        with store.reads_together():
            answers = batched(texts, store, flush_every)
        assert answers == one_by_one(texts)
        assert verify_chain(store).intact
    finally:
        store.dispose()
