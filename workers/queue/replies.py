"""Enhanced mode's application responses, sent on a connection rxgate opens (docs/interfaces.md §5 "MLLP").

    RXGATE_MLLP_REPLY_TO = "PHARMSYS^GENHOSP=10.0.0.5:6661,LIS^GENHOSP=10.0.0.7:6661"

A sender is named by its MSH-3 and MSH-4 namespace ids (first components, unescaped with the
message's own encoding characters; compared exactly). A message in enhanced mode whose MSH-16 asks
for its application response gets it on a connection to that sender's reply address — never on the
inbound socket. Senders without a reply address get none: their responses are on
`<prefix>:outbound` and in the audit log, as every response is.

Delivery, per reply address: one queue in the order the messages were received (a reply waits for
the verdicts of the messages received before it from the same address), one connection at a time,
kept open while replies follow each other. A reply is delivered when the peer acknowledges its frame
with MSA-1 `CA` or `AA`; `CR`/`AR` is a refusal (logged, counted, not sent again); anything else —
connection refused or reset, no acknowledgment within RXGATE_MLLP_REPLY_ACK_TIMEOUT, `CE`/`AE` —
is retried with back-off (RXGATE_MLLP_REPLY_INITIAL_DELAY doubling up to
RXGATE_MLLP_REPLY_MAX_DELAY), each failure logged and counted. A reply not delivered within
RXGATE_MLLP_REPLY_BUDGET seconds of the message's receipt (at least one attempt is made) is given
up: logged as an error with its control id and inbound entry id, counted
(`rxgate_mllp_replies_total{outcome="given_up"}`); the response is still on `<prefix>:outbound` and
in the audit log, and the sender gets it by resending the message unchanged (the stored verdict).
Pending replies live in the listener's memory: a listener that stops first tries to deliver them for
a grace period, then logs those it could not (the same recovery applies).

Logs name addresses, control ids and inbound entry ids, never message content.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from validator.acknowledgment import AckModes
from workers import metrics
from workers.queue.verdicts import Answer
from workers.settings import Settings

log = logging.getLogger("rxgate.mllp.replies")

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
DELIVERED = ("CA", "AA")
REFUSED = ("CR", "AR")


@dataclass(frozen=True)
class ReplyAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_reply_to(value: str) -> dict[tuple[str, str], ReplyAddress]:
    """`MSH-3^MSH-4=host:port,…` -> {(MSH-3, MSH-4): address}; ValueError naming a bad entry."""
    routes: dict[tuple[str, str], ReplyAddress] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        sender, sep, address = entry.partition("=")
        application, caret, facility = sender.strip().partition("^")
        host, colon, port = address.strip().rpartition(":")
        host = host.strip("[]")
        if not (sep and caret and application and colon and host) or "^" in facility or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise ValueError(f"RXGATE_MLLP_REPLY_TO entry {entry!r} is not MSH-3^MSH-4=host:port")
        key = (application.strip(), facility.strip())
        if key in routes:
            raise ValueError(f"RXGATE_MLLP_REPLY_TO names {key[0]}^{key[1]} twice")
        routes[key] = ReplyAddress(host, int(port))
    return routes


def msa1(text: str) -> str:
    """MSA-1 of a message's first MSA segment ('' when there is none)."""
    for line in text.replace("\n", "\r").split("\r"):
        if line.startswith("MSA") and len(line) > 4:
            return line[4:].split(line[3])[0][:2].strip().upper()  # MSA-1 is a two-letter code (table 0008)
    return ""


class _NotDelivered(Exception):
    pass


@dataclass
class _Reply:
    answer: asyncio.Future  # the entry's Answer (workers.queue.verdicts)
    modes: AckModes
    control_id: str
    entry_id: str
    deadline: float  # monotonic: received + RXGATE_MLLP_REPLY_BUDGET
    forget: Callable[[asyncio.Future], None]


class ReplySender:
    """One reply address: its queue, in order of receipt, and its connection."""

    def __init__(self, address: ReplyAddress, settings: Settings, tls: ssl.SSLContext | None):
        self.address, self.settings, self.tls = address, settings, tls
        self.queue: asyncio.Queue[_Reply] = asyncio.Queue()
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.task = asyncio.create_task(self._run())

    def put(self, reply: _Reply) -> None:
        self.queue.put_nowait(reply)

    async def _run(self) -> None:
        while True:
            reply = await self.queue.get()
            try:
                await self._handle(reply)
            except asyncio.CancelledError:
                self._lost(reply, "the listener stopped")
                raise
            except Exception:  # noqa: BLE001 - a bug must not stop the replies behind this one
                log.exception("reply to %s for control_id=%s (inbound %s): internal error; given up",
                              self.address, reply.control_id, reply.entry_id)
                metrics.mllp_reply("given_up")
            finally:
                self.queue.task_done()
            if self.queue.empty():
                self._close()

    async def _handle(self, reply: _Reply) -> None:
        try:
            answer: Answer = await asyncio.wait_for(asyncio.shield(reply.answer),
                                                    max(0.0, reply.deadline - time.monotonic()))
        except TimeoutError:
            reply.forget(reply.answer)
            log.error("reply to %s for control_id=%s (inbound %s): no verdict within RXGATE_MLLP_REPLY_BUDGET "
                      "(%g s); given up (the verdict will be on the outbound stream and in the audit log)",
                      self.address, reply.control_id, reply.entry_id, self.settings.mllp_reply_budget)
            metrics.mllp_reply("given_up")
            return
        ack = answer.ack_code or msa1(answer.hl7)
        if not reply.modes.application_wanted(ack):
            return  # MSH-16 ER/SU/NE: this answer is not asked for (it is on the outbound stream anyway)
        await self._deliver(answer.hl7, reply)

    async def _deliver(self, text: str, reply: _Reply) -> None:
        delay = self.settings.mllp_reply_initial_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                code = await self._attempt(text)
            except TimeoutError:  # before OSError: asyncio's TimeoutError is one
                reason = f"no connection or no acknowledgment within {self.settings.mllp_reply_ack_timeout:g} s"
            except (_NotDelivered, OSError, ssl.SSLError) as exc:
                reason = str(exc) if isinstance(exc, _NotDelivered) else type(exc).__name__
            else:
                reason = f"the peer answered MSA-1 {code or '(none)'}"
                if code in DELIVERED:
                    log.info("reply to %s for control_id=%s (inbound %s) delivered (attempt %d)", self.address,
                             reply.control_id, reply.entry_id, attempt)
                    metrics.mllp_reply("delivered")
                    return
                if code in REFUSED:
                    log.error("reply to %s for control_id=%s (inbound %s) refused: %s; not sent again",
                              self.address, reply.control_id, reply.entry_id, reason)
                    metrics.mllp_reply("refused")
                    return
            self._close()
            left = reply.deadline - time.monotonic()
            if left <= 0:
                log.error("reply to %s for control_id=%s (inbound %s) not delivered after %d attempt(s) (%s): "
                          "RXGATE_MLLP_REPLY_BUDGET (%g s) spent, given up; the response stays on the outbound "
                          "stream and in the audit log, and a resend of the message gets it", self.address,
                          reply.control_id, reply.entry_id, attempt, reason, self.settings.mllp_reply_budget)
                metrics.mllp_reply("given_up")
                return
            wait = min(delay, left)
            log.warning("reply to %s for control_id=%s (inbound %s) attempt %d failed (%s); retrying in %.2f s",
                        self.address, reply.control_id, reply.entry_id, attempt, reason, wait)
            metrics.mllp_reply("retried")
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.settings.mllp_reply_max_delay)

    async def _attempt(self, text: str) -> str:
        """Send one frame and read the peer's acknowledgment: its MSA-1."""
        timeout = self.settings.mllp_reply_ack_timeout
        if self.conn is None:
            host = self.address.host
            self.conn = await asyncio.wait_for(asyncio.open_connection(
                host, self.address.port, ssl=self.tls, server_hostname=host if self.tls else None), timeout)
        reader, writer = self.conn
        writer.write(VT + text.encode("utf-8") + FS + CR)
        await writer.drain()
        return msa1(await asyncio.wait_for(_read_frame(reader), timeout))

    def _close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None

    def _lost(self, reply: _Reply, why: str) -> None:
        log.error("reply to %s for control_id=%s (inbound %s) not delivered: %s; it is on the outbound stream and "
                  "in the audit log, and a resend of the message gets it", self.address, reply.control_id,
                  reply.entry_id, why)
        metrics.mllp_reply("given_up")

    async def close(self, grace: float) -> None:
        """Deliver what is queued for up to `grace` seconds; log what is left."""
        try:
            await asyncio.wait_for(self.queue.join(), grace)
        except TimeoutError:
            pass
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        while not self.queue.empty():
            self._lost(self.queue.get_nowait(), "the listener stopped")
        self._close()


async def _read_frame(reader: asyncio.StreamReader) -> str:
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            raise _NotDelivered("the peer closed the connection before acknowledging")
        buf += chunk
        start = buf.find(VT)
        end = buf.find(FS + CR, start + 1) if start >= 0 else -1
        if end >= 0:
            return buf[start + 1:end].decode("utf-8", "replace")


class Replies:
    """Reply routes and one `ReplySender` per address."""

    def __init__(self, settings: Settings, routes: dict[tuple[str, str], ReplyAddress], tls: ssl.SSLContext | None):
        self.settings, self.routes, self.tls = settings, routes, tls
        self.senders: dict[ReplyAddress, ReplySender] = {}
        self._unrouted: set[tuple[str, str]] = set()

    def address_for(self, sender: tuple[str, str]) -> ReplyAddress | None:
        address = self.routes.get(sender)
        if address is None and sender not in self._unrouted:
            self._unrouted.add(sender)  # said once per sender, not once per message
            log.info("no reply address for sender %s^%s (RXGATE_MLLP_REPLY_TO): its enhanced-mode application "
                     "responses go to the outbound stream and the audit log only", *sender)
        return address

    def schedule(self, address: ReplyAddress, answer: asyncio.Future, modes: AckModes, control_id: str,
                 entry_id: str, forget: Callable[[asyncio.Future], None]) -> None:
        sender = self.senders.get(address)
        if sender is None:
            sender = self.senders[address] = ReplySender(address, self.settings, self.tls)
        sender.put(_Reply(answer, modes, control_id, entry_id,
                          time.monotonic() + self.settings.mllp_reply_budget, forget))

    async def close(self, grace: float) -> None:
        await asyncio.gather(*(s.close(grace) for s in self.senders.values()))
