"""`rxgate mllp` with a real socket client, a real Redis and a real bridge (SQLite store in tmp).

The listener and the bridge run as `python -m workers.cli mllp|bridge` subprocesses (so the
subcommand registration is exercised too); the Redis server and the environment come from
the shared fixtures in conftest.py (a private redis-server, its own stream prefix and SQLite file).
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.builders import adult_order_set
from tests.integration.conftest import audit_count, client, names
from tests.integration.mllp_client import CR, FS, VT, ack, framed, read_frames, start_bridge, start_listener
from workers.queue.mllp import FrameReader, FrameTooLarge

pytestmark = pytest.mark.integration


def test_frame_reader_units():
    fr = FrameReader(max_frame=100)
    assert fr.feed(b"noise" + VT + b"MSH|a") == []
    assert fr.partial and fr.skipped == 5
    assert fr.feed(b"bc" + FS) == []  # FS alone does not end a frame
    assert fr.feed(CR + VT + b"MSH|2" + FS + CR + VT + b"MSH|3") == [b"MSH|abc", b"MSH|2"]
    assert fr.feed(FS + CR) == [b"MSH|3"] and not fr.partial
    assert FrameReader(max_frame=10).feed(VT + b"x" * 10) == []  # exactly the limit: still waiting
    with pytest.raises(FrameTooLarge):
        FrameReader(max_frame=10).feed(VT + b"x" * 11)


def test_partial_frames_and_two_messages_in_one_packet(env, procs):
    start_bridge(procs, env)
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        data = framed(adult_order_set("MP0001", mrn="MLP1"))
        # split inside MSH, mid-message, and between FS and CR
        cuts = [2, 40, len(data) // 2, len(data) - 1]
        prev = 0
        for cut in cuts:
            s.sendall(data[prev:cut])
            time.sleep(0.05)
            prev = cut
        s.sendall(data[prev:])
        [first] = read_frames(s, 1)
        assert ack(first) == ("AA", "MP0001")
        # two frames in one packet, with noise between them: two responses, in order
        s.sendall(framed(adult_order_set("MP0002", mrn="MLP2")) + b"\r\n"
                  + framed(adult_order_set("MP0003", mrn="MLP3")))
        responses = read_frames(s, 2)
        assert [ack(x)[1] for x in responses] == ["MP0002", "MP0003"]
        assert all(ack(x)[0] == "AA" for x in responses)
    assert audit_count(env) == 3


def test_twenty_concurrent_connections(env, procs):
    start_bridge(procs, env)
    port = start_listener(procs)

    def one(i: int) -> tuple[str, str]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(framed(adult_order_set(f"MC{i:04d}", mrn=f"MCM{i}")))
            [resp] = read_frames(s, 1)
            return ack(resp)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [("AA", f"MC{i:04d}") for i in range(20)]  # each connection got its own answer
    assert audit_count(env) == 20
    r = client(env)
    inbound, outbound, _ = names(env)
    assert r.xlen(outbound) == 20 and r.xlen(inbound) == 0


def test_half_closed_connection_still_gets_its_answers(env, procs):
    start_bridge(procs, env)
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(adult_order_set("MH0001", mrn="MHM1")) + framed(adult_order_set("MH0002", mrn="MHM2")))
        s.shutdown(socket.SHUT_WR)  # the sender is done writing
        responses = read_frames(s, 3)  # asks for 3: the server must close after the 2 it owes
    assert [ack(x) for x in responses] == [("AA", "MH0001"), ("AA", "MH0002")]


def test_timeout_answers_ar_and_the_message_stays_queued(env, procs):
    """No bridge running: after the timeout the sender gets AR rxgate.timeout; the message is still queued."""
    port = start_listener(procs, timeout=1.0)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(adult_order_set("MT0001", mrn="MTM1")))
        [resp] = read_frames(s, 1, timeout=15)
    assert time.monotonic() - started >= 1.0
    assert ack(resp) == ("AR", "MT0001")
    err = next(x for x in resp.split("\r") if x.startswith("ERR|")).split("|")
    assert err[3].startswith("207^") and err[5] == "rxgate.timeout" and err[8] == "not yet judged: resend unchanged"
    inbound = names(env)[0]
    assert client(env).xlen(inbound) == 1  # queued: processed when a bridge comes
    start_bridge(procs, env)
    deadline = time.monotonic() + 20
    while audit_count(env) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert audit_count(env) == 1


def test_not_hl7_frame_gets_ar_and_is_not_queued(env, procs):
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed("GET / HTTP/1.1\r\nHost: x\r\n"))
        [resp] = read_frames(s, 1, timeout=5)
        assert ack(resp)[0] == "AR" and "hl7.structure" in resp and "not HL7" in resp
        s.sendall(framed(""))  # an empty frame too
        [resp] = read_frames(s, 1, timeout=5)
        assert ack(resp)[0] == "AR"
    assert client(env).xlen(names(env)[0]) == 0


def test_connection_closed_inside_a_frame_is_not_answered(env, procs):
    start_bridge(procs, env)
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(adult_order_set("MX0001", mrn="MXM1"))[:-30])
        s.shutdown(socket.SHUT_WR)
        assert read_frames(s, 1, timeout=10) == []  # closed, nothing owed
    time.sleep(0.5)
    assert client(env).xlen(names(env)[0]) == 0 and audit_count(env) == 0


def test_broker_down_answers_ar_not_queued(env, procs):
    procs.env = dict(env, RXGATE_BROKER_URL="redis://127.0.0.1:1/0")
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(adult_order_set("MB0001", mrn="MBM1")))
        [resp] = read_frames(s, 1, timeout=10)
    assert ack(resp) == ("AR", "MB0001")
    assert "service.not_processed" in resp and "not queued (broker unavailable), resend" in resp


def test_a_frame_is_one_delivery_junk_or_two_messages_get_one_ar(env, procs):
    """Issue 15 item 2: a frame with data before its MSH, or with two messages, is one delivery: one
    AR for the frame, one audit record, and the clean resend is judged afresh (AA)."""
    start_bridge(procs, env)
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed("abc\r" + adult_order_set("MJ0001", mrn="MLJ1")))
        s.sendall(framed(adult_order_set("MJ0002", mrn="MLJ2") + adult_order_set("MJ0003", mrn="MLJ3")))
        s.sendall(framed(adult_order_set("MJ0001", mrn="MLJ1")))
        answers = read_frames(s, 3)
        assert [ack(a)[0] for a in answers] == ["AR", "AR", "AA"]
        assert [ack(a)[1] for a in answers[1:]] == ["MJ0002", "MJ0001"]
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):
            s.recv(65536)  # nothing more: one answer per frame
    assert audit_count(env) == 3
