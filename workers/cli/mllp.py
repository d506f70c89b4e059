"""`rxgate mllp`: run the MLLP listener (workers/queue/mllp.py), plain or over TLS.

Everything that can be wrong with the configuration — a TLS file missing or unreadable, a bad
RXGATE_MLLP_REPLY_TO entry — is said at start-up (exit 2, naming it), before anything listens:
never a plain listener where TLS was asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from workers import metrics
from workers.cli.usage import UsageError
from workers.queue import sentinel
from workers.queue.embedded import resolve_stream_url
from workers.queue.mllp import MllpServer
from workers.queue.replies import Replies, parse_reply_to
from workers.queue.tls import TlsSetupError, client_context, server_context
from workers.settings import Settings

log = logging.getLogger("rxgate.mllp")


def register(sub) -> None:
    p = sub.add_parser("mllp", help="MLLP listener (TCP or TLS): queue each message, answer as MSH-15/16 ask")
    p.add_argument("--host", default=None, help="address to listen on (default RXGATE_MLLP_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default RXGATE_MLLP_PORT, 2575; 0 = any)")
    p.add_argument("--timeout", type=float, default=None,
                   help="original mode: seconds to wait for a verdict before answering AR rxgate.timeout "
                        "(default RXGATE_MLLP_TIMEOUT, 30)")
    add_tls_options(p, "--tls-")
    p.set_defaults(func=cmd_mllp)


def add_tls_options(p: argparse.ArgumentParser, prefix: str) -> None:
    """--tls-cert/--tls-key/--tls-client-ca (`serve` spells them --mllp-tls-…)."""
    p.add_argument(f"{prefix}cert", metavar="FILE", default=None,
                   help="PEM certificate: MLLP over TLS 1.2+ only (default RXGATE_MLLP_TLS_CERT)")
    p.add_argument(f"{prefix}key", metavar="FILE", default=None,
                   help="PEM private key of the certificate (default RXGATE_MLLP_TLS_KEY)")
    p.add_argument(f"{prefix}client-ca", metavar="FILE", default=None,
                   help="PEM CA: serve only clients presenting a certificate it signed, mutual TLS "
                        "(default RXGATE_MLLP_TLS_CLIENT_CA)")


def tls_files(args: argparse.Namespace, settings: Settings, prefix: str = "tls_") -> tuple[str, str, str]:
    """(cert, key, client CA): the options, else the settings."""
    def pick(name: str) -> str:
        given = getattr(args, f"{prefix}{name}", None)
        return given if given is not None else getattr(settings, f"mllp_tls_{name}")

    return pick("cert"), pick("key"), pick("client_ca")


def listener_tls(cert: str, key: str, client_ca: str) -> ssl.SSLContext | None:
    """The server context, None for plain TCP; a `UsageError` naming what is wrong."""
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        raise UsageError("MLLP over TLS needs both --tls-cert and --tls-key (RXGATE_MLLP_TLS_CERT, _KEY)"
                         + ("; --tls-client-ca alone does not turn TLS on" if client_ca and not (cert or key) else ""))
    try:
        return server_context(cert, key, client_ca)
    except TlsSetupError as exc:
        raise UsageError(str(exc)) from None


def reply_setup(settings: Settings) -> Replies:
    """Reply addresses (RXGATE_MLLP_REPLY_TO) and the TLS context for them; `UsageError` when either is bad."""
    try:
        routes = parse_reply_to(settings.mllp_reply_to)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name in ("mllp_reply_budget", "mllp_reply_initial_delay", "mllp_reply_max_delay", "mllp_reply_ack_timeout"):
        if getattr(settings, name) <= 0:
            raise UsageError(f"RXGATE_{name.upper()} must be positive")
    tls = None
    if settings.mllp_reply_tls_ca:
        try:
            tls = client_context(settings.mllp_reply_tls_ca, settings.mllp_reply_tls_cert, settings.mllp_reply_tls_key)
        except TlsSetupError as exc:
            raise UsageError(str(exc)) from None
    elif settings.mllp_reply_tls_cert or settings.mllp_reply_tls_key:
        raise UsageError("RXGATE_MLLP_REPLY_TLS_CERT/_KEY need RXGATE_MLLP_REPLY_TLS_CA (the CA the peers' "
                         "certificates are checked against)")
    return Replies(settings, routes, tls)


def cmd_mllp(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"bad setting: {exc}") from None
    logging.getLogger("rxgate").setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    host = args.host or settings.mllp_host
    port = settings.mllp_port if args.port is None else args.port
    timeout = settings.mllp_timeout if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    if not 0 <= port <= 65535:
        raise UsageError("--port must be 0-65535")
    tls = listener_tls(*tls_files(args, settings))
    replies = reply_setup(settings)
    metrics.configure(settings)  # the shared metrics directory (docs/metrics.md), once the options are valid
    url = "" if sentinel.enabled(settings) else resolve_stream_url(settings)
    return asyncio.run(_serve(settings, url, host, port, timeout, tls, replies))


async def _serve(settings: Settings, url: str, host: str, port: int, timeout: float,
                 tls: ssl.SSLContext | None, replies: Replies) -> int:
    server = MllpServer(settings, url, host, port, timeout, tls=tls, replies=replies)
    try:
        bound = await server.start()
    except OSError as exc:
        print(f"rxgate mllp: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        await server.verdicts.close()
        return 1
    mode = "TLS" + (", client certificates required" if tls.verify_mode == ssl.CERT_REQUIRED else "") \
        if tls is not None else "plain TCP"
    print(f"rxgate mllp: listening on {host}:{bound} ({mode})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("mllp: stopping; %d open connection(s) get their answers first", len(server.connections))
    await server.close()
    return 0
