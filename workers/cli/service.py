"""`rxgate serve | worker | bridge | submit | health` (docs/interfaces.md §3).

- `serve`: the whole service in one command: a Celery worker, the stream bridge and (when
  `workers.http.app` exists) the audit API, each a child process; a private Redis under
  ./var/ when no broker is configured or reachable (see embedded.py). SIGTERM/SIGINT: the
  children finish what they are doing (Celery warm shutdown; the bridge answers the entries it
  finished and leaves the rest pending), then the embedded Redis is stopped.
- `worker` / `bridge`: one part alone (docker-compose runs them as separate services).
- `submit [--json] FILE...`: XADD each message to rxgate:inbound, print each response as it
  comes back on rxgate:outbound; exit 0 all AA, 1 any AE/AR (or a timeout), 2 usage.
- `health`: exit 0 when the broker and the database answer, else 1 with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workers.cli.check import read_inputs
from workers.cli.mllp import add_tls_options, listener_tls, reply_setup, tls_files
from workers.cli.usage import UsageError
from workers.settings import Settings

log = logging.getLogger("rxgate.serve")


def register(sub) -> None:
    serve = sub.add_parser("serve", help="run the service: Celery worker, stream bridge, audit API")
    serve.add_argument("--concurrency", type=int, default=0, help="Celery worker processes (default: CPUs)")
    serve.add_argument("--no-worker", action="store_true", help="do not start the Celery worker")
    serve.add_argument("--no-bridge", action="store_true", help="do not start the stream bridge")
    serve.add_argument("--no-api", action="store_true", help="do not start the audit API")
    serve.add_argument("--mllp", action="store_true",
                       help="also start the MLLP listener (RXGATE_MLLP_HOST / RXGATE_MLLP_PORT)")
    add_tls_options(serve, "--mllp-tls-")  # passed through to `rxgate mllp` as --tls-cert/--tls-key/--tls-client-ca
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker for rxgate.validate (queue rxgate.orders)")
    worker.add_argument("--concurrency", type=int, default=0, help="worker processes (default: CPUs)")
    worker.set_defaults(func=cmd_worker)

    bridge = sub.add_parser("bridge", help="run the Redis stream bridge (rxgate:inbound -> rxgate:outbound)")
    bridge.set_defaults(func=cmd_bridge)

    submit = sub.add_parser("submit", help="put HL7 files on rxgate:inbound and print the responses")
    submit.add_argument("--json", action="store_true", help="JSON Lines: control_id, ack_code, response, file")
    submit.add_argument("--timeout", type=float, default=None, help="seconds to wait for a response (default 30)")
    submit.add_argument("paths", nargs="+", metavar="FILE", help="file of HL7 messages, or - for stdin")
    submit.set_defaults(func=cmd_submit)

    health = sub.add_parser("health", help="exit 0 when the broker and the database answer, else 1")
    health.add_argument("--json", action="store_true", help="print the status as JSON")
    health.set_defaults(func=cmd_health)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # a bad RXGATE_* value: say which, no traceback
        raise UsageError(f"bad setting: {exc}") from None


def _configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.getLogger("rxgate").setLevel(level)


# --- serve ---------------------------------------------------------------------------------------


def _mllp_args(args: argparse.Namespace, settings: Settings) -> list[str] | None:
    """`rxgate mllp`'s arguments under `serve --mllp` (None without it), its TLS and reply settings checked
    here first: the child would refuse them too, after the rest of the service had started."""
    cert, key, client_ca = tls_files(args, settings, prefix="mllp_tls_")
    if not args.mllp:
        if any(getattr(args, f"mllp_tls_{n}", None) for n in ("cert", "key", "client_ca")):
            raise UsageError("--mllp-tls-cert/--mllp-tls-key/--mllp-tls-client-ca need --mllp")
        return None
    listener_tls(cert, key, client_ca)
    reply_setup(settings)
    return [*(["--tls-cert", cert] if cert else []), *(["--tls-key", key] if key else []),
            *(["--tls-client-ca", client_ca] if client_ca else [])]


def api_tls_args(settings: Settings) -> list[str]:
    """uvicorn's HTTPS options from RXGATE_HTTP_TLS_CERT / _KEY (none: plain HTTP, e.g. behind a TLS proxy).
    Both files are loaded here first, so a wrong one is exit 2 naming it, never a plain-HTTP fallback."""
    import ssl

    cert, key = settings.http_tls_cert, settings.http_tls_key
    if not cert and not key:
        return []
    if not (cert and key):
        raise UsageError("HTTPS needs both RXGATE_HTTP_TLS_CERT and RXGATE_HTTP_TLS_KEY")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # what uvicorn makes; TLS 1.2 or later (Python's default minimum)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise UsageError(f"cannot use RXGATE_HTTP_TLS_CERT {cert} with RXGATE_HTTP_TLS_KEY {key}: "
                         f"{exc.reason or exc}") from None
    except OSError as exc:  # a missing or unreadable file (after SSLError, its subclass)
        raise UsageError(f"RXGATE_HTTP_TLS_CERT {cert} / RXGATE_HTTP_TLS_KEY {key}: {exc.strerror or exc}") from None
    return ["--ssl-certfile", cert, "--ssl-keyfile", key]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if `rxgate serve` itself dies (kill -9), instead of lingering."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the children outlive a killed parent
        pass


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # own session: a terminal Ctrl-C reaches `serve` only, which then stops the children in order
    return subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def cmd_serve(args: argparse.Namespace) -> int:
    from workers.bootstrap import open_store
    from workers.queue.embedded import UnsupportedBroker, ensure_broker, ensure_streams, is_amqp

    settings = _settings()
    _configure_logging(settings)
    mllp_args = _mllp_args(args, settings)  # a bad TLS file or reply address: exit 2 before anything starts
    require_audit_key(settings)
    api_tls = api_tls_args(settings) if not args.no_api else []
    settings.warn_if_default_zone()
    try:
        url, embedded = ensure_broker(settings)
        # RabbitMQ carries the Celery path only: the streams, MLLP and results need a Redis of their own
        stream_url, stream_embedded = ensure_streams(settings) if is_amqp(settings) else (url, None)
    except UnsupportedBroker as exc:
        raise UsageError(str(exc)) from None
    except RuntimeError as exc:
        print(f"rxgate serve: cannot start the embedded Redis: {exc}", file=sys.stderr)
        return 1
    embedded = embedded or stream_embedded
    try:
        store = open_store(settings.database_url, settings)  # creates / migrates the schema once, before the children
        getattr(store, "dispose", lambda: None)()
    except Exception as exc:  # noqa: BLE001 - said plainly, no traceback
        print(f"rxgate serve: database: {exc}", file=sys.stderr)
        if embedded:
            embedded.stop()
        return 1
    from workers import metrics

    metrics.configure(settings)  # the shared metrics directory, exported to the children (docs/metrics.md)
    metrics.reset_multiproc_dir()  # metric files of processes that are gone (a previous run)
    env = dict(os.environ, RXGATE_BROKER_URL=url, RXGATE_STREAM_URL=stream_url, RXGATE_EMBEDDED="0")
    me = [sys.executable, "-m", "workers.cli"]
    children: dict[str, subprocess.Popen] = {}
    if not args.no_worker:
        cmd = [*me, "worker"] + (["--concurrency", str(args.concurrency)] if args.concurrency else [])
        children["worker"] = _spawn(cmd, env)
    if not args.no_bridge:
        children["bridge"] = _spawn([*me, "bridge"], env)
    if not args.no_api:
        children["audit-api"] = _spawn([
            sys.executable, "-m", "uvicorn", "--factory", "workers.http.app:settings_app",
            "--host", settings.audit_api_host, "--port", str(settings.audit_api_port), "--log-level", "warning",
            "--no-access-log",  # logged URLs could carry patient ids in query strings
            *api_tls,
        ], env)
    if mllp_args is not None:
        children["mllp"] = _spawn([*me, "mllp", *mllp_args], env)
    log.info("rxgate serve: broker %s%s, database %s, %s", _hide(url), " (embedded)" if embedded else "",
             _hide(settings.database_url), ", ".join(f"{k} pid {p.pid}" for k, p in children.items()))
    print(f"rxgate serve: broker {_hide(url)}{' (embedded, under ' + settings.var_dir + '/)' if embedded else ''}; "
          f"database {_hide(settings.database_url)}; running {', '.join(children) or 'nothing'}. Ctrl-C stops.",
          file=sys.stderr, flush=True)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = 0
    while not stop.is_set():
        for name, proc in children.items():
            if proc.poll() is not None:
                log.error("rxgate serve: %s exited with status %s; stopping the service", name, proc.returncode)
                status = 1
                stop.set()
        stop.wait(0.5)
    _stop_children(children, settings)
    if embedded:
        embedded.stop()
    return status


def _stop_children(children: dict[str, subprocess.Popen], settings: Settings, timeout: float = 60.0) -> None:
    """SIGTERM all (Celery warm shutdown, the bridge finishes its entry), wait, then SIGKILL the stragglers.

    Anything a killed child had not finished stays unacknowledged and is delivered again.
    """
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, proc in children.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("rxgate serve: %s did not stop within %.0f s: killed (its work will be redelivered)",
                        name, timeout)
            proc.kill()
            proc.wait()


def _hide(url: str) -> str:
    from workers.health import _hide_password

    return _hide_password(url)


# --- worker / bridge ---------------------------------------------------------------------------------


def require_audit_key(settings) -> None:
    """The audit chain's key (docs/interfaces.md §4): without one, a service process stops at start-up
    (exit 2, naming RXGATE_AUDIT_KEY / RXGATE_AUDIT_KEY_FILE) instead of failing on its first message."""
    from workers.store.chain import ChainKeyError

    try:
        settings.chain_keys()
    except ChainKeyError as exc:
        raise UsageError(str(exc)) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from workers import metrics

    settings = _settings()
    require_audit_key(settings)
    _configure_logging(settings)
    metrics.configure(settings)  # before the pool forks: its children count into the same directory
    from workers.queue.celery_app import QUEUE, get_app
    from workers.queue.embedded import UnsupportedBroker

    try:
        app = get_app()
    except UnsupportedBroker as exc:
        raise UsageError(str(exc)) from None
    argv = ["worker", "-Q", QUEUE, "-l", settings.log_level.upper(), "-n", f"rxgate-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle"]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    app.worker_main(argv)
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from workers import metrics
    from workers.bootstrap import backoff_delays, bootstrap, settle_heap
    from workers.queue.bridge import Bridge, safe_reason
    from workers.queue.sentinel import broker_client

    settings = _settings()
    require_audit_key(settings)
    _configure_logging(settings)
    metrics.configure(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    delays = backoff_delays(settings.model_copy(update={"retry_budget": float("inf")}))
    while True:  # the database may be starting (compose): wait for it
        try:
            service = bootstrap(settings)
            break
        except Exception as exc:  # noqa: BLE001
            delay = next(delays)
            log.warning("bridge: store not available (%s); retrying in %.1f s", safe_reason(exc), delay)
            if stop.wait(delay):
                return 1
    client = broker_client(settings, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
    settle_heap()
    from workers.queue.embedded import is_amqp

    if is_amqp(settings):  # RabbitMQ's dead-lettered tasks join rxgate:deadletter (workers/queue/amqp_deadletters.py)
        from workers.queue.amqp_deadletters import drain

        threading.Thread(target=drain, args=(settings, settings.broker_url, client, stop), daemon=True,
                         name="amqp-deadletters").start()
    Bridge(service, client, settings, stop=stop).run()
    return 0


# --- submit ------------------------------------------------------------------------------------------


def _entries(text: str) -> list[str]:
    """One stream entry per message (an unreadable text is sent whole: it gets one AR)."""
    from validator.er7 import split_messages

    split = split_messages(text)
    if split.no_msh or not split.messages:
        return [text]
    return [raw.text for raw in split.messages]


def cmd_submit(args: argparse.Namespace) -> int:
    import redis

    from workers.queue.bridge import Streams
    from workers.queue.embedded import resolve_stream_url
    from workers.queue.sentinel import broker_client

    settings = _settings()
    timeout = args.timeout if args.timeout is not None else settings.submit_timeout
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    inputs = read_inputs(args.paths)  # every file read before anything is sent (exit 2 otherwise)
    url = resolve_stream_url(settings)
    streams = Streams.from_settings(settings)
    client = broker_client(settings, socket_connect_timeout=5, socket_timeout=max(timeout, 5) + 5)
    try:
        client.ping()
        last = client.xrevrange(streams.outbound, count=1)
        cursor = last[0][0] if last else "0-0"
        pipe = client.pipeline(transaction=False)
        sent: list[str] = []
        for name, text in inputs:
            for message in _entries(text):
                pipe.xadd(streams.inbound, {"hl7": message})
                sent.append(name)
        ids = [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]
    except redis.RedisError as exc:
        print(f"rxgate submit: broker {_hide(url)} does not answer ({exc}); is `rxgate serve` running?",
              file=sys.stderr)
        return 1
    waiting = dict(zip(ids, sent, strict=True))
    worst = 0
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"rxgate submit: no response within {timeout:.0f} s for {len(waiting)} of {len(ids)} "
                      f"message(s) (inbound ids {', '.join(list(waiting)[:5])}{'...' if len(waiting) > 5 else ''}); "
                      "is a bridge consuming rxgate:inbound (`rxgate serve`)?", file=sys.stderr)
                return 1
            reply = client.xread({streams.outbound: cursor}, count=100, block=int(min(left, 1.0) * 1000) or 1)
            for _stream, items in reply or []:
                for entry_id, fields in items:
                    cursor = entry_id
                    f = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
                    name = waiting.pop(f.get("inbound_id", ""), None)
                    if name is None:
                        continue  # another sender's response
                    deadline = time.monotonic() + timeout  # the timeout runs per response
                    if f.get("ack_code") != "AA":
                        worst = 1
                    _print_response(f, name, args.json)
    except redis.RedisError as exc:
        print(f"rxgate submit: lost the broker while waiting ({exc})", file=sys.stderr)
        return 1
    return worst


def _print_response(fields: dict[str, str], name: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"control_id": fields.get("control_id") or None, "ack_code": fields.get("ack_code"),
                          "response": fields.get("hl7", ""), "file": name,
                          "inbound_id": fields.get("inbound_id")}), flush=True)
        return
    words = {"AA": "accepted", "AE": "refused in part", "AR": "rejected"}
    ack = fields.get("ack_code", "?")
    print(f"{fields.get('control_id') or '(no control id)'}  {ack} ({words.get(ack, '?')})  {Path(name).name}",
          flush=True)
    for seg in fields.get("hl7", "").split("\r"):
        parts = seg.split("|")
        if parts[0] == "ERR" and len(parts) > 8:
            print(f"    {parts[4] or '?'} {parts[5]:<22} {parts[2]:<10} {parts[8]}", flush=True)
        elif parts[0] == "ERR" and len(parts) > 1:
            print(f"    {parts[1]}", flush=True)


# --- health ------------------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    from workers.health import health_status

    status = health_status(_settings())
    if args.json:
        print(json.dumps(status))
    else:
        for part in ("broker", "database", "streams"):
            if part not in status:
                continue
            s = status[part]
            print(f"{part:<9} {'ok  ' if s['ok'] else 'FAIL'} {s['url']}  {s['detail']}")
    return 0 if status["status"] == "ok" else 1
