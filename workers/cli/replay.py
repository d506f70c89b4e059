"""`rxgate replay`: what the recorded messages would get today (docs/interfaces.md §5 "Operators").

    rxgate replay [--db URL] [--since DATE] [--until DATE] [--patient ID] [--protocol FILE_OR_ID]
                  [--format table|json|csv]

Prints each message whose verdict would change (control id, old ack and rules -> new ack and rules),
then a summary; progress goes to standard error on long runs. The live history and audit log are only
read (workers/store/replay.py judges against a scratch copy in memory).
Exit status: 0 no verdict would change, 1 some would, 2 usage (bad option, protocol or database).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TextIO

from workers.cli.usage import UsageError

CSV_COLUMNS = ["id", "received_at", "control_id", "old_ack", "old_rules", "new_ack", "new_rules"]


def register(sub) -> None:
    p = sub.add_parser("replay", help="judge recorded messages again, print the verdicts that would change",
                       description="Judge the recorded messages again, in their original order, against a scratch "
                                   "history (never the live one), and print each message whose verdict would change.")
    p.add_argument("--db", help="database URL (else RXGATE_DATABASE_URL, else ./var/rxgate.db)")
    p.add_argument("--since", metavar="DATE", help="records received on or after DATE (YYYY-MM-DD, service time zone); "
                                                   "the history before it seeds the scratch history")
    p.add_argument("--until", metavar="DATE", help="records received on or before DATE (inclusive)")
    p.add_argument("--patient", metavar="ID", help="only this patient's messages (PID-3, or ID^authority)")
    p.add_argument("--protocol", metavar="FILE_OR_ID",
                   help="judge with this protocol (default: the configured one, RXGATE_PROTOCOL)")
    p.add_argument("--format", default="table", choices=("table", "json", "csv"),
                   help="table (default), json (JSON Lines, the summary last) or csv (the summary on stderr)")
    p.add_argument("--progress-every", type=int, default=1000, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from validator.protocol import ProtocolError, load_protocol_set
    from workers.cli.audit import _open, _settings
    from workers.store import FilterError, parse_filter
    from workers.store.replay import Summary, replay

    out, err = out or sys.stdout, err or sys.stderr
    settings = _settings()
    try:
        flt = parse_filter(since=args.since, until=args.until, patient=args.patient)
    except FilterError as exc:
        raise UsageError(f"--{exc}") from None
    if args.progress_every < 1:
        raise UsageError("--progress-every must be at least 1")
    try:
        protocols = load_protocol_set(args.protocol or settings.protocol, settings.protocol_field)
    except ProtocolError as exc:
        raise UsageError(f"--protocol: {exc}") from None
    store = _open(args, settings)

    def progress(done: int, total: int) -> None:
        print(f"rxgate replay: {done} of {total} records", file=err, flush=True)

    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer:
        writer.writerow(CSV_COLUMNS)
    summary = Summary()
    try:
        for item in replay(store, protocols, settings.tz, since=flt.since, until=flt.until, patient=flt.patient,
                           limits=settings.limits, progress=progress, progress_every=args.progress_every):
            if isinstance(item, Summary):
                summary = item
            elif args.format == "json":
                out.write(json.dumps(item.as_json(), ensure_ascii=False) + "\n")
            elif writer:
                writer.writerow([item.id, item.received_at, item.control_id or "", item.old_ack,
                                 " ".join(item.old_rules), item.new_ack, " ".join(item.new_rules)])
            else:
                out.write(f"{item.control_id or '(no control id)'}  {item.old_ack} {', '.join(item.old_rules) or '-'}"
                          f"  ->  {item.new_ack} {', '.join(item.new_rules) or '-'}\n")
    finally:
        store.dispose()
    _write_summary(summary, protocols, args.format, out, err)
    return 1 if summary.changed else 0


def _write_summary(summary, protocols, fmt: str, out: TextIO, err: TextIO) -> None:
    if summary.other_protocol_version:
        print(f"rxgate replay: {summary.other_protocol_version} records were judged with another version of "
              f"{protocols.id} than {protocols.version[:12]}: their changes may come from the protocol, not the code",
              file=err)
    if fmt == "json":
        out.write(json.dumps({"summary": summary.as_json(), "protocol": {"id": protocols.id,
                                                                          "version": protocols.version}}) + "\n")
        return
    moves = ", ".join(f"{k.replace('->', ' -> ')}: {n}" for k, n in sorted(summary.transitions.items()))
    line = (f"replayed {summary.replayed} messages with {protocols.id} ({protocols.version[:12]}): "
            f"{summary.changed} would change{' (' + moves + ')' if moves else ''}"
            f"{f'; {summary.skipped} records skipped (not judged HL7 messages)' if summary.skipped else ''}")
    print(line, file=err if fmt == "csv" else out)
