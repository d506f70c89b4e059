"""`rxgate check`: validate HL7 files locally (docs/interfaces.md §1)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import tzinfo
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from validator import InMemoryStore, Outcome, ProtocolError, Store, process_text
from validator.er7 import decode
from validator.protocol import ProtocolSet, load_protocol_set
from validator.reader import DEFAULT_LIMITS, Limits
from workers.cli.usage import UsageError
from workers.settings import Settings


def register(sub) -> None:
    check = sub.add_parser("check", help="validate HL7 files locally and print verdicts")
    out = check.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON Lines, one object per message")
    out.add_argument("--hl7", action="store_true", help="the HL7 responses (ER7)")
    check.add_argument("--db", help="database URL keeping the course history and audit log across runs")
    check.add_argument("--protocol", help="bundled protocol id or protocol file")
    check.add_argument("--timezone", help="IANA zone for timestamps without an offset (overrides RXGATE_TIMEZONE)")
    check.add_argument("paths", nargs="+", metavar="PATH", help="file of HL7 messages, or - for stdin")
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    settings = Settings()
    tz_name = args.timezone or settings.timezone
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {tz_name!r}") from None
    try:
        protocol = load_protocol_set(args.protocol or settings.protocol, settings.protocol_field)
    except ProtocolError as exc:
        raise UsageError(str(exc)) from None
    inputs = read_inputs(args.paths)
    store = open_store(args.db, settings) if args.db else memory_store()
    fmt = "json" if args.json else "hl7" if args.hl7 else "text"
    if not args.db:
        return run_check(inputs, store, protocol, tz, fmt, sys.stdout, settings.limits)
    from workers.store.errors import StoreRefused, StoreUnavailable

    try:
        return run_check(inputs, store, protocol, tz, fmt, sys.stdout, settings.limits)
    except (StoreUnavailable, StoreRefused) as exc:  # its text names class, code and URL: no row values
        raise UsageError(f"--db: {exc}") from None


def open_store(url: str, settings) -> Store:
    """The SQL store at URL, for --db (created when new: `check` keeps a history across runs), with the
    audit key of the settings (none: exit 2 naming RXGATE_AUDIT_KEY / RXGATE_AUDIT_KEY_FILE)."""
    from workers.store import open_sql_store  # here: `check` without --db needs no SQLAlchemy
    from workers.store.chain import ChainKeyError

    try:
        keys = settings.chain_keys()
    except ChainKeyError as exc:
        raise UsageError(f"--db {url}: {exc}") from None
    try:
        return open_sql_store(url, create=True, keys=keys)
    except Exception as exc:  # a bad URL or an unreachable database is a usage problem, said plainly
        raise UsageError(f"--db {url}: {exc}") from None


def read_inputs(paths: list[str], stdin: TextIO | None = None) -> list[tuple[str, str]]:
    """(name, text) for every PATH, all read before the first message is processed."""
    inputs: list[tuple[str, str]] = []
    for name in paths:
        if name == "-":
            data = (stdin or sys.stdin).buffer.read()
        else:
            path = Path(name)
            if path.is_dir():
                raise UsageError(f"{name}: is a directory, not a file of HL7 messages")
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise UsageError(f"{name}: no such file") from None
            except OSError as exc:
                raise UsageError(f"{name}: cannot be read ({exc.strerror})") from None
        text = decode(data)
        if not text.strip(" \t\r\n\x0b\x1c\ufeff\x00"):
            raise UsageError(f"{name}: holds no HL7 message (empty or only whitespace)")
        inputs.append((name, text))
    return inputs


def run_check(
    inputs: list[tuple[str, str]], store: Store, protocol: ProtocolSet, tz: tzinfo, fmt: str, out: TextIO,
    limits: Limits = DEFAULT_LIMITS,
) -> int:
    worst = 0
    for _name, text in inputs:
        for outcome in process_text(text, store, protocol, tz=tz, limits=limits):
            write_outcome(outcome, fmt, out)
            if outcome.ack_code != "AA":
                worst = 1
    out.flush()
    return worst


def write_outcome(outcome: Outcome, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(outcome.result, ensure_ascii=False) + "\n")
    elif fmt == "hl7":
        out.write(outcome.response + "\n")
    else:
        out.write(human_verdict(outcome.result) + "\n")


def human_verdict(result: dict) -> str:
    """A short verdict a pharmacist can read: control id, patient, each order's outcome and reasons."""
    ack_words = {"AA": "accepted", "AE": "refused in part", "AR": "rejected"}
    lines = [
        f"{result.get('control_id') or '(no control id)'}  {result.get('message_type') or '?'}  "
        f"{result['ack_code']} ({ack_words.get(result['ack_code'], '')})"
        + (f"  patient {result['patient_id']}" if result.get("patient_id") else "")
    ]
    for order in result["orders"]:
        tag = "GO" if order["protocol_order"] else "  "
        lines.append(f"  {tag} {order['order_control']:<2} {order['placer_order_number'] or '-':<12} {order['drug']}")
        for f in order["findings"]:
            if f["severity"] != "info":
                lines.append(f"       {f['severity']:<7} {f['rule']:<22} {f['location'] or '':<7} {f['message']}")
    if not result["orders"]:
        for f in result["findings"]:
            lines.append(f"       {f['severity']:<7} {f['rule']:<22} {f['message']}")
    return "\n".join(lines)


def memory_store() -> Store:
    return InMemoryStore()
