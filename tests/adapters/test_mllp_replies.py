"""workers/queue/replies.py and workers/queue/tls.py in-process: reply addresses, delivery, back-off, budget.

The peer is an asyncio MLLP server in the test's own loop; each test waits for the reply queue to
be done (`queue.join()`), so outcomes never depend on speed: a peer that is down stays down, a
peer that never acknowledges never does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import trustme

from validator.acknowledgment import AckModes
from workers.queue.embedded import free_port
from workers.queue.replies import Replies, ReplyAddress, msa1, parse_reply_to
from workers.queue.tls import TlsSetupError, client_context, server_context
from workers.queue.verdicts import Answer
from workers.settings import Settings

AL_AL = AckModes(enhanced=True, accept="AL", application="AL")
SENDER = ("PHARMSYS", "GENHOSP")


def settings(**kw) -> Settings:
    base = dict(mllp_reply_budget=5.0, mllp_reply_initial_delay=0.01, mllp_reply_max_delay=0.05,
                mllp_reply_ack_timeout=2.0)
    base.update(kw)
    return Settings(**base)


def response(control_id: str, code: str = "AA") -> Answer:
    text = f"MSH|^~\\&|RXGATE|GENHOSP|PHARMSYS|GENHOSP|20261201||RRE^O12^RRE_O12|R{control_id}|P|2.5.1\r" \
           f"MSA|{code}|{control_id}\r"
    return Answer(text, code, control_id)


class Peer:
    """An asyncio reply listener: records frames, answers each with the next MSA-1 of `answers` (None: silence)."""

    def __init__(self, answers=("CA",)):
        self.answers = list(answers)
        self.frames: list[str] = []

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        buf = b""
        while chunk := await reader.read(65536):
            buf += chunk
            while b"\x1c\r" in buf:
                end = buf.index(b"\x1c\r")
                text = buf[1:end].decode()
                buf = buf[end + 2:]
                self.frames.append(text)
                code = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                if code is not None:
                    writer.write(b"\x0b" + f"MSH|^~\\&|P|G|R|G|1||ACK|A1|P|2.5.1\rMSA|{code}|x\r".encode() + b"\x1c\r")
                    await writer.drain()
        writer.close()


async def deliver(replies: Replies, address: ReplyAddress, *answers: tuple[asyncio.Future, AckModes, str]) -> None:
    for fut, modes, cid in answers:
        replies.schedule(address, fut, modes, cid, f"1-{cid}", lambda f: None)
    await replies.senders[address].queue.join()


def resolved(answer: Answer) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(answer)
    return fut


def test_reply_to_setting_parsed_and_bad_entries_named():
    routes = parse_reply_to(" PHARMSYS^GENHOSP=10.0.0.5:6661 , LIS^=lis.example:7000,ENG^X=[::1]:2575 ")
    assert routes == {("PHARMSYS", "GENHOSP"): ReplyAddress("10.0.0.5", 6661),
                      ("LIS", ""): ReplyAddress("lis.example", 7000), ("ENG", "X"): ReplyAddress("::1", 2575)}
    assert str(routes[("ENG", "X")]) == "[::1]:2575" and parse_reply_to("") == {}
    for bad in ("PHARMSYS=10.0.0.5:6661", "A^B=host", "A^B=host:0", "A^B=host:99999", "A^B^C=h:1", "A^B",
                "A^B=:1", "A^B=h:1,A^B=h:2"):
        with pytest.raises(ValueError, match="RXGATE_MLLP_REPLY_TO"):
            parse_reply_to(bad)


def test_msa1():
    assert msa1(response("C1", "AE").hl7) == "AE"
    assert msa1("MSH#^~\\&#A\rMSA#CA#C1\r") == "CA"  # the peer's own field separator
    assert msa1("MSH|^~\\&|A\r") == ""


def test_delivered_in_order_of_receipt_whatever_order_the_verdicts_come_in():
    async def run():
        peer = Peer()
        port = await peer.start()
        replies = Replies(settings(), {SENDER: ReplyAddress("127.0.0.1", port)}, None)
        address = replies.address_for(SENDER)
        first = asyncio.get_running_loop().create_future()
        replies.schedule(address, first, AL_AL, "C1", "1-1", lambda f: None)
        replies.schedule(address, resolved(response("C2")), AL_AL, "C2", "1-2", lambda f: None)
        await asyncio.sleep(0)
        first.set_result(response("C1", "AE"))  # the first message's verdict comes last
        await replies.senders[address].queue.join()
        await replies.close(1)
        return peer.frames

    assert [msa1(f) + ":" + f.split("MSA|")[1].split("|")[1].strip() for f in asyncio.run(run())] == ["AE:C1", "AA:C2"]


def test_msh16_decides_which_verdicts_are_sent():
    async def run():
        peer = Peer()
        port = await peer.start()
        replies = Replies(settings(), {SENDER: ReplyAddress("127.0.0.1", port)}, None)
        address = ReplyAddress("127.0.0.1", port)
        er, su, ne = (AckModes(enhanced=True, accept="NE", application=m) for m in ("ER", "SU", "NE"))
        await deliver(replies, address,
                      (resolved(response("ER-AA")), er, "ER-AA"), (resolved(response("ER-AE", "AE")), er, "ER-AE"),
                      (resolved(response("SU-AA")), su, "SU-AA"), (resolved(response("SU-AR", "AR")), su, "SU-AR"),
                      (resolved(response("NE-AE", "AE")), ne, "NE-AE"))
        await replies.close(1)
        return [f.split("MSA|")[1].split("|")[1].strip() for f in peer.frames]

    assert asyncio.run(run()) == ["ER-AE", "SU-AA"]


def test_commit_error_from_the_peer_is_retried_and_a_reject_is_not(caplog):
    async def run(answers):
        peer = Peer(answers)
        port = await peer.start()
        address = ReplyAddress("127.0.0.1", port)
        replies = Replies(settings(), {SENDER: address}, None)
        await deliver(replies, address, (resolved(response("C1")), AL_AL, "C1"))
        await replies.close(1)
        return peer.frames

    caplog.set_level(logging.INFO, "rxgate.mllp.replies")
    retried = asyncio.run(run(("CE", "AE", "CA")))
    assert len(retried) == 3 and len(set(retried)) == 1  # the same response three times, then acknowledged
    assert "delivered (attempt 3)" in caplog.text
    caplog.clear()
    assert len(asyncio.run(run(("CR", "CA")))) == 1  # refused: never sent again
    assert "refused: the peer answered MSA-1 CR; not sent again" in caplog.text


def test_peer_down_retried_with_back_off_then_given_up_after_the_budget(caplog):
    async def run():
        address = ReplyAddress("127.0.0.1", free_port())  # nothing listens there
        replies = Replies(settings(mllp_reply_budget=0.3), {SENDER: address}, None)
        await deliver(replies, address, (resolved(response("C1")), AL_AL, "C1"))
        await replies.close(1)

    caplog.set_level(logging.INFO, "rxgate.mllp.replies")
    asyncio.run(run())
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) >= 2 and all(r.levelno == logging.WARNING for r in failed)
    given_up = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1 and given_up[0].levelno == logging.ERROR
    assert "control_id=C1" in given_up[0].getMessage() and "outbound stream" in given_up[0].getMessage()


def test_a_peer_that_never_acknowledges_is_not_taken_as_delivered(caplog):
    async def run():
        peer = Peer(answers=(None,))
        port = await peer.start()
        address = ReplyAddress("127.0.0.1", port)
        replies = Replies(settings(mllp_reply_budget=0.5, mllp_reply_ack_timeout=0.1), {SENDER: address}, None)
        await deliver(replies, address, (resolved(response("C1")), AL_AL, "C1"))
        await replies.close(1)
        return peer.frames

    caplog.set_level(logging.INFO, "rxgate.mllp.replies")
    assert len(asyncio.run(run())) >= 2  # sent again: silence is not an acknowledgment
    assert "given up" in caplog.text and "delivered (attempt" not in caplog.text
    assert "no connection or no acknowledgment within 0.1 s" in caplog.text


def test_stopping_logs_the_replies_not_delivered(caplog):
    async def run():
        address = ReplyAddress("127.0.0.1", free_port())
        replies = Replies(settings(), {SENDER: address}, None)
        never = asyncio.get_running_loop().create_future()  # no verdict yet
        replies.schedule(address, never, AL_AL, "C1", "1-1", lambda f: None)
        replies.schedule(address, resolved(response("C2")), AL_AL, "C2", "1-2", lambda f: None)
        await replies.close(0.05)

    caplog.set_level(logging.INFO, "rxgate.mllp.replies")
    asyncio.run(run())
    lost = [r.getMessage() for r in caplog.records if "not delivered: the listener stopped" in r.getMessage()]
    assert len(lost) == 2 and "control_id=C1" in lost[0] and "control_id=C2" in lost[1]


def test_unrouted_sender_said_once(caplog):
    caplog.set_level(logging.INFO, "rxgate.mllp.replies")
    replies = Replies(settings(), {}, None)
    assert replies.address_for(("LIS", "GENHOSP")) is None and replies.address_for(("LIS", "GENHOSP")) is None
    assert caplog.text.count("no reply address for sender LIS^GENHOSP") == 1


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(d / "ca.pem")
    leaf.cert_chain_pems[0].write_to_path(d / "cert.pem")
    leaf.private_key_pem.write_to_path(d / "key.pem")
    (d / "junk.pem").write_text("junk\n")
    return d


def test_server_context_is_tls12_plus_and_mutual_with_a_client_ca(pem):
    ctx = server_context(str(pem / "cert.pem"), str(pem / "key.pem"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_NONE
    mutual = server_context(str(pem / "cert.pem"), str(pem / "key.pem"), str(pem / "ca.pem"))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    client = client_context(str(pem / "ca.pem"), str(pem / "cert.pem"), str(pem / "key.pem"))
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2 and client.check_hostname
    assert client.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("make", "named"), [
    (lambda d: server_context(str(d / "nope.pem"), str(d / "key.pem")), "nope.pem"),
    (lambda d: server_context(str(d / "cert.pem"), str(d / "nope.key")), "nope.key"),
    (lambda d: server_context(str(d / "junk.pem"), str(d / "key.pem")), "junk.pem"),
    (lambda d: server_context(str(d / "cert.pem"), str(d / "key.pem"), str(d / "junk.pem")), "junk.pem"),
    (lambda d: server_context(str(d / "cert.pem"), ""), "--tls-key"),
    (lambda d: client_context(str(d / "nope.pem")), "nope.pem"),
    (lambda d: client_context(str(d / "ca.pem"), str(d / "cert.pem")), "_KEY"),
])
def test_unusable_tls_files_are_named(pem, make, named):
    with pytest.raises(TlsSetupError, match=named.replace(".", r"\.")):
        make(pem)
