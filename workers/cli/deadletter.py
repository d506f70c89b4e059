"""`rxgate deadletter list|resend|drop` (docs/interfaces.md §5 "Operators"; the work is in workers/queue/deadletters.py).

    rxgate deadletter list [--json]                 one line (JSON Lines: one object) per entry: id, time,
                                                    reason, source, control id; nothing when empty
    rxgate deadletter resend ID...|--all            back on rxgate:inbound (or as a Celery task), replay_of set
    rxgate deadletter drop ID... --reason TEXT      removed, and recorded in the audit log (--db as `rxgate audit`)

Exit status: 0 done; 1 the stream broker does not answer; 2 usage: an unknown id, or the resend of an
entry without an hl7 field (it can only be dropped) — named, and then nothing is done, or the audit log
is not there (a drop is recorded in it first).
"""

from __future__ import annotations

import argparse
import json
import sys

from workers.cli.usage import UsageError


def register(sub) -> None:
    p = sub.add_parser("deadletter", help="list, resend or drop the entries of rxgate:deadletter",
                       description="The dead-letter stream: entries not processed after their retries.")
    actions = p.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="every dead letter: id, time, reason, source, control id")
    ls.add_argument("--json", action="store_true", help="JSON Lines, one object per entry")
    ls.set_defaults(func=cmd_list)
    resend = actions.add_parser("resend", help="judge dead letters again (stream entries, Celery tasks)")
    resend.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry ids (as `list` prints them)")
    resend.add_argument("--all", action="store_true", help="every dead letter that can be resent")
    resend.set_defaults(func=cmd_resend)
    drop = actions.add_parser("drop", help="remove dead letters, recorded in the audit log")
    drop.add_argument("ids", nargs="+", metavar="ID")
    drop.add_argument("--reason", required=True, help="why (recorded in the audit log with your user name)")
    drop.add_argument("--db", help="database URL (else RXGATE_DATABASE_URL, else ./var/rxgate.db)")
    drop.set_defaults(func=cmd_drop)


def _settings():
    from workers.cli.service import _settings as service_settings

    return service_settings()


def dead_letters(settings, store=None):
    """The dead-letter stream of the configured broker (RXGATE_STREAM_URL / RXGATE_BROKER_URL), with a Celery
    sender for the entries that came from Celery."""
    import redis

    from workers.queue.bridge import Streams
    from workers.queue.deadletters import DeadLetters
    from workers.queue.sentinel import broker_client

    client = broker_client(settings, socket_connect_timeout=5, socket_timeout=30)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise BrokerDown(f"the stream broker does not answer ({type(exc).__name__}: {str(exc)[:200]})") from None
    return DeadLetters(client, Streams.from_settings(settings), settings.tz, send_task=celery_sender(settings),
                       store=store)


class BrokerDown(RuntimeError):
    """The stream broker does not answer (exit 1: try again later, nothing was changed)."""


def _commanded(func):
    """Exit 1 with one line when the broker is down."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except BrokerDown as exc:
            print(f"rxgate deadletter: {exc}", file=sys.stderr)
            return 1

    return run


def celery_sender(settings):
    """Puts a dead letter from Celery back as a `rxgate.validate` task, marked `replay_of` in its headers."""

    def send(text: str, replay_of: str) -> None:
        from workers.queue.celery_app import QUEUE, TASK, make_app

        make_app(settings).send_task(TASK, args=[text], queue=QUEUE, headers={"replay_of": replay_of})

    return send


@_commanded
def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings()
    n = 0
    for letter in dead_letters(settings).entries():
        s = letter.summary(settings.tz)
        n += 1
        if args.json:
            print(json.dumps(s, ensure_ascii=False), flush=True)
        else:
            note = "" if s["resendable"] else "  [" + s["note"] + "]"
            print(f"{s['id']}  {s['time']}  {s['source']:<6}  {s['control_id'] or '-'}  {s['reason']}{note}")
    if not n and not args.json:
        print("(no dead letters)", file=sys.stderr)
    return 0


def _report(verb: str, handled) -> int:
    for entry_id in handled.done:
        print(f"{verb} {entry_id}")
    for entry_id, why in handled.refused.items():  # gone between the check and the act (another operator)
        print(f"rxgate deadletter: {entry_id} not {verb}: {why}", file=sys.stderr)
    return 0 if handled.ok else 1


def _check_ids(letters, ids: list[str], resending: bool) -> None:
    """Every id named exists (and, for a resend, can be resent), else exit 2 naming them, nothing done."""
    from workers.queue.deadletters import NO_HL7

    found, missing = letters.get(ids)
    problems = [f"{i}: {why}" for i, why in missing.items()]
    if resending:
        problems += [f"{e.id}: {NO_HL7} (it can only be dropped)" for e in found if not e.resendable]
    if problems:
        raise UsageError("nothing done: " + "; ".join(problems))


@_commanded
def cmd_resend(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise UsageError("deadletter resend takes ID... or --all (one of them)")
    settings = _settings()
    letters = dead_letters(settings)
    if args.all:
        handled = letters.resend(None)
        for entry_id, why in handled.refused.items():  # entries without hl7: left for `drop`, said
            print(f"rxgate deadletter: {entry_id} left: {why}", file=sys.stderr)
        for entry_id in handled.done:
            print(f"resent {entry_id}")
        return 0
    _check_ids(letters, args.ids, resending=True)
    return _report("resent", letters.resend(args.ids))


@_commanded
def cmd_drop(args: argparse.Namespace) -> int:
    from workers.cli.audit import _open

    if not args.reason.strip():
        raise UsageError("--reason must say why the dead letters are dropped")
    settings = _settings()
    letters = dead_letters(settings)
    _check_ids(letters, args.ids, resending=False)
    store = _open(args, settings)  # the audit log must exist: a drop is recorded there first
    letters.store = store
    try:
        return _report("dropped", letters.drop(args.ids, args.reason))
    finally:
        store.dispose()
