"""`rxgate mllp`: run the MLLP listener (workers/queue/mllp.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from workers.cli.usage import UsageError
from workers.settings import Settings

log = logging.getLogger("rxgate.mllp")


def register(sub) -> None:
    p = sub.add_parser("mllp", help="MLLP (TCP) listener: queue each message, answer on the same connection")
    p.add_argument("--host", default=None, help="address to listen on (default RXGATE_MLLP_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default RXGATE_MLLP_PORT, 2575; 0 = any)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for a response before answering AR (default RXGATE_MLLP_TIMEOUT, 30)")
    p.set_defaults(func=cmd_mllp)


def cmd_mllp(args: argparse.Namespace) -> int:
    # the listener's modules (asyncio, redis) are imported when it runs, not at every `rxgate` start
    from workers import metrics
    from workers.queue import sentinel
    from workers.queue.embedded import resolve_broker_url

    try:
        settings = Settings()
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"bad setting: {exc}") from None
    logging.getLogger("rxgate").setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    metrics.configure(settings)
    host = args.host or settings.mllp_host
    port = settings.mllp_port if args.port is None else args.port
    timeout = settings.mllp_timeout if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    if not 0 <= port <= 65535:
        raise UsageError("--port must be 0-65535")
    url = "" if sentinel.enabled(settings) else resolve_broker_url(settings)
    return asyncio.run(_serve(settings, url, host, port, timeout))


async def _serve(settings: Settings, url: str, host: str, port: int, timeout: float) -> int:
    from workers.queue.mllp import MllpServer

    server = MllpServer(settings, url, host, port, timeout)
    try:
        bound = await server.start()
    except OSError as exc:
        print(f"rxgate mllp: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"rxgate mllp: listening on {host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("mllp: stopping; %d open connection(s) get their responses first", len(server.connections))
    await server.close()
    return 0
