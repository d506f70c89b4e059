"""One answer per delivery (issue 15 items 1-3), driven in-process against fakeredis (its Lua is lupa):
a consumer paused past the claim idle time, junk before MSH, a crash between the commit and the ack."""

from __future__ import annotations

import fakeredis
import pytest

from tests.builders import adult_order_set, msa
from tests.fakes import FakeClock
from validator import InMemoryStore
from workers.bootstrap import bootstrap
from workers.queue.bridge import Bridge, ensure_group
from workers.settings import Settings


def settings(**kw) -> Settings:
    base = dict(stream_prefix="t", retry_budget=0.2, retry_initial_delay=0.01, retry_max_delay=0.05,
                error_retries=1, claim_idle=0.05, stream_batch=10, stream_block_ms=10, outbound_maxlen=1000)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


def make(client, store, consumer: str, **kw) -> Bridge:
    s = settings(**kw)
    bridge = Bridge(bootstrap(s, store=store), client, s, consumer=consumer, clock=FakeClock())
    ensure_group(client, bridge.streams)
    return bridge


def outbound(client) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _id, f in client.xrange("t:outbound")]


@pytest.mark.parametrize("store_batch", [1, 100])
def test_a_consumer_paused_past_the_claim_idle_time_does_not_answer_a_taken_over_entry(client, store_batch):
    """A reads the entries, then stalls (SIGSTOP) before answering; B takes them over and answers; A
    wakes and finishes its work: nothing more is published and nothing of B's is undone."""
    store = InMemoryStore()
    a = make(client, store, "A", store_batch=store_batch)
    b = make(client, store, "B", store_batch=store_batch)
    for i in range(3):
        client.xadd("t:inbound", {"hl7": adult_order_set(f"P000{i}", mrn=f"MRNP{i}")})
    held = a._read(">")  # A holds the entries ...
    assert len(held) == 3
    client.xclaim("t:inbound", "rxgate", "A", 0, [i for i, _ in held], idle=10_000, justid=True)  # ... idle
    assert b.step() == 3  # B takes them over (claim idle passed) and answers
    assert len(outbound(client)) == 3
    a.handle(held)  # A resumes
    out = outbound(client)
    assert len(out) == 3, [o["inbound_id"] for o in out]
    assert sorted(o["inbound_id"] for o in out) == sorted(i for i, _ in held)
    assert a.handled == 0 and a.taken_over == 3 and b.handled == 3
    assert client.xpending("t:inbound", "rxgate")["pending"] == 0


def test_touching_entries_never_takes_one_back_from_its_new_owner(client):
    store = InMemoryStore()
    a = make(client, store, "A")
    b = make(client, store, "B")
    client.xadd("t:inbound", {"hl7": adult_order_set("T0001", mrn="MRNT")})
    [(entry_id, _)] = a._read(">")
    client.xclaim("t:inbound", "rxgate", "B", 0, [entry_id], justid=True)  # B took it over
    assert a._touch([entry_id]) == []
    [row] = client.xpending_range("t:inbound", "rxgate", "-", "+", 10)
    assert row["consumer"] == b"B"
    assert b._touch([entry_id]) == [entry_id]


def test_an_entry_still_ours_is_answered_once(client):
    store = InMemoryStore()
    a = make(client, store, "A")
    client.xadd("t:inbound", {"hl7": adult_order_set("O0001", mrn="MRNO")})
    assert a.step() == 1
    [out] = outbound(client)
    assert msa(out["hl7"])[2] == "O0001" and a.handled == 1 and a.taken_over == 0


# --- item 2: one delivery, one answer ---------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "abc\r" + adult_order_set("J0001", mrn="MRNJ"),
    adult_order_set("J0001", mrn="MRNJ") + adult_order_set("J0002", mrn="MRNK"),
], ids=["junk-before-msh", "two-messages"])
@pytest.mark.parametrize("store_batch", [1, 100])
def test_an_entry_is_one_delivery_with_one_answer_and_one_record(client, text, store_batch):
    store = InMemoryStore()
    bridge = make(client, store, "A", store_batch=store_batch)
    client.xadd("t:inbound", {"hl7": text})
    client.xadd("t:inbound", {"hl7": adult_order_set("J0003", mrn="MRNL")})  # a clean one after it
    bridge.step()
    out = outbound(client)
    assert len(out) == 2 and len({o["inbound_id"] for o in out}) == 2
    assert [o["ack_code"] for o in out] == ["AR", "AA"]
    assert msa(out[0]["hl7"])[2] == "J0001"  # the first MSH-10, so the sender can correlate
    assert "one message per delivery" in out[0]["hl7"]
    assert len(store.audit) == 2 and store.audit[0].key is None  # not stored under the key...
    client.xadd("t:inbound", {"hl7": adult_order_set("J0001", mrn="MRNJ")})
    bridge.step()
    assert outbound(client)[-1]["ack_code"] == "AA"  # ...so the clean resend is judged afresh


def test_a_celery_task_is_one_delivery_with_one_answer_and_one_record():
    from workers.queue import tasks
    from workers.queue.celery_app import TASK, make_app

    s = Settings(broker_url="redis://127.0.0.1:1/0")
    app = make_app(s)
    app.conf.task_always_eager = True
    store = InMemoryStore()
    tasks.set_service(bootstrap(s, store=store))
    try:
        result = app.tasks[TASK].apply(args=["abc\r" + adult_order_set("J0101", mrn="MRNJ")]).get()
    finally:
        tasks.set_service(None)
    assert result["ack_code"] == "AR" and len(store.audit) == 1
    assert store.audit[0].delivery_id.startswith("celery:")


def test_the_cli_keeps_one_answer_per_message_of_a_file():
    from datetime import UTC

    from validator import load_protocol, process_text

    outs = process_text("abc\r" + adult_order_set("J0201"), InMemoryStore(), load_protocol(), tz=UTC)
    assert [o.ack_code for o in outs] == ["AR", "AA"]


# --- item 3: a crash between the commit and the acknowledgement records nothing twice --------------


class CrashAfterCommit(Exception):
    """Stands for the process dying between the store commit and the XACK."""


def _crash_on_first_answer(bridge):
    real = bridge.commit
    calls = {"n": 0}

    def commit(batch):
        if batch.ops and calls["n"] == 0:
            calls["n"] += 1
            raise CrashAfterCommit()
        return real(batch)

    bridge.commit = commit


@pytest.mark.parametrize("text", [
    adult_order_set("", mrn="MRNE"),  # empty MSH-10: no usable key
    "abc\r" + adult_order_set("K0001", mrn="MRNF"),  # refused as a whole: not under the key
    adult_order_set("K0002", mrn="MRNG"),  # keyed: the delivery row is not doubled either
], ids=["empty-msh10", "junk", "keyed"])
@pytest.mark.parametrize("store_batch", [1, 100])
def test_commit_then_kill_records_the_delivery_once(client, sqlite_url, text, store_batch):
    from sqlalchemy import text as sql

    from workers.store import open_sql_store, verify_chain

    store = open_sql_store(sqlite_url, create=True)
    first = make(client, store, "A", store_batch=store_batch)
    _crash_on_first_answer(first)
    client.xadd("t:inbound", {"hl7": text})
    with pytest.raises(CrashAfterCommit):
        first.step()
    assert store.count() == 1 and outbound(client) == []  # committed, not answered, still pending
    [pending] = client.xpending_range("t:inbound", "rxgate", "-", "+", 10)
    client.xclaim("t:inbound", "rxgate", "A", 0, [pending["message_id"]], idle=10_000, justid=True)  # A is dead
    restarted = make(client, store, "A2", store_batch=store_batch)
    assert restarted.step() == 1  # takes the entry over (claim idle passed) ...
    [out] = outbound(client)
    assert store.count() == 1  # ... and answers it from the store: one record
    with store.engine.connect() as conn:
        assert conn.execute(sql("SELECT count(*) FROM deliveries")).scalar_one() <= 1
    assert client.xpending("t:inbound", "rxgate")["pending"] == 0
    assert verify_chain(store).intact
    with store.read_session() as s:
        response = s.execute(sql("SELECT response FROM responses")).scalar_one()
    assert out["hl7"] == response  # the stored answer, byte for byte
    store.dispose()
