"""`rxgate audit`: query the audit log, verify its hash chain, print its head (docs/interfaces.md §4).

    rxgate audit [--db URL] [--patient ID] [--since DATE] [--until DATE] [--outcome AA|AE|AR]
                 [--rule RULE] [--control-id ID] [--overridden] [--format table|json|csv] [--limit N]
    rxgate audit verify [--db URL] [--anchor SEQ:HASH]   exit 0 intact, 1 broken (names the first bad seq)
    rxgate audit verify --file FILE [--anchor SEQ:HASH]  the same for an archive, on its own (no database)
    rxgate audit head [--db URL]                          SEQ:HASH of the latest record, as --anchor takes it
    rxgate audit access [--db URL] [--user NAME] [--since DATE] [--format table|json|csv]
                                                          who read patient data (the chained access log);
                                                          exit 1 when its chain is broken
    rxgate audit archive --before DATE --out FILE [--db URL]   the chain up to DATE as JSON Lines (retention)
    rxgate audit seed --from OLD_URL --db NEW_URL [--days N]   a new, empty database started with an anchor
                                                          record naming OLD's head and OLD's recent course
                                                          history and message keys (retention)

A query that prints patient data is itself a read: it leaves an access-log row naming the OS user
(`cli:NAME`). CSV cells that would start a formula (= + - @, a tab or a carriage return) are
prefixed with `'` (docs/interfaces.md §5 "Access").

The database is --db URL, else RXGATE_DATABASE_URL, else ./var/rxgate.db.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, TextIO

from pydantic import ValidationError

from workers.cli.usage import UsageError
from workers.settings import Settings

if TYPE_CHECKING:
    from workers.store import SqlStore

CSV_COLUMNS = ["id", "received_at", "answered_at", "sender", "control_id", "message_type", "patient_id",
               "outcome", "rules", "protocol_id", "protocol_version"]


def register(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="query the audit log, or `audit verify` / `audit head`",
        description="Query the audit log (filters combine with AND), `audit verify` to check its hash chain, "
                    "`audit head` to print the latest sequence number and hash for anchoring elsewhere.",
    )
    p.add_argument("action", nargs="?", choices=("verify", "head", "access", "archive", "seed"),
                   help="verify the chain, print its head, list the access log, or archive its first records")
    p.add_argument("--user", help="access: reads by this user only")
    p.add_argument("--db", help="database URL (else RXGATE_DATABASE_URL, else ./var/rxgate.db)")
    p.add_argument("--patient", help="patient identifier (PID-3), or ID^authority")
    p.add_argument("--since", metavar="DATE", help="received on or after DATE (YYYY-MM-DD, service time zone)")
    p.add_argument("--until", metavar="DATE", help="received on or before DATE (inclusive)")
    p.add_argument("--outcome", help="AA, AE or AR")
    p.add_argument("--rule", help="messages with a finding of this rule id, e.g. go.dose")
    p.add_argument("--control-id", dest="control_id", metavar="ID", help="the message's MSH-10")
    p.add_argument("--overridden", action="store_true",
                   help="messages with an order overridden with a reason (rule, reason and verifier shown)")
    p.add_argument("--format", default="table", help="table (default), json (JSON Lines) or csv")
    p.add_argument("--limit", type=int, help="at most N messages")
    p.add_argument("--anchor", metavar="SEQ:HASH", help="verify: also check record SEQ still has HASH")
    p.add_argument("--file", metavar="FILE", help="verify: an archive written by `audit archive` (no database)")
    p.add_argument("--before", metavar="DATE", help="archive: the records received before DATE (YYYY-MM-DD)")
    p.add_argument("--out", metavar="FILE", help="archive: the JSON Lines file to write (not overwritten)")
    p.add_argument("--from", dest="from_db", metavar="OLD_URL", help="seed: the old database (read only)")
    p.add_argument("--days", type=int, help="seed: days of history and message keys to copy "
                                            "(default: the longest course_days + 60)")
    p.add_argument("--protocol", help="seed: protocol file or directory for the default --days "
                                      "(else RXGATE_PROTOCOL)")
    p.set_defaults(func=cmd_audit)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise UsageError("; ".join(e["msg"] for e in exc.errors())) from None


def _open(args: argparse.Namespace, settings: Settings) -> SqlStore:
    """The audit log to read; never created (docs/interfaces.md §5 "Access"): a wrong URL must not
    verify as an empty, intact log."""
    from workers.store import StoreMissing, open_sql_store

    url = args.db or settings.database_url or "sqlite:///var/rxgate.db"
    try:
        return open_sql_store(url, create=False)
    except StoreMissing as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - an unreachable or bad database is said plainly, exit 2
        raise UsageError(f"--db: {exc}") from None


def cmd_audit(args: argparse.Namespace, out: TextIO | None = None) -> int:
    # the store (SQLAlchemy: half a second of imports) is imported by the command that uses it, not by
    # every `rxgate` start (the CLI imports every command module to list it)
    from workers.store import FilterError, iter_messages, parse_filter, verify_chain

    out = out or sys.stdout
    settings = _settings()
    filters = {k: getattr(args, k) for k in ("patient", "since", "until", "outcome", "rule", "control_id")}
    if args.action == "access":
        return cmd_access(args, settings, out)
    if args.user:
        raise UsageError("--user applies to `audit access` only")
    if args.action != "verify" and args.file:
        raise UsageError("--file applies to `audit verify` only")
    if args.action != "archive" and (args.before or args.out):
        raise UsageError("--before/--out apply to `audit archive` only")
    if args.action in ("verify", "head", "archive", "seed"):
        used = [f"--{k.replace('_', '-')}" for k, v in filters.items() if v] + (
            ["--format"] if args.format != "table" else [])
        used += ["--overridden"] if args.overridden else []
        if used:
            raise UsageError(f"audit {args.action} takes no filters ({', '.join(used)})")
    if args.anchor and args.action != "verify":
        raise UsageError("--anchor applies to `audit verify` only")
    anchor = _parse_anchor(args.anchor) if args.anchor else None
    if args.action == "verify" and args.file:
        if args.db:
            raise UsageError("audit verify: --file or --db, not both")
        return _verify_file(args.file, anchor, out)
    if args.action != "seed" and (args.from_db or args.days is not None or args.protocol):
        raise UsageError("--from/--days/--protocol apply to `audit seed` only")
    if args.action == "archive":
        return _archive(args, settings, out)
    if args.action == "seed":
        return _seed(args, settings, out)
    if args.action is None:
        if args.format not in ("table", "json", "csv"):
            raise UsageError(f"--format must be table, json or csv (got {args.format!r})")
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit must be at least 1")
        try:
            flt = parse_filter(**filters, overridden=args.overridden)
        except FilterError as exc:
            raise UsageError(f"--{exc}") from None
    store = _open(args, settings)
    try:
        if args.action == "head":
            head = store.head()
            if head is None:
                out.write("audit log is empty (no head yet)\n")
            else:
                out.write(f"{head[0]}:{head[1]}\n")  # SEQ:HASH, exactly what `verify --anchor` takes
            return 0
        if args.action == "verify":
            from workers.store.chain import ChainKeyError

            try:
                result = verify_chain(store, anchor=anchor)
            except ChainKeyError as exc:
                raise UsageError(f"audit verify: {exc}") from None
            out.write(result.describe() + "\n")
            if result.intact and anchor is None and result.checked:
                out.write("note: removal of the newest records is only detectable against an anchor: keep the "
                          "output of `rxgate audit head` elsewhere and pass it with --anchor SEQ:HASH\n")
            return 0 if result.intact else 1
        _record_cli_read(store, filters, args.limit)
        rows = iter_messages(store, flt, settings.tz)
        if args.limit:
            rows = (r for i, r in zip(range(args.limit), rows, strict=False))
        write_rows(rows, args.format, out)
        return 0
    finally:
        store.dispose()


def _cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container): the uid still names the account
        return f"cli:uid {os.getuid()}"


def _record_cli_read(store: SqlStore, filters: dict, limit: int | None) -> None:
    """The access-log row of this query, before anything is printed (no row, no output)."""
    from urllib.parse import urlencode

    from workers.store.access import AccessLedger
    from workers.store.chain import ChainKeyError

    query = {k: v for k, v in filters.items() if v} | ({"limit": limit} if limit else {})
    try:
        AccessLedger(store).record(_cli_user(), "local", "rxgate audit", urlencode(sorted(query.items())),
                                   datetime.now(UTC))
    except ChainKeyError as exc:  # the access log is chained with the audit key: no key, no read
        raise UsageError(f"audit: {exc}") from None


ACCESS_COLUMNS = ["seq", "at", "user", "address", "action", "target"]


def cmd_access(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`rxgate audit access`: the access log, oldest first, then whether its chain is intact."""
    from workers.store import FilterError, parse_filter
    from workers.store.access import AccessLedger

    used = [f"--{k.replace('_', '-')}" for k in ("patient", "until", "outcome", "rule", "control_id")
            if getattr(args, k)] + (["--anchor"] if args.anchor else []) + (["--limit"] if args.limit else [])
    if used:
        raise UsageError(f"audit access takes only --user, --since and --format (not {', '.join(used)})")
    if args.format not in ("table", "json", "csv"):
        raise UsageError(f"--format must be table, json or csv (got {args.format!r})")
    try:
        day = parse_filter(since=args.since).since if args.since else None
        since = datetime.combine(day, time.min, tzinfo=settings.tz) if day else None
    except FilterError as exc:
        raise UsageError(f"--{exc}") from None
    store = _open(args, settings)
    try:
        ledger = AccessLedger(store)
        rows = ({"seq": e.seq, "at": e.at.astimezone(settings.tz).isoformat(timespec="seconds"), "user": e.user,
                 "address": e.address, "action": e.action, "target": e.target}
                for e in ledger.entries(user=args.user, since=since))
        if args.format == "json":
            for r in rows:
                out.write(json.dumps(r, ensure_ascii=False) + "\n")
        elif args.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(ACCESS_COLUMNS)
            for r in rows:
                writer.writerow([safe_cell(r[c]) for c in ACCESS_COLUMNS])
        else:
            n = 0
            for r in rows:
                n += 1
                out.write(f"{r['seq']}  {r['at']}  {r['user']}  {r['address']}  {r['action']}  {r['target']}\n")
            if not n:
                out.write("(no matching reads)\n")
        from workers.store.chain import ChainKeyError

        try:
            result = ledger.verify()
        except ChainKeyError as exc:
            raise UsageError(f"audit access: {exc}") from None
        if result.intact:
            print(f"access log chain intact: {result.checked} rows", file=sys.stderr)
            return 0
        print(f"access log chain BROKEN at row {result.first_bad_seq}: {result.reason}", file=sys.stderr)
        return 1
    finally:
        store.dispose()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value) -> str:
    """A CSV cell no spreadsheet runs as a formula: one starting with = + - @ tab or CR gets a leading `'`."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _verify_file(path: str, anchor: tuple[int, str] | None, out: TextIO) -> int:
    from workers.store.archive import ArchiveError, verify_archive
    from workers.store.chain import ChainKeyError

    try:
        keys = _settings().chain_keys()
    except ChainKeyError as exc:
        raise UsageError(str(exc)) from None
    try:
        with open(path, encoding="utf-8") as f:
            result = verify_archive(f, keys, anchor=anchor)
    except OSError as exc:
        raise UsageError(f"--file: cannot read {path}: {exc.strerror}") from None
    except (ArchiveError, UnicodeDecodeError) as exc:
        raise UsageError(f"--file: {path}: {exc}") from None
    out.write(("archive " + result.describe().removeprefix("audit ")) + "\n")
    return 0 if result.intact else 1


def _archive(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pathlib import Path

    from workers.store import FilterError
    from workers.store.archive import write_archive
    from workers.store.audit import parse_date

    if not args.before or not args.out:
        raise UsageError("audit archive needs --before DATE and --out FILE")
    try:
        before = parse_date(args.before, "--before")
    except FilterError as exc:
        raise UsageError(str(exc)) from None
    target = Path(args.out)
    if target.exists():
        raise UsageError(f"--out: {target} exists (an archive is never overwritten)")
    store = _open(args, settings)
    partial = target.with_name(target.name + ".partial")
    try:
        with open(partial, "x", encoding="utf-8") as f:
            count, last_hash = write_archive(store, before, settings.tz, f)
        partial.rename(target)  # complete or absent: a half-written archive never has the final name
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"--out: cannot write {target}: {exc.strerror}") from None
    finally:
        store.dispose()
    if count:
        out.write(f"archived {count} records (seq 1..{count}) to {target}; last {count}:{last_hash}\n")
    else:
        out.write(f"no record received before {before}: {target} holds the header only\n")
    return 0


def _seed(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from workers.store import StoreMissing, open_sql_store
    from workers.store.chain import ChainKeyError
    from workers.store.seed import SeedRefused, default_days, seed_store

    if not args.from_db or not args.db:
        raise UsageError("audit seed needs --from OLD_URL and --db NEW_URL")
    days = args.days if args.days is not None else _default_days(args, settings, default_days)
    if days < 1:
        raise UsageError("--days must be at least 1")
    old = _open(argparse.Namespace(db=args.from_db), settings)
    try:
        try:
            keys = settings.chain_keys()
        except ChainKeyError as exc:
            raise UsageError(f"audit seed: {exc}") from None
        verified = verify_old(old, keys)
        if not verified.intact:
            raise UsageError(f"--from: {verified.describe()}: not seeded from a broken log")
        try:
            existing = open_sql_store(args.db, create=False, keys=keys)
        except StoreMissing:
            existing = None
        except Exception as exc:  # noqa: BLE001 - an unreachable or bad database is said plainly, exit 2
            raise UsageError(f"--db: {exc}") from None
        if existing is not None:
            try:
                if existing.count():
                    raise UsageError(f"--db: {existing.safe_url} is not empty (a seed goes into a new database only)")
            finally:
                existing.dispose()
        new = open_sql_store(args.db, create=True, keys=keys)
        try:
            seeded = seed_store(old, new, days)
        except SeedRefused as exc:
            raise UsageError(f"--db: {exc}") from None
        finally:
            new.dispose()
    finally:
        old.dispose()
    out.write(f"seeded {seeded.history} course history rows and {seeded.keys} message keys of the last {days} "
              f"days; record 1 anchors {seeded.old_head[0]}:{seeded.old_head[1]}; head 1:{seeded.anchor_hash}\n")
    return 0


def verify_old(store: SqlStore, keys):
    from workers.store import verify_chain

    return verify_chain(store, keys=keys)


def _default_days(args: argparse.Namespace, settings: Settings, default_days) -> int:
    from validator.protocol import ProtocolError, load_protocol_set

    try:
        return default_days(load_protocol_set(args.protocol or settings.protocol, settings.protocol_field))
    except ProtocolError as exc:
        raise UsageError(f"--protocol: {exc}") from None


def _parse_anchor(value: str) -> tuple[int, str]:
    seq, _, hash_ = value.partition(":")
    if not seq.isdigit() or len(hash_) != 64 or any(c not in "0123456789abcdef" for c in hash_):
        raise UsageError(f"--anchor must be SEQ:HASH as printed by `rxgate audit head` (got {value!r})")
    return int(seq), hash_


def write_rows(rows, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([safe_cell(v) for v in (
                r["id"], r["received_at"], r["answered_at"], r["sender"], r["control_id"] or "",
                r["message_type"] or "", r["patient_id"] or "", r["outcome"] or "", " ".join(r["rules"]),
                (r["protocol"] or {}).get("id", ""), (r["protocol"] or {}).get("version", ""),
            )])
    else:
        header = ("ID", "RECEIVED", "CONTROL ID", "SENDER", "PATIENT", "OUTCOME", "RULES")
        lines = [header]
        overridden: list[list[str]] = [[]]
        for r in rows:
            lines.append((
                str(r["id"]), r["received_at"] or "", r["control_id"] or "-", r["sender"] or "-",
                r["patient_id"] or "-", r["outcome"] or "?", ", ".join(r["rules"]) or "-",
            ))
            overridden.append([
                f"    overridden: order {o['placer_order_number'] or o['order_index']} {o['rule']} by "
                f"{o['verified_by']}: {o['reason']}"
                for o in r.get("overrides") or []
            ])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        for line, notes in zip(lines, overridden, strict=True):
            out.write("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] + "\n")
            for note in notes:
                out.write(note + "\n")
        if len(lines) == 1:
            out.write("(no matching messages)\n")
