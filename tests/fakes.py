"""Fakes shared by test modules: a store that fails on purpose, a database-like error, a clock the test moves.

Test modules import these from here, never from one another (tests/builders.py holds the message builders).
"""

from __future__ import annotations

from validator import InMemoryStore


class OperationalError(Exception):
    """Named like SQLAlchemy's: `workers.bootstrap.is_transient` reads it as a database fault."""


class FlakyStore(InMemoryStore):
    """Fails `save` the first `failures` times with `exc`."""

    def __init__(self, failures: int, exc: Exception):
        super().__init__()
        self.failures, self.exc, self.calls = failures, exc, 0

    def save(self, processed):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        super().save(processed)


class FakeClock:
    """A monotonic clock that moves only when the test says so (`advance`): a time window (the bridge's
    `store_batch_seconds`, its takeover scans) then closes exactly where the test wants, however busy the
    machine is. Pass it as `Bridge(..., clock=FakeClock())`."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeHl7Judge:
    """Stands in for workers.queue.verdicts.Verdicts behind POST /hl7: records each message handed to it
    and answers `answer` (an ACK naming the message's control id by default), or raises `fail`."""

    def __init__(self, answer: str | None = None, fail: Exception | None = None):
        self.answer, self.fail = answer, fail
        self.received: list[str] = []

    async def judge(self, raw, timeout: float):
        self.received.append(raw.text)
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return None, self.answer
        control_id = raw.text.split("\r", 1)[0].split("|")[9] if raw.text.count("|") >= 9 else ""
        return None, f"MSH|^~\\&|RXGATE|PHARM|||20261202||ACK|A{control_id}|P|2.5\rMSA|AA|{control_id}\r"
