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
