"""What must hold for ANY input bytes, shared by the hypothesis harness and the atheris targets.

- always an answer (at least one outcome per input), ack AA/AE/AR;
- never an unhandled exception, never the `rxgate.internal_error` fallback (a bug caught in the engine);
- every response is ASCII, ends its segments with \\r and parses with python-hl7, MSA-1 = the ack code;
- the CLI path (`rxgate check --json`: decode, process, one JSON line per message) writes parseable JSON.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from zoneinfo import ZoneInfo

import hl7

from validator import InMemoryStore, process_text
from validator.er7 import decode
from validator.protocol import load_protocol_set
from validator.reader import Limits

UTC = ZoneInfo("UTC")
RECEIVED = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
PROTOCOL = load_protocol_set("go-rr-9mg-d1-d14")
# small limits so that size-limit paths are reached by the fuzzer too (the defaults are 1 MiB / 5000 / 1000)
FUZZ_LIMITS = Limits(max_message_bytes=20_000, max_segments=200, max_repetitions=50)


def check_outcomes(outcomes) -> None:
    assert outcomes, "every input gets at least one answer"
    for outcome in outcomes:
        result = outcome.result
        assert outcome.ack_code in ("AA", "AE", "AR"), result
        assert not any(f["rule"] == "rxgate.internal_error" for f in result["findings"]), result["findings"]
        response = outcome.response
        msh = response.split("\r", 1)[0].split("|")
        if len(msh) < 18 or msh[17] != "UNICODE UTF-8":
            assert response.isascii(), "responses are ASCII unless they declare MSH-18 UNICODE UTF-8"
        response.encode("utf-8")  # and always encodable as UTF-8 (no lone surrogates)
        assert response.startswith("MSH|^~\\&|") and response.endswith("\r")
        parsed = hl7.parse(response)
        assert str(parsed.segment("MSA")[1]) == outcome.ack_code
        json.dumps(result)  # the JSON result serialises


def answer_text(text: str, limits: Limits = FUZZ_LIMITS):
    outcomes = process_text(text, InMemoryStore(), PROTOCOL, tz=UTC, received_at=RECEIVED, limits=limits)
    check_outcomes(outcomes)
    return outcomes


def answer_bytes(data: bytes, limits: Limits = FUZZ_LIMITS):
    """The reader path of the service: bytes -> decode (BOM, UTF-8, 8859/1 by MSH-18) -> process."""
    return answer_text(decode(data), limits)


def check_cli(data: bytes) -> int:
    """The `rxgate check --json` path for one input file's bytes: exit status and one JSON line per message."""
    from workers.cli.check import memory_store, run_check

    text = decode(data)
    if not text.strip(" \t\r\n\x0b\x1c\ufeff\x00"):
        return 2  # `check` refuses an empty file before processing (exit 2), nothing to answer
    out = io.StringIO()
    status = run_check([("fuzz.hl7", text)], memory_store(), PROTOCOL, UTC, "json", out, FUZZ_LIMITS)
    lines = out.getvalue().split("\n")[:-1]  # JSON Lines: one object per \n (not str.splitlines: \x1c, \u2028)
    assert lines, "at least one JSON line"
    acks = []
    for line in lines:
        obj = json.loads(line)
        assert obj["ack_code"] in ("AA", "AE", "AR")
        hl7.parse(obj["response"])
        acks.append(obj["ack_code"])
    assert status == (0 if all(a == "AA" for a in acks) else 1)
    return status
