"""The Redis stream bridge for interface engines (docs/interfaces.md §3).

    XADD rxgate:inbound * hl7 <message>                       (the sender)
    XADD rxgate:outbound * hl7 <response> control_id <MSH-10> ack_code <code> inbound_id <entry id>

Delivery: the consumer group `rxgate` (created at `0` with MKSTREAM, so a backlog
sent before the first start is read) hands each entry to one consumer. An entry
is processed (the store commits the audit record, history and message key),
then its response is published and the entry acknowledged and deleted by one
Lua script (`ANSWER_IF_OURS`, all of a read's entries in one MULTI/EXEC) that
does so only while this consumer still owns the entry in the group's pending
list: a consumer paused (SIGSTOP, a long GC, a stalled disk) past `claim_idle`
whose entry another consumer took over and answered publishes nothing when it
wakes. A consumer killed between the two leaves the entry pending; another
consumer (or itself after a restart) takes it over with XAUTOCLAIM once it has
been idle `claim_idle` seconds, the store recognises the message key and returns
the stored response byte for byte: one response per delivery, each dose counted
once.

Order per patient after a crash: every bridge keeps a heartbeat key
`<prefix>:consumer:<name>` alive (TTL `heartbeat_ttl`, 5 s). The pending entries of
a consumer whose heartbeat is gone are taken over once idle that long (seconds,
not `claim_idle`), and an entry is not judged while an older pending entry of the
same patient (PID-3) is held by another consumer: it waits, still ours, until
that one is answered. So a day-14 dose never overtakes the day-1 dose a killed
bridge held, and the verdicts do not depend on crashes.

Failures: a transient fault (database or broker down) is retried with
exponential backoff for `retry_budget` seconds (>= 5 minutes in production),
a non-transient exception `error_retries` times; then the entry goes to
`rxgate:deadletter` with the reason and the sender gets `AR` ERR 207 "not
processed, resend" — the one answer given without an audit record, not stored
under the message key, so a resend is processed afresh. An entry without an
`hl7` field is dead-lettered at once (and answered the same way).

Retention: `rxgate:inbound` is never trimmed (entries are XDELeted once
answered); `rxgate:outbound` is capped with `MAXLEN ~ outbound_maxlen` (default
one million responses: keep it well above the backlog of the slowest reader);
`rxgate:deadletter` is never trimmed (an operator reads and XDELs it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from validator.er7 import decode, split_messages
from validator.history import BatchedStore
from validator.reader import read_header
from validator.response import build_rejection
from validator.service import Outcome
from workers import metrics
from workers.bootstrap import Service, backoff_delays, default_consumer_name, is_transient
from workers.settings import Settings

log = logging.getLogger("rxgate.bridge")

NOT_PROCESSED_RULE = "service.not_processed"
NO_HL7_MESSAGE = "cannot be processed: no hl7 field"

# KEYS: inbound, outbound, deadletter. ARGV: group, consumer, entry id, outbound maxlen, then the
# dead-letter entry (n field/value pairs, n = 0: none), then the responses (count, each n + pairs).
# Publishes and acknowledges only while the entry is pending for this consumer; returns 1, else 0.
ANSWER_IF_OURS = """
local unpack = unpack or table.unpack
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
local i = 5
local function xadd(prefix)
  local n = tonumber(ARGV[i]); i = i + 1
  if n == 0 then return end
  local args = {}
  for _, v in ipairs(prefix) do args[#args + 1] = v end
  for _ = 1, 2 * n do args[#args + 1] = ARGV[i]; i = i + 1 end
  redis.call(unpack(args))
end
xadd({'XADD', KEYS[3], '*'})
local responses = tonumber(ARGV[i]); i = i + 1
for _ = 1, responses do xadd({'XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*'}) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# KEYS: inbound. ARGV: group, consumer, idle ms, entry ids. XCLAIMs (setting the idle time) only the
# entries still pending for this consumer, never one another consumer has taken over meanwhile.
TOUCH_IF_OURS = """
local ours = {}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending > 0 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    ours[#ours + 1] = ARGV[i]
  end
end
return ours
"""


def _pairs(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = [len(fields)]
    for k, v in fields.items():
        out += [k, v if isinstance(v, bytes | str) else str(v)]
    return out


@dataclass(frozen=True)
class Streams:
    inbound: str
    outbound: str
    deadletter: str
    group: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Streams:
        p = settings.stream_prefix
        return cls(f"{p}:inbound", f"{p}:outbound", f"{p}:deadletter", settings.stream_group)


def safe_reason(exc: BaseException) -> str:
    """For logs: the exception class only (a database error's text can quote the message, i.e. patient data)."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}" + (" (transient)" if is_transient(exc) else "")


def not_processed_result(text: str, reason: str, tz, message: str | None = None) -> dict[str, Any]:
    """The AR with ERR 207 "not processed, resend", answered without an audit record (docs/interfaces.md §3).

    `message`: another text, for an entry a resend cannot help ("cannot be processed: no hl7 field")."""
    header = None
    try:
        split = split_messages(text)
        if split.messages:
            header = read_header(split.messages[0], tz)
    except Exception:  # the header is a courtesy: without it the ACK has an empty MSA-2
        header = None
    message = message or "not processed, resend"
    response = build_rejection(header, NOT_PROCESSED_RULE, "207", message, None, datetime.now(tz))
    return {
        "control_id": (header.control_id or None) if header else None,
        "message_type": (header.message_type or None) if header else None,
        "ack_code": "AR",
        "orders": [],
        "findings": [{"rule": NOT_PROCESSED_RULE, "severity": "error", "location": None, "message": message}],
        "response": response,
        "not_processed_reason": reason,
    }


def ensure_group(client: redis.Redis, streams: Streams) -> None:
    """XGROUP CREATE <inbound> rxgate 0 MKSTREAM (at 0: a backlog sent before the first start is read)."""
    try:
        client.xgroup_create(streams.inbound, streams.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entry_time(entry_id: str, tz) -> datetime:
    """The time Redis stored the entry: the received time of the message."""
    try:
        ms = int(entry_id.split("-")[0])
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)
    except (ValueError, OverflowError):
        return datetime.now(tz)


class _GiveUp(Exception):
    def __init__(self, reason: str, attempts: int, safe: str):
        super().__init__(reason)
        self.reason = reason  # for the dead-letter stream (which holds the message anyway)
        self.safe = safe  # for logs: no exception text, which may quote patient data
        self.attempts = attempts


class _Stopped(Exception):
    pass


@dataclass
class _Batch:
    """The answers of processed entries, committed in one MULTI/EXEC."""

    ops: list[tuple[str, list[dict[str, Any]], dict[str, Any] | None]] = field(default_factory=list)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # entry id -> more outbound fields (replay_of)

    def add(self, entry_id: str, responses: list[dict[str, Any]], deadletter: dict[str, Any] | None = None,
            extra: dict[str, str] | None = None):
        self.ops.append((entry_id, responses, deadletter))
        if extra:
            self.extra[entry_id] = extra


class Bridge:
    """One consumer of the inbound stream.

    `clock` (seconds, monotonic) times the store batch window (`store_batch_seconds`) and the takeover
    scans; tests pass a fake one so that a batch boundary never depends on how busy the machine is.
    """

    def __init__(self, service: Service, client: redis.Redis, settings: Settings | None = None,
                 consumer: str | None = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.service = service
        self.client = client
        self.settings = settings or service.settings
        self.streams = Streams.from_settings(self.settings)
        self.consumer = consumer or self.settings.consumer_name or default_consumer_name()
        self.stop = stop or threading.Event()
        self.clock = clock
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self.handled = 0
        self.taken_over = 0  # answers not given because another consumer owned the entry by then
        self.held_back = 0  # entries that waited for an older entry of the same patient held elsewhere
        self._waiting: dict[str, dict] = {}  # entry id -> fields, waiting for an older entry of their patient
        self._patients_of: dict[str, frozenset[str]] = {}  # entry id -> its PID-3 ids (bounded cache)
        self._beat_at = float("-inf")
        self._answer = client.register_script(ANSWER_IF_OURS)
        self._touch_script = client.register_script(TOUCH_IF_OURS)

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("bridge consumer %s on %s (group %s)", self.consumer, self.streams.inbound, self.streams.group)
        with contextlib.suppress(redis.RedisError):
            self.heartbeat(force=True)  # before the first read: a live consumer is never taken for dead
        delays = None
        first = True
        while not self.stop.is_set():
            try:
                if first:
                    ensure_group(self.client, self.streams)
                    # entries this consumer name left pending before a restart
                    self.handle(self._read("0"))
                    first = False
                self.step()
                delays = None
            except redis.RedisError as exc:  # the broker is down: wait it out, nothing is acked
                delays = delays or backoff_delays(self.settings.model_copy(update={"retry_budget": float("inf")}))
                delay = next(delays)
                log.warning("bridge: Redis unavailable (%s); retrying in %.1f s", safe_reason(exc), delay)
                self.stop.wait(delay)
        self._release_unfinished()
        log.info("bridge consumer %s stopped after %d entries", self.consumer, self.handled)

    def step(self) -> int:
        """One cycle: take over entries dead consumers left, else read new ones; process and answer them
        (with the entries that waited for an older entry of their patient)."""
        self.heartbeat(force=True)
        entries = self._take_over_dead()
        if not entries and self.clock() >= self._next_claim:
            entries = self._autoclaim()
        if not entries:
            entries = self._read(">", block=self.settings.stream_block_ms if not self._waiting else 10)
        taken = len(entries)
        if self._waiting:
            entries = sorted([*self._waiting.items(), *entries], key=lambda e: _order(e[0]))
            self._waiting = {}
        self.handle(entries)
        return taken

    # --- heartbeat, takeover of dead consumers, order per patient ------------------------------------
    def heartbeat_key(self, consumer: str | None = None) -> str:
        return f"{self.settings.stream_prefix}:consumer:{consumer or self.consumer}"

    def heartbeat(self, force: bool = False) -> None:
        """Keep this consumer's heartbeat key alive (refreshed at least every third of its TTL)."""
        now = time.monotonic()
        if force or now - self._beat_at >= self.settings.heartbeat_ttl / 3:
            self.client.set(self.heartbeat_key(), "1", px=max(int(self.settings.heartbeat_ttl * 1000), 1))
            self._beat_at = now

    def _take_over_dead(self) -> list[tuple[str, dict]]:
        """The pending entries of consumers whose heartbeat is gone, once idle `heartbeat_ttl` (XCLAIM with
        that min idle time: of several live bridges, one gets each entry)."""
        summary = self.client.xpending(self.streams.inbound, self.streams.group)
        others = [_s(c["name"]) for c in summary.get("consumers") or [] if _s(c["name"]) != self.consumer
                  and int(c["pending"])]
        if not others:
            return []
        alive = self.client.pipeline(transaction=False)
        for name in others:
            alive.exists(self.heartbeat_key(name))
        dead = [name for name, up in zip(others, alive.execute(), strict=True) if not up]
        entries: list[tuple[str, dict]] = []
        idle_ms = int(self.settings.heartbeat_ttl * 1000)
        for name in dead:
            rows = self.client.xpending_range(self.streams.inbound, self.streams.group, "-", "+",
                                              self.settings.stream_batch, consumername=name, idle=idle_ms)
            ids = [_s(r["message_id"]) for r in rows]
            if ids:
                claimed = self.client.xclaim(self.streams.inbound, self.streams.group, self.consumer, idle_ms, ids)
                entries.extend((_s(i), f) for i, f in claimed if f)
        if entries:
            log.info("bridge: took over %d entries of consumers without a heartbeat", len(entries))
        return sorted(entries, key=lambda e: _order(e[0]))

    def _hold_back(self, entries: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """The entries to judge now; those with an older pending entry of the same patient held by another
        consumer wait (they stay ours: touched each step) until it is answered."""
        if not entries:
            return entries
        newest = max((e[0] for e in entries), key=_order)
        rows = self.client.xpending_range(self.streams.inbound, self.streams.group, "-", newest, 10_000)
        foreign = [_s(r["message_id"]) for r in rows if _s(r["consumer"]) != self.consumer]
        if not foreign:
            return entries
        held = [(fid, self._patients(fid, None)) for fid in foreign]
        now, waiting = [], []
        for entry_id, fields in entries:
            mine = self._patients(entry_id, fields)
            if mine and any(_order(fid) < _order(entry_id) and mine & theirs for fid, theirs in held):
                waiting.append((entry_id, fields))
            else:
                now.append((entry_id, fields))
        if waiting:
            self.held_back += len(waiting)
            self._waiting.update(waiting)
            self._touch([e for e, _ in waiting])
            log.info("bridge: %d entries wait for an older entry of their patient held by another consumer",
                     len(waiting))
        return now

    def _patients(self, entry_id: str, fields: dict | None) -> frozenset[str]:
        """The PID-3 identifiers of an entry (read from the stream when not given), cached."""
        cached = self._patients_of.get(entry_id)
        if cached is not None:
            return cached
        if fields is None:
            found = self.client.xrange(self.streams.inbound, entry_id, entry_id)
            fields = found[0][1] if found else {}
        hl7 = fields.get(b"hl7", fields.get("hl7"))
        ids = patient_ids(decode(hl7) if isinstance(hl7, bytes) else str(hl7 or ""))
        if len(self._patients_of) > 10_000:
            self._patients_of.clear()
        self._patients_of[entry_id] = ids
        return ids

    def _read(self, start: str, block: int | None = None) -> list[tuple[str, dict]]:
        reply = self.client.xreadgroup(
            self.streams.group, self.consumer, {self.streams.inbound: start},
            count=self.settings.stream_batch, block=block,
        )
        entries = []
        for _stream, items in reply or []:
            entries.extend((_s(i), f) for i, f in items if f is not None)
        return entries

    def _autoclaim(self) -> list[tuple[str, dict]]:
        idle_ms = int(self.settings.claim_idle * 1000)
        reply = self.client.xautoclaim(
            self.streams.inbound, self.streams.group, self.consumer, min_idle_time=idle_ms,
            start_id=self._claim_cursor, count=self.settings.stream_batch,
        )
        cursor, items = _s(reply[0]), reply[1]
        self._claim_cursor = cursor
        if cursor in ("0-0", "0"):
            # scanned the whole pending list: look again after a fraction of the idle time
            self._next_claim = self.clock() + max(self.settings.claim_idle / 4, 0.05)
        entries = [(_s(i), f) for i, f in items if f]
        if entries:
            log.info("bridge: took over %d entries idle > %.0f s", len(entries), self.settings.claim_idle)
        return entries

    # --- processing -------------------------------------------------------------------------------
    def delivery_id(self, entry_id: str) -> str:
        """The delivery id stored with the entry's record: a redelivered entry is recorded once."""
        return f"stream:{self.streams.inbound}:{entry_id}"

    def handle(self, entries: list[tuple[str, dict]]) -> None:
        entries = self._hold_back(entries)
        batch = _Batch()
        remaining = [i for i, _ in entries]
        try:
            if len(entries) > 1 and self.settings.store_batch > 1:
                entries = self._handle_together(entries, batch, remaining)
            for entry_id, fields in entries:
                if self.stop.is_set():
                    break  # shutting down: answer what is finished, leave the rest pending
                self._handle_one(entry_id, fields, batch, remaining)
                remaining.remove(entry_id)
        except _Stopped:
            pass
        finally:
            self.commit(batch)
            self._unfinished = remaining

    def _handle_together(self, entries: list[tuple[str, dict]], batch: _Batch,
                         remaining: list[str]) -> list[tuple[str, dict]]:
        """Process entries with their store writes held and written together (`validator.history.BatchedStore`):
        one transaction per `store_batch` entries or `store_batch_seconds`, whichever comes first, each
        followed by the answers of the entries it wrote (so a long read does not hold back early answers).

        Returns the entries left for `_handle_one`: all of them from the first that cannot be done this
        way (no hl7 field, shutting down) or whose writes failed. A failed write wrote nothing of its
        batch (a KeyTaken, a HistoryChanged, the database down), so those entries are processed again
        one by one, with the retries and dead letters of that path; entries written before it keep
        their answers (a redelivery of them would get the stored answer anyway).
        """
        staged = BatchedStore(self.service.store)
        done: list[tuple[str, list[Outcome], float, int]] = []  # entry, outcomes, seconds, writes staged up to it
        answered = 0

        def answer_written() -> None:
            nonlocal done, answered
            written = [d for d in done if d[3] <= staged.written]
            for entry_id, outcomes, seconds, _ in written:
                metrics.observe(outcomes, seconds)
                batch.add(entry_id, [o.result for o in outcomes])
                remaining.remove(entry_id)
            done = done[len(written):]
            answered += len(written)
            self.commit(batch)  # a Redis fault propagates: nothing more is acked, the entries stay pending
            batch.ops.clear()

        # the SQL store: this batch's reads share one connection
        reads_together = getattr(self.service.store, "reads_together", contextlib.nullcontext)
        try:
            with reads_together():
                opened = self.clock()
                for entry_id, fields in entries:
                    hl7 = fields.get(b"hl7", fields.get("hl7"))
                    if hl7 is None or self.stop.is_set() or b"replay_of" in fields or "replay_of" in fields:
                        break
                    text = decode(hl7) if isinstance(hl7, bytes) else str(hl7)
                    self.heartbeat()
                    started = time.perf_counter()
                    outcomes = self.service.process(text, received_at=entry_time(entry_id, self.service.tz),
                                                    store=staged, observe=False,
                                                    delivery_id=self.delivery_id(entry_id))
                    done.append((entry_id, outcomes, time.perf_counter() - started, staged.staged))
                    if len(staged.held) >= self.settings.store_batch \
                            or self.clock() - opened >= self.settings.store_batch_seconds:
                        staged.flush()
                        answer_written()
                        opened = self.clock()
                staged.flush()
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - the unwritten entries take the one-by-one path below
            log.warning("bridge: a batch write failed (%s); %d entries processed again one by one",
                        safe_reason(exc), len(entries) - answered - sum(1 for *_, end in done if end <= staged.written))
            metrics.retry("bridge", is_transient(exc))
        answer_written()
        return entries[answered:]

    def _handle_one(self, entry_id: str, fields: dict, batch: _Batch, remaining: list[str]) -> None:
        fields = {_s(k): v for k, v in fields.items()}
        if "hl7" not in fields:
            reason = "entry has no hl7 field (fields: " + ",".join(sorted(fields)[:10]) + ")"
            log.warning("bridge: entry %s dead-lettered: %s", entry_id, reason)
            # a resend of the same entry cannot help: the answer says so (docs/interfaces.md §5 "Operators")
            result = not_processed_result("", reason, self.service.tz, message=NO_HL7_MESSAGE)
            batch.add(entry_id, [result], self._deadletter_fields(entry_id, fields, reason, 1))
            return
        text = decode(fields["hl7"]) if isinstance(fields["hl7"], bytes) else str(fields["hl7"])
        replay_of = _s(fields["replay_of"]) if "replay_of" in fields else None
        # a resent dead letter is judged at the time its original entry was received
        received_id = _s(fields["received_id"]) if replay_of and "received_id" in fields else entry_id
        try:
            outcomes = self._process(entry_id, text, batch, remaining, received_id)
        except _GiveUp as exc:
            log.error("bridge: entry %s not processed after %d attempts (%s): dead-lettered, AR sent",
                      entry_id, exc.attempts, exc.safe)
            result = not_processed_result(text, exc.reason, self.service.tz)
            batch.add(entry_id, [result], self._deadletter_fields(entry_id, fields, exc.reason, exc.attempts))
            return
        if replay_of is None:
            batch.add(entry_id, [o.result for o in outcomes])
        elif all(o.redelivered for o in outcomes):
            # resent dead letter whose message key was stored meanwhile (the sender resent it): the sender
            # has that answer already, so nothing is published (docs/interfaces.md §5 "Operators")
            log.info("bridge: resent dead letter %s was answered already: removed, nothing published", replay_of)
            batch.add(entry_id, [])
        else:
            batch.add(entry_id, [o.result for o in outcomes], extra={"replay_of": replay_of})

    def _process(self, entry_id: str, text: str, batch: _Batch, remaining: list[str], received_id: str | None = None):
        received_at = entry_time(received_id or entry_id, self.service.tz)
        delays = backoff_delays(self.settings)
        attempts = errors = 0
        while True:
            attempts += 1
            try:
                return self.service.process(text, received_at=received_at, delivery_id=self.delivery_id(entry_id))
            except Exception as exc:  # processing never raises for bad input: this is the store or a bug
                transient = is_transient(exc)
                errors += 0 if transient else 1
                delay = next(delays, None)
                if delay is None or errors > self.settings.error_retries:
                    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
                    reason = f"{safe_reason(exc)}: {detail}" if detail else safe_reason(exc)
                    raise _GiveUp(reason, attempts, safe_reason(exc)) from exc
                log.warning("bridge: entry %s attempt %d failed (%s); retrying in %.2f s",
                            entry_id, attempts, safe_reason(exc), delay)
                metrics.retry("bridge", transient)
                # answer what is done, and keep this batch's other entries ours while we wait
                self.commit(batch)
                batch.ops.clear()
                self._touch(remaining)
                self.heartbeat(force=True)
                if self.stop.wait(delay):
                    raise _Stopped() from exc

    def _deadletter_fields(self, entry_id: str, fields: dict, reason: str, attempts: int) -> dict[str, Any]:
        metrics.dead_letter("bridge")
        out: dict[str, Any] = {}
        for k, v in fields.items():
            out[k if k not in ("reason", "inbound_id", "consumer", "attempts", "failed_at", "source") else f"orig_{k}"] = v
        out.update(reason=reason, inbound_id=entry_id, consumer=self.consumer, attempts=attempts,
                   failed_at=datetime.now(UTC).isoformat(), source="stream")
        return out

    # --- Redis writes -------------------------------------------------------------------------------
    def commit(self, batch: _Batch) -> None:
        """Responses out, entries acked and deleted, each only while this consumer still owns it
        (`ANSWER_IF_OURS`): one MULTI/EXEC for the whole batch."""
        if not batch.ops:
            return
        pipe = self.client.pipeline(transaction=True)
        keys = [self.streams.inbound, self.streams.outbound, self.streams.deadletter]
        for entry_id, responses, deadletter in batch.ops:
            args: list[Any] = [self.streams.group, self.consumer, entry_id, self.settings.outbound_maxlen]
            args += _pairs(deadletter) if deadletter is not None else [0]  # the dead-letter stream: never trimmed
            args.append(len(responses))
            for result in responses:
                args += _pairs(outbound_fields(result, entry_id) | batch.extra.get(entry_id, {}))
            self._answer(keys=keys, args=args, client=pipe)
        done = pipe.execute()
        for (entry_id, _, _), answered in zip(batch.ops, done, strict=True):
            if answered:
                self.handled += 1
            else:
                self.taken_over += 1
                log.warning("bridge: entry %s was taken over by another consumer meanwhile: its answer is theirs, "
                            "none sent here", entry_id)
        batch.extra.clear()

    def _touch(self, ids: list[str], idle_ms: int = 0) -> list[str]:
        """Reset the idle time of entries we still hold, so no other consumer takes them over meanwhile
        (`idle_ms` > 0: mark them idle instead, for the next consumer). Returns the ids still ours."""
        if not ids:
            return []
        ours = self._touch_script(keys=[self.streams.inbound], args=[self.streams.group, self.consumer, idle_ms, *ids])
        return [_s(i) for i in ours or []]

    def _release_unfinished(self) -> None:
        """At shutdown: entries read but not answered stay pending, marked idle so the next consumer takes them now."""
        ids = [*getattr(self, "_unfinished", []), *self._waiting]
        if not ids:
            return
        try:
            ours = self._touch(ids, idle_ms=int(self.settings.claim_idle * 1000))
            log.info("bridge: %d unfinished entries left pending for another consumer", len(ours))
        except redis.RedisError:
            pass


def _order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence)."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def patient_ids(text: str) -> frozenset[str]:
    """The identifiers (PID-3.1 of every repetition) of the patients an entry's messages name: entries
    sharing one are kept in order. Generous by design: a shared id only makes an entry wait."""
    ids: set[str] = set()
    try:
        for raw in split_messages(text).messages:
            for seg in raw.segments():
                if seg.name == "PID":
                    for rep in seg.field(3).split(raw.enc.repetition):
                        first = rep.split(raw.enc.component)[0].strip()
                        if first:
                            ids.add(first)
    except Exception:  # noqa: BLE001 - an unreadable entry waits for nobody (it is answered AR anyway)
        return frozenset()
    return frozenset(ids)


def outbound_fields(result: dict[str, Any], entry_id: str) -> dict[str, str]:
    return {
        "hl7": result["response"],
        "control_id": result.get("control_id") or "",
        "ack_code": result["ack_code"],
        "inbound_id": entry_id,
    }


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)


def deadletter_celery(url: str, settings: Settings, text: str, reason: str, attempts: int, task_id: str) -> None:
    """The Celery path's give-up record on the same dead-letter stream (best effort: the broker may be down)."""
    streams = Streams.from_settings(settings)
    try:
        redis_client(url).xadd(streams.deadletter, {
            "hl7": text, "reason": reason, "attempts": attempts, "task_id": task_id, "source": "celery",
            "failed_at": datetime.now(UTC).isoformat(),
        })
    except redis.RedisError as exc:
        log.error("celery task %s: could not dead-letter (%s)", task_id, safe_reason(exc))


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False)
