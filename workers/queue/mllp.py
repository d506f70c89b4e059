"""`rxgate mllp`: the MLLP (TCP) listener every interface engine speaks.

    <VT 0x0B> message <FS 0x1C><CR 0x0D>       (one frame; the response comes back framed the same way)

Each frame is split into its messages (normally one); each message is put on the stream queue
(`XADD <prefix>:inbound * hl7 <message>`, the same path as `rxgate submit`), the stream bridge
(`rxgate bridge` / `rxgate serve`) processes it and publishes the response on `<prefix>:outbound`
with `inbound_id`; the listener writes that response back, framed, on the connection the message
came in on. Responses on one connection are written in the order the frames arrived.

Never silence:
- not answered within `--timeout` seconds (RXGATE_MLLP_TIMEOUT, default 30; keep it below the
  sender's own ACK timeout): `AR` ERR 207, rule `rxgate.timeout`, "not answered within N s; the
  message is queued and will be processed - do not resend with a new control id". The message
  stays queued: a resend with the SAME control id gets the stored answer (docs/interfaces.md §3);
- the queue (Redis) does not take the message: `AR` ERR 207 `service.not_processed`
  "not queued (broker unavailable), resend";
- a frame holding no MSH segment (not HL7 at all): `AR` ERR 100 `hl7.structure` at once, not queued
  (there is no sender or control id to key it on, and port scanners should not fill the audit log);
- a frame larger than RXGATE_MLLP_MAX_FRAME bytes: `AR` ERR 100, then the connection is closed.

Transport details: frames may be split across packets and several frames may come in one packet;
bytes outside frames (line noise, keep-alives) are skipped; a half-closed connection (the sender
shut down its write side after the last frame) still gets every response before the listener
closes it; a frame left unfinished at end of input is dropped (logged, never answered: it was never
a whole message). Many connections are served concurrently (asyncio); one Redis reader task
dispatches responses to the waiting connections by `inbound_id`.

Logs carry peer addresses, control ids and counts, never message content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import redis
import redis.asyncio as aredis

from validator.er7 import decode, split_messages
from validator.reader import read_header
from validator.response import build_rejection
from workers import metrics
from workers.queue import sentinel
from workers.settings import Settings

log = logging.getLogger("rxgate.mllp")

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
END = FS + CR
TIMEOUT_RULE = "rxgate.timeout"
NOT_QUEUED_RULE = "service.not_processed"
STRUCTURE_RULE = "hl7.structure"


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


def _entries(text: str) -> list[str]:
    """One queue entry per message of the frame (as `rxgate submit` does); [] when there is no MSH."""
    split = split_messages(text)
    if split.no_msh or not split.messages:
        return []
    return [raw.text for raw in split.messages]


def _header(text: str, settings: Settings):
    try:
        split = split_messages(text)
        return read_header(split.messages[0], settings.tz) if split.messages else None
    except Exception:  # noqa: BLE001 - the header only fills MSA-2; without it MSA-2 stays empty
        return None


def rejection(text: str, rule: str, code: str, message: str, settings: Settings) -> str:
    return build_rejection(_header(text, settings), rule, code, message, None, datetime.now(settings.tz))


def timeout_text(seconds: float) -> str:
    return (f"not answered within {seconds:g} s; the message is queued and will be processed"
            " - do not resend with a new control id")


@dataclass
class _Dispatcher:
    """Reads `<prefix>:outbound` and resolves the future waiting for each `inbound_id`."""

    client: aredis.Redis
    outbound: str
    waiting: dict[str, asyncio.Future] = field(default_factory=dict)
    early: dict[str, tuple[float, str]] = field(default_factory=dict)  # responses read before their waiter
    cursor: str = "$"
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start_cursor(self) -> None:
        last = await self.client.xrevrange(self.outbound, count=1)
        self.cursor = _s(last[0][0]) if last else "0-0"
        self.ready.set()

    def wait_for(self, inbound_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        early = self.early.pop(inbound_id, None)
        if early is not None:
            fut.set_result(early[1])
        else:
            self.waiting[inbound_id] = fut
        return fut

    def forget(self, inbound_id: str) -> None:
        self.waiting.pop(inbound_id, None)

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.start_cursor()
                reply = await self.client.xread({self.outbound: self.cursor}, count=500, block=500)
                delay = 0.1
            except (redis.RedisError, OSError) as exc:
                log.warning("mllp: outbound stream unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            now = time.monotonic()
            for _stream, items in reply or []:
                for entry_id, fields in items:
                    self.cursor = _s(entry_id)
                    f = {_s(k): v for k, v in fields.items()}
                    inbound_id = _s(f.get("inbound_id", b""))
                    response = _s(f.get("hl7", b""))
                    fut = self.waiting.pop(inbound_id, None)
                    if fut is not None:
                        if not fut.done():
                            fut.set_result(response)
                    elif inbound_id:
                        # maybe our own XADD whose caller has not registered yet; kept briefly
                        self.early[inbound_id] = (now, response)
            if self.early:
                for k in [k for k, (t, _) in self.early.items() if now - t > 120]:
                    del self.early[k]


def _s(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class MllpServer:
    def __init__(self, settings: Settings, broker_url: str, host: str, port: int, timeout: float):
        self.settings = settings
        self.host, self.port, self.timeout = host, port, timeout
        p = settings.stream_prefix
        self.inbound, self.outbound = f"{p}:inbound", f"{p}:outbound"
        if sentinel.enabled(settings):  # RXGATE_BROKER_SENTINELS: the current master, found again after a failover
            self.client = sentinel.master_client(settings, asyncio=True)
            self.reader_client = sentinel.master_client(settings, asyncio=True)
        else:
            self.client = aredis.Redis.from_url(broker_url, socket_connect_timeout=5, health_check_interval=30)
            self.reader_client = aredis.Redis.from_url(broker_url, socket_connect_timeout=5)
        self.dispatcher = _Dispatcher(self.reader_client, self.outbound)
        self.stop = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.connections: dict[asyncio.Task, list[int]] = {}  # connection task -> [frames awaiting an answer]

    async def start(self) -> int:
        try:
            await self.dispatcher.start_cursor()
        except (redis.RedisError, OSError) as exc:  # served anyway: messages get AR until the broker is back
            log.warning("mllp: broker unavailable at start (%s)", type(exc).__name__)
        self._dispatch_task = asyncio.create_task(self.dispatcher.run(self.stop))
        self.server = await asyncio.start_server(self._on_connection, self.host, self.port,
                                                 limit=2 ** 16, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("mllp: listening on %s:%d (timeout %g s, queue %s)", self.host, self.port, self.timeout,
                 self.inbound)
        return self.port

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting; give open connections up to `grace` seconds to receive their responses."""
        if self.server is not None:
            self.server.close()
        for task, pending in list(self.connections.items()):
            if not pending[0]:
                task.cancel()  # idle: nothing owed to this sender
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=self.timeout + 1 if grace is None else grace)
        for task in list(self.connections):
            task.cancel()
        self.stop.set()
        await asyncio.gather(self._dispatch_task, return_exceptions=True)
        await self.client.aclose()
        await self.reader_client.aclose()

    # --- one connection ---------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        pending = [0]
        self.connections[task] = pending
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        answers: asyncio.Queue = asyncio.Queue()  # awaitables of response texts, in frame order
        writer_task = asyncio.create_task(self._write_answers(answers, writer, peer_s))
        frames = FrameReader(self.settings.mllp_max_frame)
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
                        answers.put_nowait(asyncio.ensure_future(self._answer(payload, peer_s, pending)))
                except FrameTooLarge as exc:
                    log.warning("mllp %s: frame over %d bytes (%d so far): AR and closing", peer_s,
                                self.settings.mllp_max_frame, exc.args[0])
                    text = f"frame larger than {self.settings.mllp_max_frame} bytes"
                    answers.put_nowait(_done(rejection("", STRUCTURE_RULE, "100", text, self.settings)))
                    break
            if frames.partial:
                log.warning("mllp %s: connection ended inside a frame (%d bytes dropped, not answered)",
                            peer_s, len(frames.buffer))
            if frames.skipped:
                log.info("mllp %s: %d bytes outside frames ignored", peer_s, frames.skipped)
        except (ConnectionError, OSError) as exc:
            log.info("mllp %s: read ended (%s)", peer_s, type(exc).__name__)
        finally:
            answers.put_nowait(None)
            try:
                await writer_task
            except Exception:  # noqa: BLE001 - logged in the writer
                pass
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.connections.pop(task, None)
            log.debug("mllp %s: closed after %d frames", peer_s, count)

    async def _write_answers(self, answers: asyncio.Queue, writer: asyncio.StreamWriter, peer: str) -> None:
        while True:
            item = await answers.get()
            if item is None:
                return
            try:
                responses = await item
            except Exception:  # noqa: BLE001 - never happens by design; the sender still gets an answer
                log.exception("mllp %s: internal error answering a frame", peer)
                responses = [rejection("", NOT_QUEUED_RULE, "207", "not processed, resend", self.settings)]
            try:
                for response in responses:
                    writer.write(frame(response))
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                log.warning("mllp %s: could not write a response (%s): the sender went away", peer,
                            type(exc).__name__)
                # keep draining the queue so pending futures are awaited (and forgotten), writing nothing
                while (item := await answers.get()) is not None:
                    try:
                        await item
                    except Exception:  # noqa: BLE001
                        pass
                return

    async def _answer(self, payload: bytes, peer: str, pending: list[int]) -> list[str]:
        """The responses to one frame: one per message in it, in order."""
        try:
            return await self._responses(payload, peer)
        finally:
            pending[0] -= 1

    async def _responses(self, payload: bytes, peer: str) -> list[str]:
        text = decode(payload)
        messages = _entries(text)
        if not messages:
            log.warning("mllp %s: frame of %d bytes without an MSH segment: AR", peer, len(payload))
            metrics.mllp_rejection("not_hl7")
            return [rejection(text, STRUCTURE_RULE, "100", "frame is not HL7 (no MSH segment found)", self.settings)]
        deadline = time.monotonic() + self.timeout
        try:
            pipe = self.client.pipeline(transaction=False)
            for message in messages:
                pipe.xadd(self.inbound, {"hl7": message})
            ids = [_s(i) for i in await pipe.execute()]
        except (redis.RedisError, OSError) as exc:
            log.error("mllp %s: could not queue %d message(s) (%s): AR sent", peer, len(messages),
                      type(exc).__name__)
            metrics.mllp_rejection("not_queued")
            return [rejection(m, NOT_QUEUED_RULE, "207", "not queued (broker unavailable), resend", self.settings)
                    for m in messages]
        futures = [self.dispatcher.wait_for(i) for i in ids]
        out = []
        for inbound_id, message, fut in zip(ids, messages, futures, strict=True):
            try:
                out.append(await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                self.dispatcher.forget(inbound_id)
                log.warning("mllp %s: inbound %s not answered within %g s: AR %s", peer, inbound_id,
                            self.timeout, TIMEOUT_RULE)
                metrics.mllp_rejection("timeout")
                out.append(rejection(message, TIMEOUT_RULE, "207", timeout_text(self.timeout), self.settings))
        return out


def _done(value: str) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result([value])
    return fut


# --- the command -----------------------------------------------------------------------------------
