"""`rxgate mllp`: the MLLP (TCP, optionally TLS) listener every interface engine speaks (docs/interfaces.md §5).

    <VT 0x0B> message <FS 0x1C><CR 0x0D>       (one frame; answers come back framed the same way)

Each frame is split into its messages (normally one); each message is put on the stream queue
(`XADD <prefix>:inbound * hl7 <message>`, the path of `rxgate submit`, through
workers/queue/verdicts.py), the stream bridge (`rxgate bridge` / `rxgate serve`) judges it, audits
it and publishes its application response on `<prefix>:outbound` with `inbound_id` — whatever the
acknowledgment mode. What the sender is told depends on the mode (validator/acknowledgment.py):

- **Original mode** (MSH-15 and MSH-16 empty): the application response, on the same connection.
  No verdict within `--timeout` seconds (RXGATE_MLLP_TIMEOUT, default 30; keep it below the sender's
  own ACK timeout): `ACK` AR, ERR-3 207, ERR-5 `rxgate.timeout`, "not yet judged: resend unchanged".
  That answer goes to this socket only — not published, not audited, not stored under the message
  key; the message stays queued and its verdict stays the entry's one answer, which a resend of the
  unchanged message gets.
- **Enhanced mode** (MSH-15 or MSH-16 valued): a commit ACK on the same connection as MSH-15 asks —
  `CA` once the XADD is acknowledged, `CR` (not queued) for an MSH-9/11/12 rxgate does not take,
  `CE` when Redis does not take it — and the application response, as MSH-16 asks, on a connection
  rxgate opens to the sender's reply address (RXGATE_MLLP_REPLY_TO, workers/queue/replies.py);
  never unsolicited on the inbound socket, and never a timeout answer after a `CA`.
- A commit ACK a peer sends (MSH-9 `ACK`, MSA-1 CA/CE/CR) is consumed: not queued, not answered.
- **A resend waits for the verdict**: a message already queued and not yet answered (the same message
  key in flight, on this listener or another) is not queued again; it gets that entry's verdict.

Never silence otherwise:
- the queue (Redis) does not take the message: original mode `AR` ERR 207 `service.not_processed`
  "not queued (broker unavailable), resend"; enhanced mode `CE`;
- a frame holding no MSH segment (not HL7 at all): `AR` ERR 100 `hl7.structure` at once, not queued
  (there is no sender or control id to key it on, and port scanners should not fill the audit log);
- a frame larger than RXGATE_MLLP_MAX_FRAME bytes: `AR` ERR 100, then the connection is closed.

Transport details: frames may be split across packets and several frames may come in one packet;
bytes outside frames (line noise, keep-alives) are skipped; a half-closed connection (the sender
shut down its write side after the last frame) still gets every answer before the listener closes
it; a frame left unfinished at end of input is dropped (logged, never answered: it was never a whole
message). Messages of one connection are queued in the order their frames arrived, and its answers
written in that order. Many connections are served concurrently (asyncio).

TLS (`--tls-cert/--tls-key [--tls-client-ca]`): the same framing and answers inside TLS 1.2+; a
failed handshake (plain MLLP on the TLS port, no or a foreign client certificate under mutual TLS)
closes the connection without a byte of MLLP, logged and counted.

Logs carry peer addresses, control ids and counts, never message content.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable
from datetime import datetime

from validator.acknowledgment import (
    COMMIT_ACCEPT,
    COMMIT_ERROR,
    COMMIT_REJECT,
    NEVER,
    AckModes,
    commit_refusal,
    peer_commit_ack,
    sender_namespaces,
)
from validator.er7 import RawMessage, decode, split_messages
from validator.errors import MessageRejected
from validator.findings import error
from validator.model import Location
from validator.reader import read_header
from validator.response import build_commit_ack, build_rejection
from workers import metrics
from workers.queue.replies import Replies
from workers.queue.verdicts import TIMEOUT_RULE, NotQueued, Submission, Verdicts, timeout_answer
from workers.settings import Settings

log = logging.getLogger("rxgate.mllp")

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
END = FS + CR
NOT_QUEUED_RULE = "service.not_processed"
NOT_QUEUED_TEXT = "not queued (broker unavailable), resend"
STRUCTURE_RULE = "hl7.structure"
TLS_HANDSHAKE_SECONDS = 30.0


def frame(text: str) -> bytes:
    return VT + text.encode("utf-8") + END


class FrameReader:
    """Incremental MLLP de-framer: feed bytes, get whole frames (payloads without the framing bytes)."""

    def __init__(self, max_frame: int):
        self.buffer = bytearray()
        self.max_frame = max_frame
        self.skipped = 0  # bytes seen outside any frame

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames: list[bytes] = []
        while True:
            start = self.buffer.find(VT)
            if start < 0:
                self.skipped += len(self.buffer)
                self.buffer.clear()
                return frames
            if start:
                self.skipped += start
                del self.buffer[:start]
            end = self.buffer.find(END, 1)
            if end < 0:
                if len(self.buffer) > self.max_frame + 1:
                    raise FrameTooLarge(len(self.buffer))
                return frames
            frames.append(bytes(self.buffer[1:end]))
            del self.buffer[: end + 2]

    @property
    def partial(self) -> bool:
        return bool(self.buffer)


class FrameTooLarge(Exception):
    pass


def _header(raw: RawMessage | None, settings: Settings):
    if raw is None:
        return None
    try:
        return read_header(raw, settings.tz)
    except MessageRejected:  # the header only fills MSA-2 and MSH-3..6; without it they stay empty
        return None


def rejection(raw: RawMessage | None, rule: str, code: str, message: str, settings: Settings) -> str:
    return build_rejection(_header(raw, settings), rule, code, message, None, datetime.now(settings.tz))


def _done(value: list[str]) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class MllpServer:
    def __init__(self, settings: Settings, broker_url: str, host: str, port: int, timeout: float,
                 tls: ssl.SSLContext | None = None, replies: Replies | None = None):
        self.settings = settings
        self.host, self.port, self.timeout = host, port, timeout
        self.tls = tls
        self.verdicts = Verdicts.connect(settings, broker_url)
        self.replies = replies or Replies(settings, {}, None)
        self.server: asyncio.AbstractServer | None = None
        self.connections: dict[asyncio.Task, list[int]] = {}  # connection task -> [frames awaiting an answer]

    async def start(self) -> int:
        await self.verdicts.start()
        self.server = await asyncio.start_server(self._on_connection, self.host, self.port,
                                                 limit=2 ** 16, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("mllp: listening on %s:%d (%s, timeout %g s, queue %s, reply addresses for %d sender(s))",
                 self.host, self.port, "TLS" + (" with client certificates" if self._mutual else "") if self.tls
                 else "plain TCP", self.timeout, self.verdicts.inbound, len(self.replies.routes))
        return self.port

    @property
    def _mutual(self) -> bool:
        return self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting; give open connections up to `grace` seconds to receive their answers, and
        pending replies up to RXGATE_MLLP_REPLY_ACK_TIMEOUT to be delivered."""
        if self.server is not None:
            self.server.close()
        for task, pending in list(self.connections.items()):
            if not pending[0]:
                task.cancel()  # idle: nothing owed to this sender
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=self.timeout + 1 if grace is None else grace)
        for task in list(self.connections):
            task.cancel()
        await self.replies.close(self.settings.mllp_reply_ack_timeout if grace is None else grace)
        await self.verdicts.close()

    # --- one connection ---------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        pending = [0]
        self.connections[task] = pending
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            if self.tls is not None and not await self._handshake(writer, peer_s):
                return
            await self._serve(reader, writer, peer_s, pending)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            self.connections.pop(task, None)

    async def _handshake(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        try:
            await writer.start_tls(self.tls, ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS)
        except ssl.SSLError as exc:  # no or a foreign client certificate, plain MLLP, an old TLS version
            log.warning("mllp %s: TLS handshake failed (%s): connection closed", peer, exc.reason or type(exc).__name__)
            metrics.mllp_tls_failure()
            return False
        except TimeoutError:
            log.warning("mllp %s: no TLS handshake within %g s: connection closed", peer, TLS_HANDSHAKE_SECONDS)
            metrics.mllp_tls_failure()
            return False
        except (ConnectionError, OSError) as exc:  # connected and went away (a TCP health check): not a failure
            log.debug("mllp %s: closed during the TLS handshake (%s)", peer, type(exc).__name__)
            return False
        if self._mutual:
            log.info("mllp %s: TLS client certificate %s", peer, _certificate_name(writer.get_extra_info("peercert")))
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                     pending: list[int]) -> None:
        answers: asyncio.Queue = asyncio.Queue()  # awaitables of answer texts, in frame order
        writer_task = asyncio.create_task(self._write_answers(answers, writer, peer))
        frames = FrameReader(self.settings.mllp_max_frame)
        in_order = asyncio.Lock()  # this connection's messages are queued in the order their frames came
        count = 0
        try:
            while not writer_task.done():
                data = await reader.read(65536)
                if not data:
                    break  # EOF: the sender is done (or half-closed); answer what we have, then close
                try:
                    for payload in frames.feed(data):
                        count += 1
                        pending[0] += 1
                        answers.put_nowait(asyncio.ensure_future(self._answer(payload, peer, pending, in_order)))
                except FrameTooLarge as exc:
                    log.warning("mllp %s: frame over %d bytes (%d so far): AR and closing", peer,
                                self.settings.mllp_max_frame, exc.args[0])
                    text = f"frame larger than {self.settings.mllp_max_frame} bytes"
                    answers.put_nowait(_done([rejection(None, STRUCTURE_RULE, "100", text, self.settings)]))
                    break
            if frames.partial:
                log.warning("mllp %s: connection ended inside a frame (%d bytes dropped, not answered)",
                            peer, len(frames.buffer))
            if frames.skipped:
                log.info("mllp %s: %d bytes outside frames ignored", peer, frames.skipped)
        except (ConnectionError, OSError) as exc:
            log.info("mllp %s: read ended (%s)", peer, type(exc).__name__)
        finally:
            answers.put_nowait(None)
            try:
                await writer_task
            except Exception:  # noqa: BLE001 - logged in the writer
                pass
            log.debug("mllp %s: closed after %d frames", peer, count)

    async def _write_answers(self, answers: asyncio.Queue, writer: asyncio.StreamWriter, peer: str) -> None:
        while True:
            item = await answers.get()
            if item is None:
                return
            try:
                responses = await item
            except Exception:  # noqa: BLE001 - never happens by design; the sender still gets an answer
                log.exception("mllp %s: internal error answering a frame", peer)
                responses = [rejection(None, NOT_QUEUED_RULE, "207", "not processed, resend", self.settings)]
            try:
                for response in responses:
                    writer.write(frame(response))
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                log.warning("mllp %s: could not write an answer (%s): the sender went away", peer,
                            type(exc).__name__)
                # keep draining the queue so pending futures are awaited (and forgotten), writing nothing
                while (item := await answers.get()) is not None:
                    try:
                        await item
                    except Exception:  # noqa: BLE001
                        pass
                return

    async def _answer(self, payload: bytes, peer: str, pending: list[int], in_order: asyncio.Lock) -> list[str]:
        """What goes back on this connection for one frame: per message, in order (possibly nothing)."""
        try:
            split = split_messages(decode(payload))
            if split.no_msh or not split.messages:
                log.warning("mllp %s: frame of %d bytes without an MSH segment: AR", peer, len(payload))
                metrics.mllp_rejection("not_hl7")
                return [rejection(None, STRUCTURE_RULE, "100", "frame is not HL7 (no MSH segment found)",
                                  self.settings)]
            deadline = time.monotonic() + self.timeout
            async with in_order:
                later = [await self._take(raw, peer, deadline) for raw in _deliveries(split, payload)]
            out: list[str] = []
            for answer in later:
                out.extend(await answer)
            return out
        finally:
            pending[0] -= 1

    async def _take(self, raw: RawMessage, peer: str, deadline: float) -> Awaitable[list[str]]:
        """Queue one message (or consume it); return what will answer it on this connection."""
        header = _header(raw, self.settings)
        consumed = peer_commit_ack(raw)
        if consumed:
            log.info("mllp %s: commit ACK %s from the peer (its control_id=%s) consumed, not answered", peer,
                     consumed, header.control_id if header else "")
            metrics.mllp_peer_ack(consumed)
            return _done([])
        modes = AckModes.of(raw)
        if modes.enhanced:
            return _done(await self._take_enhanced(raw, header, modes, peer))
        try:
            submission = await self.verdicts.submit(raw)
        except NotQueued as exc:
            log.error("mllp %s: could not queue control_id=%s (%s): AR sent", peer, _cid(header), exc)
            metrics.mllp_rejection("not_queued")
            return _done([rejection(raw, NOT_QUEUED_RULE, "207", NOT_QUEUED_TEXT, self.settings)])
        self._note_joined(submission, header, peer)
        answer = self.verdicts.answer(submission)
        return asyncio.ensure_future(self._verdict_or_timeout(raw, header, submission, answer, deadline, peer))

    async def _verdict_or_timeout(self, raw: RawMessage, header, submission: Submission, answer: asyncio.Future,
                                  deadline: float, peer: str) -> list[str]:
        try:
            return [(await asyncio.wait_for(answer, max(0.0, deadline - time.monotonic()))).hl7]
        except TimeoutError:
            self.verdicts.forget(submission, answer)
            log.warning("mllp %s: control_id=%s (inbound %s) not judged within %g s: AR %s (this socket only; "
                        "the entry stays queued)", peer, _cid(header), submission.entry_id, self.timeout,
                        TIMEOUT_RULE)
            metrics.mllp_rejection("timeout")
            return [timeout_answer(raw.text, self.settings)]

    async def _take_enhanced(self, raw: RawMessage, header, modes: AckModes, peer: str) -> list[str]:
        """Enhanced mode: queue unless refused at commit; the commit ACK as MSH-15 asks; the reply scheduled."""
        refusal = commit_refusal(header) if header is not None else None
        finding, err_code = None, "207"
        if refusal is not None:
            code, err_code = COMMIT_REJECT, refusal.code
            finding = error(refusal.rule, refusal.message,
                            Location(segment=refusal.segment, occurrence=1, field=refusal.field))
            log.warning("mllp %s: control_id=%s refused at commit (CR, %s): not queued", peer, _cid(header),
                        refusal.rule)
        else:
            try:
                submission = await self.verdicts.submit(raw)
            except NotQueued as exc:
                code, finding = COMMIT_ERROR, error(NOT_QUEUED_RULE, NOT_QUEUED_TEXT)
                log.error("mllp %s: could not queue control_id=%s (%s): CE", peer, _cid(header), exc)
            else:
                code = COMMIT_ACCEPT
                self._note_joined(submission, header, peer)
                self._schedule_reply(raw, header, modes, submission)
        sent = modes.commit_wanted(code)
        metrics.mllp_commit(code, sent)
        if not sent:
            return []
        return [build_commit_ack(header, code, datetime.now(self.settings.tz), finding, err_code)]

    def _schedule_reply(self, raw: RawMessage, header, modes: AckModes, submission: Submission) -> None:
        if modes.application == NEVER:
            return
        address = self.replies.address_for(sender_namespaces(raw))
        if address is None:
            return  # the response is on the outbound stream and in the audit log, as every response is
        answer = self.verdicts.answer(submission)
        self.replies.schedule(address, answer, modes, _cid(header), submission.entry_id,
                              lambda fut: self.verdicts.forget(submission, fut))

    def _note_joined(self, submission: Submission, header, peer: str) -> None:
        if submission.joined:
            log.info("mllp %s: control_id=%s is already queued (inbound %s, not yet answered): waiting for its "
                     "verdict, not queued again", peer, _cid(header), submission.entry_id)
            metrics.mllp_resend_joined()


def _deliveries(split, payload: bytes) -> list[RawMessage]:
    """A frame is one delivery: one message is queued as itself; data before the MSH or a second MSH
    queue the frame whole, which the bridge answers with one AR for all of it, audited once
    (validator.service.process_delivery)."""
    if not split.junk_before_first and len(split.messages) == 1:
        return split.messages
    lines = [line for line in re.split(r"\r\n|\r|\n", decode(payload).strip("\x0b\x1c\r\n")) if line.strip()]
    return [RawMessage(lines, split.messages[0].enc)]


def _certificate_name(cert: dict | None) -> str:
    """The client certificate's subject CN, else its subject alternative names (for the log: a system, not a patient)."""
    cert = cert or {}
    subject = dict(pair for rdn in cert.get("subject", ()) for pair in rdn)
    if subject.get("commonName"):
        return f"CN={subject['commonName']}"
    return ",".join(f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ())) or "(no name)"


def _cid(header) -> str:
    return (header.control_id or "") if header is not None else ""
