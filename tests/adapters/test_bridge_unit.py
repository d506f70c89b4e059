"""The stream bridge against fakeredis: docs/interfaces.md §3 stream shapes, batching, dead letters, takeover."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from tests.builders import adult_order_set, msa
from tests.fakes import FakeClock, FlakyStore, OperationalError
from validator import InMemoryStore
from workers.bootstrap import bootstrap
from workers.queue.bridge import Bridge, Streams, ensure_group
from workers.settings import Settings


def settings(**kw) -> Settings:
    base = dict(stream_prefix="t", retry_budget=0.2, retry_initial_delay=0.01, retry_max_delay=0.05,
                error_retries=1, claim_idle=0.05, stream_batch=10, stream_block_ms=10, outbound_maxlen=1000)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


def make(client, store=None, consumer="c1", clock=None, **kw) -> Bridge:
    """A bridge whose clock stands still unless the test moves it: the store batch window never closes
    by itself, however slow the machine (a real 20 ms window splits batches on a busy 2-core box)."""
    s = settings(**kw)
    return Bridge(bootstrap(s, store=store or InMemoryStore()), client, s, consumer=consumer,
                  clock=clock or FakeClock())


def outbound(client, name="t:outbound"):
    return [{k.decode(): v.decode() for k, v in f.items()} for _id, f in client.xrange(name)]


def test_group_is_created_at_0_with_mkstream_so_a_backlog_is_read(client):
    client.xadd("t:inbound", {"hl7": adult_order_set("B0001", mrn="PB1")})  # sent before the bridge started
    bridge = make(client)
    ensure_group(client, bridge.streams)
    ensure_group(client, bridge.streams)  # idempotent (BUSYGROUP)
    groups = client.xinfo_groups("t:inbound")
    assert groups[0]["name"] == b"rxgate"
    bridge.step()
    out = outbound(client)
    assert [o["control_id"] for o in out] == ["B0001"]
    assert msa(out[0]["hl7"])[2] == "B0001"
    assert out[0]["ack_code"] == msa(out[0]["hl7"])[1]
    # acked and deleted: inbound holds nothing, nothing pending
    assert client.xlen("t:inbound") == 0
    assert client.xpending("t:inbound", "rxgate")["pending"] == 0


def test_batch_of_messages_answered_in_one_transaction(client):
    bridge = make(client)
    ensure_group(client, bridge.streams)
    ids = [client.xadd("t:inbound", {"hl7": adult_order_set(f"B1{i:03d}", mrn=f"PB1{i}")}).decode() for i in range(7)]
    calls = []
    real_pipeline = client.pipeline

    def spy(transaction=True, **kw):
        calls.append(transaction)
        return real_pipeline(transaction=transaction, **kw)

    client.pipeline = spy
    bridge.step()
    assert calls == [True]  # one MULTI/EXEC for the whole batch
    out = outbound(client)
    assert [o["control_id"] for o in out] == [f"B1{i:03d}" for i in range(7)]
    assert [o["inbound_id"] for o in out] == ids
    assert client.xlen("t:inbound") == 0


def test_batch_window_closes_on_the_clock_not_on_the_count(client):
    """store_batch 100, window 20 ms: the clock passes the window after the third message, so the first three
    are written (one transaction) and answered before the other four are processed."""
    clock = FakeClock()
    store = InMemoryStore()
    bridge = make(client, store, clock=clock, store_batch=100, store_batch_seconds=0.02)
    ensure_group(client, bridge.streams)
    for i in range(7):
        client.xadd("t:inbound", {"hl7": adult_order_set(f"BW{i:03d}", mrn=f"PBW{i}")})
    writes, answered_at_write = [], []
    real_save_all, real_process = store.save_all, bridge.service.process
    processed = 0

    def save_all(batch, deliveries=()):
        writes.append([p.control_id for p in batch])
        answered_at_write.append(client.xlen("t:outbound"))
        real_save_all(batch, deliveries)

    def process(*args, **kwargs):
        nonlocal processed
        outcomes = real_process(*args, **kwargs)
        processed += 1
        if processed == 3:
            clock.advance(0.5)  # the window is long over once the third message is judged
        return outcomes

    store.save_all, bridge.service.process = save_all, process
    bridge.step()
    assert writes == [[f"BW{i:03d}" for i in range(3)], [f"BW{i:03d}" for i in range(3, 7)]]
    assert answered_at_write == [0, 3]  # the first three were answered before the rest was written
    assert [o["control_id"] for o in outbound(client)] == [f"BW{i:03d}" for i in range(7)]


def test_batch_is_cut_by_store_batch_when_the_clock_stands_still(client):
    store = InMemoryStore()
    bridge = make(client, store, store_batch=3)
    ensure_group(client, bridge.streams)
    for i in range(7):
        client.xadd("t:inbound", {"hl7": adult_order_set(f"BC{i:03d}", mrn=f"PBC{i}")})
    sizes = []
    real = store.save_all
    store.save_all = lambda batch, deliveries=(): (sizes.append(len(batch)), real(batch, deliveries))
    bridge.step()
    assert sizes == [3, 3, 1]
    assert client.xlen("t:outbound") == 7


def test_duplicate_delivery_gets_the_same_response_and_one_history_entry(client):
    store = InMemoryStore()
    bridge = make(client, store)
    ensure_group(client, bridge.streams)
    text = adult_order_set("B2001", mrn="PB2")
    client.xadd("t:inbound", {"hl7": text})
    client.xadd("t:inbound", {"hl7": text})
    bridge.step()
    out = outbound(client)
    assert len(out) == 2 and out[0]["hl7"] == out[1]["hl7"]
    assert len(store.audit) == 1
    assert sum(1 for e in store.orders_for("MRN55501^GENHOSP") if e.protocol_order) == 0
    assert sum(1 for e in store.orders_for("PB2^GENHOSP") if e.protocol_order) == 1


def test_same_control_id_other_content_is_ar_duplicate_control_id(client):
    bridge = make(client)
    ensure_group(client, bridge.streams)
    client.xadd("t:inbound", {"hl7": adult_order_set("B3001", mrn="PB3")})
    client.xadd("t:inbound", {"hl7": adult_order_set("B3001", mrn="PB3", dob="19700101")})
    bridge.step()
    out = outbound(client)
    assert out[1]["ack_code"] == "AR"
    assert "hl7.duplicate_control_id" in out[1]["hl7"]


def test_entry_without_hl7_goes_to_deadletter_acked_and_answered(client):
    bridge = make(client)
    ensure_group(client, bridge.streams)
    eid = client.xadd("t:inbound", {"message": "MSH|..."}).decode()
    bridge.step()
    dead = outbound(client, "t:deadletter")
    assert len(dead) == 1
    assert "no hl7 field" in dead[0]["reason"] and dead[0]["inbound_id"] == eid
    assert dead[0]["message"] == "MSH|..."  # the original fields are kept
    out = outbound(client)
    # a resend cannot help an entry without a message: the answer says so, not "resend"
    assert out[0]["ack_code"] == "AR" and "cannot be processed: no hl7 field" in out[0]["hl7"]
    assert "resend" not in out[0]["hl7"]
    assert client.xpending("t:inbound", "rxgate")["pending"] == 0


def test_transient_store_fault_is_ridden_out(client):
    store = FlakyStore(2, OperationalError("database is locked"))
    bridge = make(client, store)
    ensure_group(client, bridge.streams)
    client.xadd("t:inbound", {"hl7": adult_order_set("B4001", mrn="PB4")})
    bridge.step()
    out = outbound(client)
    assert out[0]["ack_code"] in {"AA", "AE"} and store.calls == 3
    assert client.xlen("t:deadletter") == 0


def test_message_failing_after_its_retries_is_deadlettered_with_ar_207_and_not_stored(client):
    store = FlakyStore(10_000, OperationalError("connection refused"))
    bridge = make(client, store)
    ensure_group(client, bridge.streams)
    client.xadd("t:inbound", {"hl7": adult_order_set("B5001", mrn="PB5")})
    client.xadd("t:inbound", {"hl7": adult_order_set("B5002", mrn="PB5b")})
    bridge.step()
    dead = outbound(client, "t:deadletter")
    assert [d["hl7"].split("|")[9] for d in dead] == ["B5001", "B5002"]  # the message as sent
    assert all("OperationalError" in d["reason"] for d in dead)
    assert all(int(d["attempts"]) > 1 for d in dead)
    out = outbound(client)
    assert [o["control_id"] for o in out] == ["B5001", "B5002"]
    assert all(o["ack_code"] == "AR" for o in out)
    err = next(s for s in out[0]["hl7"].split("\r") if s.startswith("ERR|"))
    assert "|207^" in err and "not processed, resend" in err
    assert store.answers == {}
    # a resend after the outage is processed afresh
    store.failures = 0
    client.xadd("t:inbound", {"hl7": adult_order_set("B5001", mrn="PB5")})
    bridge.step()
    assert outbound(client)[-1]["ack_code"] in {"AA", "AE"}


def test_entries_left_pending_by_a_dead_consumer_are_taken_over(client):
    store = InMemoryStore()
    dead = make(client, store, consumer="dead")
    ensure_group(client, dead.streams)
    for i in range(3):
        client.xadd("t:inbound", {"hl7": adult_order_set(f"B6{i:03d}", mrn=f"PB6{i}")})
    # the dead consumer read them, stored the first one, and died before answering
    entries = dead._read(">")
    dead.service.process(entries[0][1][b"hl7"].decode())
    assert client.xpending("t:inbound", "rxgate")["pending"] == 3
    alive = make(client, store, consumer="alive", claim_idle=0.0)
    alive.step()
    out = outbound(client)
    assert sorted(o["control_id"] for o in out) == ["B6000", "B6001", "B6002"]
    assert len(store.audit) == 3  # the first was stored once, its stored answer re-sent
    assert client.xpending("t:inbound", "rxgate")["pending"] == 0


def test_idle_entries_are_not_taken_before_claim_idle(client):
    dead = make(client, consumer="dead")
    ensure_group(client, dead.streams)
    client.xadd("t:inbound", {"hl7": adult_order_set("B7001")})
    dead._read(">")
    alive = make(client, consumer="alive", claim_idle=3600)
    alive.step()
    assert client.xlen("t:outbound") == 0
    assert client.xpending("t:inbound", "rxgate")["pending"] == 1


def test_outbound_is_capped_inbound_and_deadletter_never_trimmed(client):
    """The answers are written by the bridge's Lua script (workers/queue/bridge.py ANSWER_IF_OURS): the
    outbound XADD carries MAXLEN ~ outbound_maxlen, the dead-letter XADD none, inbound is only XDELed."""
    from workers.queue.bridge import ANSWER_IF_OURS

    bridge = make(client, outbound_maxlen=5)
    ensure_group(client, bridge.streams)
    calls = []
    real = bridge._answer

    def spy(keys, args, client=None):
        calls.append((keys, args))
        return real(keys=keys, args=args, client=client)

    bridge._answer = spy
    client.xadd("t:inbound", {"hl7": adult_order_set("B8001", mrn="PB8")})
    client.xadd("t:inbound", {"nohl7": "x"})
    bridge.step()
    assert [c[0] for c in calls] == [["t:inbound", "t:outbound", "t:deadletter"]] * 2
    assert {c[1][3] for c in calls} == {5}  # ARGV[4]: the outbound MAXLEN
    assert "'XADD', KEYS[2], 'MAXLEN', '~', ARGV[4]" in ANSWER_IF_OURS
    assert "'XADD', KEYS[3], '*'" in ANSWER_IF_OURS  # dead letters: never trimmed
    assert "XTRIM" not in ANSWER_IF_OURS and "KEYS[1], 'MAXLEN'" not in ANSWER_IF_OURS
    assert client.xlen("t:deadletter") == 1 and client.xlen("t:outbound") == 2


def test_shutdown_leaves_unfinished_entries_pending_and_unanswered(client):
    stop = threading.Event()
    s = settings()
    store = FlakyStore(10_000, OperationalError("down"))
    bridge = Bridge(bootstrap(s, store=store), client, s, consumer="c", stop=stop, clock=FakeClock())
    ensure_group(client, bridge.streams)
    client.xadd("t:inbound", {"hl7": adult_order_set("B9001")})
    store_save = store.save

    def save_then_stop(processed):
        stop.set()  # SIGTERM arrives while the store is failing
        return store_save(processed)

    store.save = save_then_stop
    bridge.step()
    assert client.xlen("t:outbound") == 0
    assert client.xlen("t:deadletter") == 0
    assert client.xpending("t:inbound", "rxgate")["pending"] == 1


def test_streams_are_named_by_the_contract():
    s = Streams.from_settings(Settings())
    assert (s.inbound, s.outbound, s.deadletter, s.group) == (
        "rxgate:inbound", "rxgate:outbound", "rxgate:deadletter", "rxgate")
