"""The `rxgate` command: one parser, one module per command group, each command a few lines.

    check      validate HL7 files locally (workers/cli/check.py)
    audit      query and verify the audit log (workers/cli/audit.py)
    protocol   protocol check | list; explain RULE (workers/cli/protocol.py)
    serve, worker, bridge, submit, health   the running service (workers/cli/service.py)
    mllp       the MLLP listener (workers/cli/mllp.py)
    users      add | list | revoke the HTTP API's credentials (workers/cli/users.py)
    deadletter list | resend | drop the dead letters (workers/cli/deadletter.py)
    replay     judge recorded messages again, print what would change (workers/cli/replay.py)

`python -m workers.cli` is the same as `rxgate`. The list of command modules is static: a module
that cannot be imported is an error at start-up that names it, never a missing subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys

from workers.cli import audit, check, deadletter, mllp, protocol, replay, service, users
from workers.cli.usage import Parser, UsageError

__all__ = ["COMMAND_GROUPS", "UsageError", "build_parser", "main"]

COMMAND_GROUPS = (check, audit, protocol, service, mllp, users, deadletter, replay)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rxgate", description="GO protocol validation for HL7 v2 pharmacy orders")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"rxgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
