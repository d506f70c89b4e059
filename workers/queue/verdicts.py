"""Submit a message to the inbound stream and await its verdict (docs/interfaces.md §3, §5 "MLLP", "HTTP").

    submit:  XADD <prefix>:inbound * hl7 <message>        (or join the entry already queued for it)
    answer:  <prefix>:outbound entry with inbound_id = that entry's id (published by the stream bridge)

Shared by the MLLP listener (workers/queue/mllp.py) and HL7 over HTTP: both hand a message to the
queue the bridge serves and wait, with a timeout, for the one answer the bridge publishes for its
entry. Nothing here judges or stores: the bridge does, so every path has the same dedupe and audit.

**A resend waits for the verdict.** Each queued message with a message key (sender, control id,
processing id and content hash, `validator.service.message_key`) is noted as in flight:
`<prefix>:inflight:<sha256 of the key>` holds its inbound entry id. A message whose key is in flight
(the same message resent while the first copy is still queued or being judged — on this listener
or any other) is not queued again: it joins that entry and gets the same answer. An in-flight note
is trusted only while its entry is still on the inbound stream (the bridge deletes an entry in the
same MULTI/EXEC that publishes its answer), so a resend after the verdict is queued as usual and
the bridge answers it with the stored verdict, byte for byte. The check, the XADD and the note are
one Lua script: two resends at once on two listeners queue one entry.

Use (an asyncio application; one `Verdicts` per process, started and closed with it):

    verdicts = Verdicts.connect(settings, resolve_stream_url(settings))
    await verdicts.start()
    try:
        submission, hl7 = await verdicts.judge(raw_message, settings.mllp_timeout)  # verdict or timeout AR
    except NotQueued:
        ...  # Redis did not take it: answer "not queued, resend"
    await verdicts.close()

**Waiting.** One reader task per process follows `<prefix>:outbound` from its end at start-up
and resolves every future waiting for an `inbound_id` (several may wait for one entry: the first
copy and its resends). Answers read in the last `RECENT_SECONDS` are kept so that a waiter that
registers just after its answer went by still gets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import redis
import redis.asyncio as aredis

from validator.er7 import RawMessage, split_messages
from validator.errors import MessageRejected
from validator.reader import read_header
from validator.response import build_rejection
from validator.service import message_key
from workers.queue import sentinel
from workers.settings import Settings

log = logging.getLogger("rxgate.verdicts")

TIMEOUT_RULE = "rxgate.timeout"
TIMEOUT_TEXT = "not yet judged: resend unchanged"
RECENT_SECONDS = 60.0  # answers kept for waiters that register just after theirs was read
RECENT_MAX = 10_000
# An in-flight note outlives any sane backlog; it is checked against the inbound stream anyway, so a
# stale one only costs a lookup (after a day the resend is simply queued again).
INFLIGHT_TTL_SECONDS = 86_400

# KEYS[1] inbound stream, KEYS[2] (optional) the in-flight note; ARGV[1] message, ARGV[2] note TTL.
# Returns {entry id, 1 when an entry already queued for the same message was joined else 0}.
_SUBMIT = """
local note = KEYS[2]
if note then
  local queued = redis.call('GET', note)
  if queued and #redis.call('XRANGE', KEYS[1], queued, queued) > 0 then
    return {queued, 1}
  end
end
local id = redis.call('XADD', KEYS[1], '*', 'hl7', ARGV[1])
if note then
  redis.call('SET', note, id, 'EX', tonumber(ARGV[2]))
end
return {id, 0}
"""


class NotQueued(Exception):
    """The broker did not take the message (its reason is an exception class name, never message text)."""


@dataclass(frozen=True)
class Answer:
    """The bridge's answer to one inbound entry (the fields of its `<prefix>:outbound` entry)."""

    hl7: str
    ack_code: str
    control_id: str


@dataclass(frozen=True)
class Submission:
    entry_id: str
    joined: bool  # True: the same message was already queued; this one waits for that entry's answer


def inflight_note(prefix: str, raw: RawMessage, settings: Settings) -> str | None:
    """The Redis key noting `raw` as in flight, or None when it has no message key (no MSH-10, unreadable)."""
    try:
        key = message_key(read_header(raw, settings.tz), raw.text)
    except MessageRejected:
        return None
    if key is None:
        return None
    digest = hashlib.sha256(json.dumps(key.model_dump(), sort_keys=True).encode("utf-8", "surrogatepass"))
    return f"{prefix}:inflight:{digest.hexdigest()}"


def timeout_answer(text: str, settings: Settings) -> str:
    """`ACK` AR, ERR-3 207, ERR-5 rxgate.timeout: no verdict yet. Given to the waiting sender only: never
    published, audited or stored under the message key — the verdict stays the entry's one answer."""
    split = split_messages(text)
    try:
        header = read_header(split.messages[0], settings.tz) if split.messages else None
    except MessageRejected:
        header = None
    return build_rejection(header, TIMEOUT_RULE, "207", TIMEOUT_TEXT, None, datetime.now(settings.tz))


def _s(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class OutboundDispatcher:
    """Follows `<prefix>:outbound` and resolves the futures waiting for each `inbound_id`."""

    client: aredis.Redis
    outbound: str
    waiting: dict[str, list[asyncio.Future]] = field(default_factory=dict)
    recent: OrderedDict[str, tuple[float, Answer]] = field(default_factory=OrderedDict)
    cursor: str = "$"
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start_cursor(self) -> None:
        last = await self.client.xrevrange(self.outbound, count=1)
        self.cursor = _s(last[0][0]) if last else "0-0"
        self.ready.set()

    def wait_for(self, inbound_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        seen = self.recent.get(inbound_id)
        if seen is not None:
            fut.set_result(seen[1])
        else:
            self.waiting.setdefault(inbound_id, []).append(fut)
        return fut

    def forget(self, inbound_id: str, fut: asyncio.Future) -> None:
        futures = self.waiting.get(inbound_id)
        if futures and fut in futures:
            futures.remove(fut)
            if not futures:
                del self.waiting[inbound_id]

    def deliver(self, inbound_id: str, answer: Answer, now: float) -> None:
        for fut in self.waiting.pop(inbound_id, []):
            if not fut.done():
                fut.set_result(answer)
        self.recent[inbound_id] = (now, answer)
        self.recent.move_to_end(inbound_id)
        while self.recent:
            oldest, (seen_at, _) = next(iter(self.recent.items()))
            if len(self.recent) <= RECENT_MAX and now - seen_at <= RECENT_SECONDS:
                break
            del self.recent[oldest]

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.start_cursor()
                reply = await self.client.xread({self.outbound: self.cursor}, count=500, block=500)
                delay = 0.1
            except (redis.RedisError, OSError) as exc:
                log.warning("outbound stream unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            now = time.monotonic()
            for _stream, items in reply or []:
                for entry_id, fields in items:
                    self.cursor = _s(entry_id)
                    f = {_s(k): v for k, v in fields.items()}
                    inbound_id = _s(f.get("inbound_id", b""))
                    if inbound_id:
                        self.deliver(inbound_id, Answer(_s(f.get("hl7", b"")), _s(f.get("ack_code", b"")),
                                                        _s(f.get("control_id", b""))), now)


class Verdicts:
    """Queue messages on `<prefix>:inbound` and await the bridge's answers (one per process)."""

    def __init__(self, settings: Settings, client: aredis.Redis, reader_client: aredis.Redis):
        self.settings = settings
        prefix = settings.stream_prefix
        self.prefix = prefix
        self.inbound, self.outbound = f"{prefix}:inbound", f"{prefix}:outbound"
        self.client = client
        self.reader_client = reader_client
        self.dispatcher = OutboundDispatcher(reader_client, self.outbound)
        self._submit = client.register_script(_SUBMIT)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @classmethod
    def connect(cls, settings: Settings, broker_url: str) -> Verdicts:
        """Clients for `broker_url`, or the current Sentinel master when RXGATE_BROKER_SENTINELS is set."""
        if sentinel.enabled(settings):  # the master is found again after a failover
            return cls(settings, sentinel.master_client(settings, asyncio=True),
                       sentinel.master_client(settings, asyncio=True))
        return cls(settings, aredis.Redis.from_url(broker_url, socket_connect_timeout=5, health_check_interval=30),
                   aredis.Redis.from_url(broker_url, socket_connect_timeout=5))

    async def start(self) -> None:
        try:
            await self.dispatcher.start_cursor()
        except (redis.RedisError, OSError) as exc:  # served anyway: submissions fail until the broker is back
            log.warning("broker unavailable at start (%s)", type(exc).__name__)
        self._task = asyncio.create_task(self.dispatcher.run(self._stop))

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()
        await self.reader_client.aclose()

    async def submit(self, raw: RawMessage) -> Submission:
        """Queue one message (or join the entry already queued for the same message); `NotQueued` if Redis
        did not take it. Returned once the XADD is acknowledged: the message is durably queued."""
        note = inflight_note(self.prefix, raw, self.settings)
        keys = [self.inbound] + ([note] if note else [])
        try:
            entry_id, joined = await self._submit(keys=keys, args=[raw.text, INFLIGHT_TTL_SECONDS])
        except (redis.RedisError, OSError) as exc:
            raise NotQueued(type(exc).__name__) from exc
        return Submission(_s(entry_id), bool(int(joined)))

    def answer(self, submission: Submission) -> asyncio.Future:
        """A future for the entry's `Answer`; `forget` it if it is given up on."""
        return self.dispatcher.wait_for(submission.entry_id)

    def forget(self, submission: Submission, fut: asyncio.Future) -> None:
        self.dispatcher.forget(submission.entry_id, fut)

    async def wait(self, submission: Submission, timeout: float) -> Answer | None:
        """The entry's answer, or None when there is none within `timeout` seconds."""
        fut = self.answer(submission)
        try:
            return await asyncio.wait_for(fut, max(0.0, timeout))
        except TimeoutError:
            self.forget(submission, fut)
            return None

    async def judge(self, raw: RawMessage, timeout: float) -> tuple[Submission, str]:
        """Queue and await one message: (its submission, the verdict's HL7 text or the timeout answer).

        Raises `NotQueued` when the broker does not take it. What HL7 over HTTP needs in one call.
        """
        submission = await self.submit(raw)
        answer = await self.wait(submission, timeout)
        return submission, answer.hl7 if answer is not None else timeout_answer(raw.text, self.settings)
