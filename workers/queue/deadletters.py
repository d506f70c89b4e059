"""What an operator does with `rxgate:deadletter` (docs/interfaces.md §5 "Operators").

    list     every entry: its id, reason, time, source (stream or celery), control id, and whether it
             can be resent; never the message text (operators see ids, reasons and control ids)
    resend   a stream entry goes back on `rxgate:inbound` marked `replay_of` its dead letter (and
             `received_id`, the original inbound id, so it is judged at its original received
             time); a Celery one goes back as a `rxgate.validate` task with a `replay_of` header.
             The dead letter is removed in the same MULTI/EXEC as the XADD (stream) or right after
             the task is sent (Celery). The bridge then answers it (workers/queue/bridge.py): if
             its message key is stored by then, nothing is published; otherwise its verdict is
             published on `rxgate:outbound` with `replay_of` set.
    drop     the entry is removed and an audit record says so: outcome AR (the answer the sender
             had), finding `rxgate.deadletter_drop` with who dropped it, why, and the dead-letter
             id and reason. Not stored under the message key, no course history.

An entry without an `hl7` field can never be processed: it can only be dropped; `resend` refuses
it and says so.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from validator.er7 import split_messages
from validator.history import ProcessedMessage
from validator.reader import read_header
from workers.queue.bridge import Streams, entry_time, not_processed_result

DROP_RULE = "rxgate.deadletter_drop"
NO_HL7 = "cannot be processed: no hl7 field"


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    fields: dict[str, str]

    @property
    def hl7(self) -> str | None:
        return self.fields.get("hl7")

    @property
    def resendable(self) -> bool:
        return self.hl7 is not None

    @property
    def source(self) -> str:
        return self.fields.get("source") or "stream"

    @property
    def reason(self) -> str:
        return self.fields.get("reason") or ""

    def time(self, tz) -> datetime:
        failed = self.fields.get("failed_at")
        if failed:
            try:
                return datetime.fromisoformat(failed).astimezone(tz)
            except ValueError:
                pass
        return entry_time(self.id, tz)

    def header(self, tz):
        """The MSH of its message (None when there is no message or no readable MSH)."""
        if not self.hl7:
            return None
        try:
            split = split_messages(self.hl7)
            return read_header(split.messages[0], tz) if split.messages else None
        except Exception:  # noqa: BLE001 - a dead letter may hold anything; the header is a courtesy
            return None

    def summary(self, tz) -> dict[str, Any]:
        """What an operator may see: never the message text."""
        header = self.header(tz)
        return {
            "id": self.id,
            "reason": self.reason,
            "time": self.time(tz).isoformat(timespec="seconds"),
            "source": self.source,
            "control_id": (header.control_id or None) if header else None,
            "attempts": int(self.fields["attempts"]) if self.fields.get("attempts", "").isdigit() else None,
            "resendable": self.resendable,
            **({} if self.resendable else {"note": NO_HL7 + ": it can only be dropped"}),
        }


@dataclass
class Handled:
    """What one resend or drop did, per id: `done` ids, and `refused` id -> the reason why not."""

    done: list[str]
    refused: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.refused


class DeadLetters:
    """The dead-letter stream of one broker. `send_task(text, replay_of)` puts a Celery dead letter back as a
    task (the CLI and the API pass the Celery app's; tests a fake); `store` receives the audit record of a drop."""

    def __init__(self, client: redis.Redis, streams: Streams, tz, *,
                 send_task: Callable[[str, str], None] | None = None, store=None) -> None:
        self.client = client
        self.streams = streams
        self.tz = tz
        self.send_task = send_task
        self.store = store

    def entries(self, batch: int = 500) -> Iterable[DeadLetter]:
        cursor = "-"
        while True:
            items = self.client.xrange(self.streams.deadletter, min=cursor, count=batch)
            for entry_id, fields in items:
                yield DeadLetter(_s(entry_id), {_s(k): _s(v) for k, v in fields.items()})
            if len(items) < batch:
                return
            cursor = "(" + _s(items[-1][0])

    def get(self, ids: Iterable[str]) -> tuple[list[DeadLetter], dict[str, str]]:
        """The entries of these ids, and the ids that are not (or no longer) on the stream."""
        found, missing = [], {}
        for entry_id in dict.fromkeys(ids):
            try:
                items = self.client.xrange(self.streams.deadletter, min=entry_id, max=entry_id)
            except redis.ResponseError:  # not a stream entry id (e.g. beyond 64 bits)
                missing[entry_id] = "not a dead-letter id"
                continue
            if items:
                _id, fields = items[0]
                found.append(DeadLetter(entry_id, {_s(k): _s(v) for k, v in fields.items()}))
            else:
                missing[entry_id] = "no such dead letter"
        return found, missing

    # --- resend ---------------------------------------------------------------------------------
    def resend(self, ids: Iterable[str] | None = None) -> Handled:
        """`ids`, or every entry when None (`--all`)."""
        if ids is None:
            letters, refused = list(self.entries()), {}
        else:
            letters, refused = self.get(ids)
        done = []
        for letter in letters:
            if not letter.resendable:
                refused[letter.id] = NO_HL7 + " (it can only be dropped)"
                continue
            if letter.source == "celery":
                if self.send_task is None:
                    refused[letter.id] = "it came from Celery and no Celery app is configured to send it to"
                    continue
                self.send_task(letter.hl7, letter.id)
                self.client.xdel(self.streams.deadletter, letter.id)
            else:
                fields = {"hl7": letter.hl7, "replay_of": letter.id}
                if letter.fields.get("inbound_id"):
                    fields["received_id"] = letter.fields["inbound_id"]
                pipe = self.client.pipeline(transaction=True)
                pipe.xadd(self.streams.inbound, fields)
                pipe.xdel(self.streams.deadletter, letter.id)
                pipe.execute()
            done.append(letter.id)
        return Handled(done, refused)

    # --- drop -----------------------------------------------------------------------------------
    def drop(self, ids: Iterable[str], reason: str, by: str | None = None) -> Handled:
        if not reason.strip():
            raise ValueError("a drop needs a reason")
        if self.store is None:
            raise ValueError("a drop is recorded in the audit log: no store given")
        letters, refused = self.get(ids)
        by = by or getpass.getuser()
        done = []
        for letter in letters:
            self.store.save(self.drop_record(letter, reason.strip(), by))  # audited first, then removed
            self.client.xdel(self.streams.deadletter, letter.id)
            done.append(letter.id)
        return Handled(done, refused)

    def drop_record(self, letter: DeadLetter, reason: str, by: str) -> ProcessedMessage:
        """The audit record of a drop: the answer the sender had (AR 207) plus who dropped it and why."""
        header = letter.header(self.tz)
        answer = not_processed_result(letter.hl7 or "", letter.reason, self.tz,
                                      message=None if letter.resendable else NO_HL7)
        note = (f"dead letter {letter.id} dropped by {by}: {reason} (dead-lettered: {letter.reason or 'no reason'}; "
                f"source {letter.source})")
        result = {k: v for k, v in answer.items() if k != "not_processed_reason"}
        result["findings"] = [*answer["findings"],
                              {"rule": DROP_RULE, "severity": "info", "location": None, "message": note}]
        now = datetime.now(UTC).astimezone(self.tz)
        return ProcessedMessage(
            key=None,  # never stored under the message key: a later resend is processed afresh
            received_at=letter.time(self.tz),
            answered_at=now,
            sender=header.sender if header else "",
            control_id=(header.control_id or None) if header else None,
            patient_key="",
            raw_message=letter.hl7 or "",
            ack_code="AR",
            result=result,
            response=result["response"],
            protocol_id="",
            protocol_version="",
        )
