"""`rxgate users`: the people and systems that may use the HTTP API (docs/interfaces.md §5 "Access").

    rxgate users add NAME --role R [--role R ...] [--db URL] [--token-stdin]
        prints the new token once, alone on the last line of standard output; only its SHA-256 is stored
    rxgate users list [--db URL]                 name, roles, created, revoked (never a token or a hash)
    rxgate users revoke NAME [--db URL]          the token stops working at once, its sessions too

Roles: auditor (the audit log, patient data included), operator (health details), submit (POST
/hl7). A token has at least 32 bytes of entropy: `add` makes one from 32 random bytes; with
--token-stdin it takes a token from standard input (one line) and refuses it when shorter.
The database is --db URL, else RXGATE_DATABASE_URL, else ./var/rxgate.db; it is never created here
(start `rxgate serve` once, or run `rxgate check --db URL`, to create it).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import UTC, datetime
from typing import TextIO

from workers.cli.audit import _open, _settings
from workers.cli.usage import UsageError

ROLES = ("auditor", "operator", "submit")  # as workers/store/access.py (not imported: the CLI starts fast)


def register(sub) -> None:
    p = sub.add_parser("users", help="add, list or revoke the credentials of the HTTP API",
                       description="People and systems with roles auditor, operator, submit; tokens are stored "
                                   "as their SHA-256 only.")
    p.add_argument("action", choices=("add", "list", "revoke"))
    p.add_argument("name", nargs="?", help="the person's or system's name (add, revoke)")
    p.add_argument("--role", action="append", choices=ROLES, help="a role (repeat for several): add")
    p.add_argument("--token-stdin", action="store_true",
                   help="add: take the token from standard input instead of making one (>= 32 bytes of entropy)")
    p.add_argument("--db", help="database URL (else RXGATE_DATABASE_URL, else ./var/rxgate.db)")
    p.set_defaults(func=cmd_users)


def cmd_users(args: argparse.Namespace, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    from workers.store.access import AccessLedger, UserError

    out = out or sys.stdout
    if args.action in ("add", "revoke") and not args.name:
        raise UsageError(f"users {args.action} needs a NAME")
    if args.action != "add" and (args.role or args.token_stdin):
        raise UsageError("--role and --token-stdin apply to `users add` only")
    if args.action == "add" and not args.role:
        raise UsageError(f"users add needs --role ({', '.join(ROLES)})")
    if args.action == "list" and args.name:
        raise UsageError("users list takes no NAME")
    store = _open(args, _settings())
    try:
        ledger = AccessLedger(store)
        now = datetime.now(UTC)
        try:
            if args.action == "add":
                token = (stdin or sys.stdin).readline().strip() if args.token_stdin else secrets.token_urlsafe(32)
                user = ledger.add_user(args.name, args.role, token, now)
                out.write(f"added {user.name} with roles {','.join(sorted(user.roles))}; its token (shown once, "
                          "only its SHA-256 is kept):\n")
                out.write(token + "\n")
                return 0
            if args.action == "revoke":
                if not ledger.revoke(args.name, now):
                    raise UsageError(f"no active user named {args.name!r}")
                out.write(f"revoked {args.name}\n")
                return 0
        except UserError as exc:
            raise UsageError(str(exc)) from None
        users = ledger.users()
        if not users:
            out.write("(no users)\n")
        for u in users:
            revoked = f"  revoked {u.revoked_at.isoformat(timespec='seconds')}" if u.revoked_at else ""
            out.write(f"{u.name}  {','.join(sorted(u.roles))}  created {u.created_at.isoformat(timespec='seconds')}"
                      f"{revoked}\n")
        return 0
    finally:
        store.dispose()
