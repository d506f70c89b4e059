"""The `rxgate` command: one parser, each subcommand a few lines calling the core or an adapter."""

from __future__ import annotations

import argparse
import logging
import sys
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from validator import ProtocolError
from validator.protocol import load_protocol_set

from .check import UsageError, read_inputs, run_check
from .settings import Settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with a message naming the problem, never a traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"rxgate: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rxgate", description="GO protocol validation for HL7 v2 pharmacy orders")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="validate HL7 files locally and print verdicts")
    out = check.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON Lines, one object per message")
    out.add_argument("--hl7", action="store_true", help="the HL7 responses (ER7)")
    check.add_argument("--db", help="database URL keeping the course history and audit log across runs")
    check.add_argument("--protocol", help="bundled protocol id or protocol file")
    check.add_argument("--timezone", help="IANA zone for timestamps without an offset (overrides RXGATE_TIMEZONE)")
    check.add_argument("paths", nargs="+", metavar="PATH", help="file of HL7 messages, or - for stdin")
    check.set_defaults(func=cmd_check)

    for register in _EXTENSIONS:
        register(sub)
    return parser


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
    store = open_store(args.db) if args.db else None
    if store is None:
        from .check import memory_store

        store = memory_store()
    fmt = "json" if args.json else "hl7" if args.hl7 else "text"
    return run_check(inputs, store, protocol, tz, fmt, sys.stdout, settings.limits)


def open_store(url: str):
    """The SQL store at URL (workers.sqlstore), for --db."""
    try:
        from .sqlstore import open_sql_store
    except ImportError as exc:  # pragma: no cover - until the SQL store exists
        raise UsageError(f"--db is not available: {exc}") from None
    try:
        return open_sql_store(url)
    except Exception as exc:  # a bad URL or an unreachable database is a usage problem, said plainly
        raise UsageError(f"--db {url}: {exc}") from None


# Subcommands of other areas register here: each is a function(subparsers) adding its parser
# with set_defaults(func=...). Kept as a list so the parser stays in one place.
_EXTENSIONS: list = []


def _load_extensions() -> None:
    for module in ("workers.audit_cli", "workers.service_cli", "workers.protocol_cli", "workers.mllp"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        _EXTENSIONS.append(mod.register)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _load_extensions()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"rxgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
