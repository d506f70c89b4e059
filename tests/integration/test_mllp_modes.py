"""MLLP acknowledgment modes, resends and the timeout answer (docs/interfaces.md §5 "MLLP").

Real processes (`rxgate mllp`, `rxgate bridge`), a real Redis, real MLLP clients (a raw socket and
python-hl7's `hl7.client.MLLPClient`), and a reply listener the test runs (`ReplyPeer`). What must
NOT arrive is shown with a barrier, never by waiting: answers on one connection come in the order
of the frames, and replies to one address in the order the messages were received, so once the
barrier's answer is in, everything before it that was going to come has come.
"""

from __future__ import annotations

import socket
import threading
import time

import hl7
import pytest
from hl7.client import MLLPClient

from tests.builders import adult_order_set, go_order
from tests.integration.conftest import audit_count, audit_per_control_id, client, names, wait_until
from tests.integration.mllp_client import (
    ReplyPeer,
    ack,
    framed,
    peer_ack,
    read_frames,
    segment,
    start_bridge,
    start_listener,
    with_modes,
)
from validator import er7

pytestmark = pytest.mark.integration

MODES = ("AL", "NE", "ER", "SU", "")
# What the contract says, written out (not computed with the code under test):
# a commit ACK CA goes back for MSH-15 AL or SU (an empty MSH-15 in enhanced mode is NE) ...
COMMIT_CA_SENT = {"AL": True, "NE": False, "ER": False, "SU": True, "": False}
# ... and the application response goes to the reply address for these MSA-1 codes (empty MSH-16 is AL)
REPLY_FOR = {"AL": {"AA", "AE"}, "NE": set(), "ER": {"AE"}, "SU": {"AA"}, "": {"AA", "AE"}}


def accepted(control_id: str, mrn: str) -> str:
    return adult_order_set(control_id, mrn=mrn)


def refused(control_id: str, mrn: str) -> str:
    return adult_order_set(control_id, mrn=mrn, go=go_order(dose="30"))  # AE go.dose


def outbound_by_control_id(env) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for _id, fields in client(env).xrange(names(env)[1]):
        out.setdefault(fields["control_id"], []).append(fields)
    return out


@pytest.fixture
def peer():
    p = ReplyPeer()
    yield p
    p.close()


def reply_env(env, peer_port: int, **extra: str) -> dict[str, str]:
    return dict(env, RXGATE_MLLP_REPLY_TO=f"PHARMSYS^GENHOSP=127.0.0.1:{peer_port}", RXGATE_MLLP_REPLY_ACK_TIMEOUT="5",
                RXGATE_MLLP_REPLY_INITIAL_DELAY="0.1", RXGATE_MLLP_REPLY_MAX_DELAY="0.5", **extra)


def test_every_msh15_msh16_combination_on_accepted_and_refused_messages(env, procs, peer):
    procs.env = reply_env(env, peer.port)
    start_bridge(procs, procs.env)
    port = start_listener(procs)
    cases = []  # (control id, MSH-15, MSH-16, expected MSA-1)
    for i, (m15, m16) in enumerate((a, b) for a in MODES for b in MODES if (a, b) != ("", "")):
        cases.append((f"MA{i:02d}", m15, m16, "AA"))
        cases.append((f"MR{i:02d}", m15, m16, "AE"))
    cases.insert(7, ("MO01", "", "", "AA"))  # an original-mode message in the middle: answered on the socket
    with socket.create_connection(("127.0.0.1", port)) as s:
        for cid, m15, m16, expected in cases:
            build = accepted if expected == "AA" else refused
            s.sendall(framed(with_modes(build(cid, mrn=f"MRN{cid}"), m15, m16)))
        s.sendall(framed(with_modes(accepted("MBARRIER", mrn="MRNBAR"), "AL", "AL")))
        want_socket = [("AA" if m15 == m16 == "" else "CA", cid) for cid, m15, m16, _ in cases
                       if (m15 == m16 == "") or COMMIT_CA_SENT[m15]] + [("CA", "MBARRIER")]
        got = read_frames(s, len(want_socket))
    assert [ack(x) for x in got] == want_socket
    assert all(segment(x, "MSH")[8] == "ACK^O11^ACK" for x in got if ack(x)[0] == "CA")

    want_replies = [cid for cid, m15, m16, expected in cases if (m15, m16) != ("", "") and expected in REPLY_FOR[m16]]
    replies = peer.wait_for(len(want_replies) + 1)
    assert [ack(r)[1] for r in replies] == want_replies + ["MBARRIER"]

    outbound = outbound_by_control_id(env)
    for cid, _m15, _m16, expected in cases:  # every application response is on the outbound stream, whatever the mode
        [entry] = outbound[cid]
        assert entry["ack_code"] == expected
    for r in replies:  # the reply is the published response, byte for byte
        assert r == outbound[ack(r)[1]][0]["hl7"]
    assert audit_count(env) == len(cases) + 1


def test_commit_reject_is_sent_as_msh15_asks_and_nothing_is_queued(env, procs):
    port = start_listener(procs)  # no bridge: a CA/CR does not wait for a verdict
    unsupported_version = adult_order_set("MCR01", mrn="MCR1", version="2.9")
    unsupported_type = adult_order_set("MCR02", mrn="MCR2").replace("RDE^O11^RDE_O11", "ADT^A01^ADT_A01", 1)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(with_modes(unsupported_version, "AL", "AL")))
        s.sendall(framed(with_modes(unsupported_type, "ER", "NE")))
        s.sendall(framed(with_modes(unsupported_version.replace("MCR01", "MCR03"), "SU", "AL")))  # SU: no CR
        s.sendall(framed(with_modes(unsupported_version.replace("MCR01", "MCR04"), "NE", "AL")))  # NE: nothing
        s.sendall(framed(with_modes(accepted("MCRBAR", mrn="MCRB"), "AL", "NE")))
        first, second, barrier = read_frames(s, 3)
    assert ack(first) == ("CR", "MCR01") and ack(second) == ("CR", "MCR02") and ack(barrier) == ("CA", "MCRBAR")
    assert segment(first, "ERR")[3].startswith("203^") and segment(first, "ERR")[5] == "hl7.version"
    assert segment(second, "ERR")[3].startswith("200^") and segment(second, "ERR")[5] == "hl7.message_type"
    inbound = client(env).xrange(names(env)[0])
    assert len(inbound) == 1 and "MCRBAR" in inbound[0][1]["hl7"]  # only the barrier was queued


def test_commit_error_when_the_broker_does_not_take_the_message(env, procs):
    procs.env = dict(env, RXGATE_BROKER_URL="redis://127.0.0.1:1/0")
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(with_modes(accepted("MCE01", mrn="MCE1"), "AL", "AL")))
        s.sendall(framed(with_modes(accepted("MCE02", mrn="MCE2"), "SU", "AL")))  # SU: no CE
        s.sendall(framed(with_modes(accepted("MCE03", mrn="MCE3"), "ER", "AL")))
        s.sendall(framed(accepted("MCE04", mrn="MCE4")))  # original mode: the AR of before
        answers = read_frames(s, 3, timeout=15)
    assert [ack(x) for x in answers] == [("CE", "MCE01"), ("CE", "MCE03"), ("AR", "MCE04")]
    assert "service.not_processed" in answers[0] and "not queued (broker unavailable), resend" in answers[0]


def test_commit_acks_from_the_peer_are_consumed_not_answered(env, procs):
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for code in ("CA", "CE", "CR"):
            s.sendall(framed(peer_ack(f"RX{code}", code)))
        s.sendall(framed(with_modes(accepted("MPA01", mrn="MPA1"), "AL", "NE")))
        [only] = read_frames(s, 1, timeout=15)
    assert ack(only) == ("CA", "MPA01")  # the three commit ACKs got nothing back
    inbound = client(env).xrange(names(env)[0])
    assert len(inbound) == 1 and "MPA01" in inbound[0][1]["hl7"]  # and were not queued


def test_python_hl7_client_in_original_and_enhanced_mode(env, procs, peer):
    procs.env = reply_env(env, peer.port)
    start_bridge(procs, procs.env)
    port = start_listener(procs)
    with MLLPClient("127.0.0.1", port) as c:
        c.socket.settimeout(30)
        original = hl7.parse(c.send_message(accepted("MPY01", mrn="MPY1")).decode().strip("\x0b\x1c\r"))
        commit = hl7.parse(c.send_message(with_modes(refused("MPY02", mrn="MPY2"), "AL", "ER")).decode()
                           .strip("\x0b\x1c\r"))
    assert str(original.segment("MSA")[1]) == "AA" and str(original.segment("MSA")[2]) == "MPY01"
    assert str(commit.segment("MSA")[1]) == "CA" and str(commit.segment("MSA")[2]) == "MPY02"
    [reply] = peer.wait_for(1)
    assert ack(reply) == ("AE", "MPY02") and "go.dose" in reply


def test_reply_retried_with_back_off_until_the_peer_takes_it(env, procs):
    from workers.queue.embedded import free_port

    peer_port = free_port()  # nothing listens there yet: the peer is down
    procs.env = reply_env(env, peer_port)
    start_bridge(procs, procs.env)
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(with_modes(accepted("MRT01", mrn="MRT1"), "AL", "AL")))
        assert ack(read_frames(s, 1)[0]) == ("CA", "MRT01")
    wait_until(lambda: "attempt 2 failed" in procs.logs(), 30, what="two failed reply attempts")
    peer = ReplyPeer(peer_port, answers=("CE", "CA"))  # the peer comes up, and first cannot commit
    try:
        first, second = peer.wait_for(2)
    finally:
        peer.close()
    assert first == second and ack(first) == ("AA", "MRT01")  # the same response, sent again after CE
    wait_until(lambda: "delivered" in procs.logs(), 15, what="the delivery log line")
    logs = procs.logs()
    assert "peer answered MSA-1 CE" in logs and "MRT1" not in logs  # control ids logged, never the MRN


def test_reply_given_up_after_the_budget_stays_on_outbound_and_audit(env, procs):
    from workers.queue.embedded import free_port

    procs.env = reply_env(env, free_port(), RXGATE_MLLP_REPLY_BUDGET="1")  # the peer never comes
    start_bridge(procs, procs.env)
    port = start_listener(procs)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(with_modes(accepted("MGU01", mrn="MGU1"), "NE", "AL")))
        s.sendall(framed(with_modes(accepted("MGUBAR", mrn="MGUB"), "AL", "NE")))
        assert ack(read_frames(s, 1)[0]) == ("CA", "MGUBAR")  # MSH-15 NE: no commit ACK for the first
    wait_until(lambda: "given up" in procs.logs(), 30, what="the reply to be given up")
    assert "MGU01" in procs.logs().split("given up")[0].rsplit("\n", 1)[-1]
    assert outbound_by_control_id(env)["MGU01"][0]["ack_code"] == "AA"
    assert audit_per_control_id(env)["MGU01"] == 1


def test_resend_while_in_flight_waits_for_the_same_verdict(env, procs):
    """Bridge paused (not started): the first copy and its resend on another connection are both pending;
    the resend is not queued again; when the bridge comes, both get the same verdict, one audit record."""
    port = start_listener(procs, timeout=60)
    message = framed(accepted("MIF01", mrn="MIF1"))
    answers: dict[str, str] = {}

    def send(name: str) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(message)
            [answers[name]] = read_frames(s, 1, timeout=60)

    first = threading.Thread(target=send, args=("first",))
    first.start()
    r = client(env)
    wait_until(lambda: r.xlen(names(env)[0]) == 1, 15, what="the first copy queued")
    resend = threading.Thread(target=send, args=("resend",))
    resend.start()
    wait_until(lambda: "already queued" in procs.logs(), 15, what="the resend to join the queued entry")
    assert r.xlen(names(env)[0]) == 1  # not queued twice
    start_bridge(procs, env)
    first.join(60)
    resend.join(60)
    assert answers["first"] == answers["resend"]  # byte for byte: the one verdict of the one entry
    assert ack(answers["first"]) == ("AA", "MIF01")
    assert audit_per_control_id(env) == {"MIF01": 1}
    assert len(outbound_by_control_id(env)["MIF01"]) == 1


def test_resend_after_the_verdict_gets_the_stored_verdict(env, procs):
    start_bridge(procs, env)
    port = start_listener(procs)
    message = framed(refused("MSV01", mrn="MSV1"))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(message)
        [first] = read_frames(s, 1)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(message)
        [again] = read_frames(s, 1)
    assert first == again and ack(first) == ("AE", "MSV01")
    assert audit_per_control_id(env) == {"MSV01": 1}


def test_timeout_answer_goes_to_the_socket_only_and_the_verdict_stays_the_one_answer(env, procs):
    port = start_listener(procs, timeout=1.0)  # no bridge: nothing is judged
    message = framed(accepted("MTO01", mrn="MTO1"))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(message)
        [timed_out] = read_frames(s, 1, timeout=15)
    assert ack(timed_out) == ("AR", "MTO01")
    err = segment(timed_out, "ERR")
    assert err[3].startswith("207^") and err[5] == "rxgate.timeout" and err[8] == "not yet judged: resend unchanged"
    r = client(env)
    inbound, outbound, _ = names(env)
    assert r.xlen(inbound) == 1 and r.xlen(outbound) == 0 and audit_count(env) == 0  # socket only

    # the sender resends unchanged, here to another listener (the in-flight note is in Redis), and a bridge
    # comes: the resend gets the verdict of the entry still queued
    other = start_listener(procs, timeout=60)
    resend: list[str] = []
    sock = socket.create_connection(("127.0.0.1", other))
    sock.sendall(message)
    wait_until(lambda: "already queued" in procs.logs(), 15, what="the resend to join the queued entry")
    start_bridge(procs, env)
    try:
        resend = read_frames(sock, 1, timeout=30)
    finally:
        sock.close()
    assert ack(resend[0]) == ("AA", "MTO01")
    [entry] = outbound_by_control_id(env)["MTO01"]  # one answer for the entry: the verdict, not the timeout
    assert entry["ack_code"] == "AA" and entry["hl7"] == resend[0] and "rxgate.timeout" not in entry["hl7"]
    assert audit_per_control_id(env) == {"MTO01": 1}


def test_no_timeout_answer_follows_a_commit_accept(env, procs):
    port = start_listener(procs, timeout=1.0)  # no bridge
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(framed(with_modes(accepted("MNT01", mrn="MNT1"), "AL", "AL")))
        s.sendall(framed(accepted("MNT02", mrn="MNT2")))  # original mode: times out after 1 s
        answers = read_frames(s, 2, timeout=15)
    # had the first got a timeout answer too, it would have come before the second's (its deadline is earlier)
    assert [ack(x) for x in answers] == [("CA", "MNT01"), ("AR", "MNT02")]
    assert "rxgate.timeout" in answers[1] and time.monotonic() - started >= 1.0


@pytest.mark.skipif(not hasattr(er7, "redelivery_form"),
                    reason="the redelivery key (MSH-7 emptied, trailing empties removed; issue 13 core) is not merged yet")
def test_restamped_resend_waits_in_flight_and_then_gets_the_stored_answer(env, procs):
    """A resend with MSH-7 re-stamped and trailing empty fields is the same message (docs/interfaces.md §5
    redelivery key): in flight it waits for the first copy's verdict; after it, it gets the stored answer."""
    port = start_listener(procs, timeout=60)
    original = accepted("MRS01", mrn="MRS1")
    restamped = original.replace("|20261201083000||RDE^O11", "|20261201083500||RDE^O11", 1).replace(
        "\rPV1|1|I|ONC^4B^12\r", "\rPV1|1|I|ONC^4B^12|||\r", 1)
    assert restamped != original
    answers: dict[str, str] = {}

    def send(name: str, text: str) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(framed(text))
            [answers[name]] = read_frames(s, 1, timeout=60)

    first = threading.Thread(target=send, args=("first", original))
    first.start()
    r = client(env)
    wait_until(lambda: r.xlen(names(env)[0]) == 1, 15, what="the first copy queued")
    resend = threading.Thread(target=send, args=("resend", restamped))
    resend.start()
    wait_until(lambda: "already queued" in procs.logs(), 15, what="the re-stamped resend to join the queued entry")
    start_bridge(procs, env)
    first.join(60)
    resend.join(60)
    send("after", restamped)
    assert answers["first"] == answers["resend"] == answers["after"] and ack(answers["first"]) == ("AA", "MRS01")
    assert audit_per_control_id(env) == {"MRS01": 1}
