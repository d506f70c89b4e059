"""Prometheus metrics: what the service answered, how fast, and what is waiting (docs/metrics.md).

Counted where messages are processed: `Service.process` (workers/bootstrap.py) observes each
outcome, the bridge and the Celery task count retries and dead letters, the MLLP listener its own
AR answers. Queue depth is read from Redis when /metrics is scraped.

Processes. `rxgate serve` runs a Celery worker (a pool of forked processes), the stream bridge, the
audit API (which serves /metrics) and possibly `rxgate mllp`, each a separate process. Counters
therefore use prometheus_client's multiprocess mode: every process writes its values to mmap files
in one directory and the process serving /metrics sums them. Each entry point (serve, worker,
bridge, mllp, the audit API) calls `configure(settings)` first: it chooses the directory
(PROMETHEUS_MULTIPROC_DIR when already set, else RXGATE_METRICS_DIR, default
`<RXGATE_VAR_DIR>/metrics`), creates it and exports it as PROMETHEUS_MULTIPROC_DIR to child
processes. Importing this module creates nothing: a process that never calls `configure` (a test,
`rxgate check`, an embedding) counts in its own memory, or in the directory PROMETHEUS_MULTIPROC_DIR
names if it inherited one that exists. All processes of one host must see the same directory (they
do under `serve`: same working directory and settings). Counters of a process that exited stay in
the sum (no drop at a worker restart); no gauge is kept in the files (the queue gauges are read
live), so nothing needs `mark_process_dead`. Empty the directory when the whole service (re)starts
(docs/metrics.md). RXGATE_METRICS_DIR=off gives plain per-process metrics (one process serving
/metrics sees only its own counts: only right for a single-process embedding).

Metrics never carry patient data: labels are ack codes, rule ids, sources and queue names.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("rxgate.metrics")

OFF = {"off", "none", "-", "0", "false"}
QUEUE = "rxgate.orders"  # workers.queue.celery_app.QUEUE (not imported: metrics needs nothing of Celery)


def configure(settings=None) -> str | None:
    """For the entry points, before anything is counted: the multiprocess directory (created) exported as
    PROMETHEUS_MULTIPROC_DIR, or None for per-process metrics (RXGATE_METRICS_DIR=off, or the directory
    cannot be created: a warning says so). Counters made before are made again in the chosen mode."""
    global _multiproc_dir, _configured
    current = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    if current:
        chosen = current
    else:
        try:
            if settings is None:
                from workers.settings import Settings

                settings = Settings()
            chosen = settings.metrics_dir.strip() or str(Path(settings.var_dir) / "metrics")
        except Exception as exc:  # noqa: BLE001 - a bad setting is reported by the command that reads it
            log.warning("metrics: settings unreadable (%s); per-process metrics", type(exc).__name__)
            chosen = "off"
    path: str | None = None
    if chosen.lower() not in OFF:
        path = os.path.abspath(chosen)
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("metrics: cannot create %s (%s); per-process metrics", path, exc.strerror)
            path = None
    if path is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # inherited by forked and spawned children
    _multiproc_dir, _configured = path, True
    _drop_instruments()
    return path


def multiproc_dir() -> str | None:
    """The multiprocess directory this process counts into, None: its own memory only."""
    if _configured:
        return _multiproc_dir
    inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    return os.path.abspath(inherited) if inherited and os.path.isdir(inherited) else None


_multiproc_dir: str | None = None
_configured = False

# the classic text format 0.0.4: what every Prometheus 2.x and 3.x scrapes (our names need no escaping);
# spelled out because prometheus_client names its constant differently across versions
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Instruments:
    """The counters, made on first use in the mode `multiproc_dir()` gives (never at import)."""

    def __init__(self) -> None:
        directory = multiproc_dir()
        # the value class decides where values live: mmap files in `directory`, or this process's memory
        if directory is None:
            values.ValueClass = values.MutexValue
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # MultiProcessValue reads the directory from here
            values.ValueClass = values.MultiProcessValue()
        self.directory = directory
        self.messages = Counter(
            "rxgate_messages", "Messages answered, by acknowledgment code (MSA-1); redelivered=true: the stored "
            "answer was returned for a message already processed", ["outcome", "redelivered"])
        self.findings = Counter(
            "rxgate_findings", "Error and warning findings of processed messages, by rule id (not counted again "
            "for redeliveries)", ["rule", "severity"])
        self.latency = Histogram(
            "rxgate_processing_seconds", "Time to process one queue entry (read, judge, store, respond)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.retries = Counter(
            "rxgate_retries", "Processing attempts that failed and will be retried, by source (bridge, celery) "
            "and kind (transient: database/broker down; error: an unexpected exception)", ["source", "kind"])
        self.dead_letters = Counter(
            "rxgate_dead_letters", "Messages given up on: written to <prefix>:deadletter and answered AR 207, "
            "by source", ["source"])
        self.mllp_rejections = Counter(
            "rxgate_mllp_rejections", "AR answers the MLLP listener gave itself, by reason (timeout, not_hl7, "
            "not_queued)", ["reason"])
        self.mllp_commit_acks = Counter(
            "rxgate_mllp_commit_acks", "Enhanced mode: commit decisions by MSA-1 (CA queued, CE not queued, CR "
            "refused) and whether MSH-15 let the commit ACK be sent", ["code", "sent"])
        self.mllp_peer_acks = Counter(
            "rxgate_mllp_peer_acks", "Commit ACKs (MSA-1 CA/CE/CR) that peers sent to the listener: consumed, never "
            "answered", ["code"])
        self.mllp_resends_joined = Counter(
            "rxgate_mllp_resends_joined", "Messages that were already queued (the same message key in flight): they "
            "waited for that entry's verdict instead of being queued again")
        self.mllp_replies = Counter(
            "rxgate_mllp_replies", "Enhanced-mode application responses sent to reply addresses, by outcome: "
            "delivered, retried (one failed attempt), refused (the peer answered CR/AR), given_up "
            "(RXGATE_MLLP_REPLY_BUDGET spent)", ["outcome"])
        self.mllp_tls_failures = Counter(
            "rxgate_mllp_tls_handshake_failures", "Connections to the TLS listener whose handshake failed (no or an "
            "untrusted client certificate, plain MLLP on the TLS port, ...)")

    def unregister(self) -> None:
        for metric in (self.messages, self.findings, self.latency, self.retries, self.dead_letters,
                       self.mllp_rejections, self.mllp_commit_acks, self.mllp_peer_acks, self.mllp_resends_joined,
                       self.mllp_replies, self.mllp_tls_failures):
            try:
                REGISTRY.unregister(metric)
            except KeyError:
                pass


_instruments: _Instruments | None = None


def instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def _drop_instruments() -> None:
    global _instruments
    if _instruments is not None:
        _instruments.unregister()
        _instruments = None


def _safe(fn):
    """Metrics never break message processing."""

    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            log.debug("metrics: %s failed (%s)", fn.__name__, type(exc).__name__)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_safe
def observe(outcomes: Iterable[Any], seconds: float) -> None:
    """One `Service.process` call: its outcomes (validator.service.Outcome) and its duration."""
    m = instruments()
    m.latency.observe(max(seconds, 0.0))
    for outcome in outcomes:
        result = outcome.result
        redelivered = bool(getattr(outcome, "redelivered", False))
        m.messages.labels(outcome=str(result.get("ack_code") or "unknown"),
                        redelivered="true" if redelivered else "false").inc()
        if redelivered:
            continue
        for f in result.get("findings") or []:
            severity = f.get("severity")
            if severity in ("error", "warning") and f.get("rule"):
                m.findings.labels(rule=str(f["rule"]), severity=severity).inc()


@_safe
def retry(source: str, transient: bool) -> None:
    instruments().retries.labels(source=source, kind="transient" if transient else "error").inc()


@_safe
def dead_letter(source: str) -> None:
    instruments().dead_letters.labels(source=source).inc()


@_safe
def mllp_rejection(reason: str) -> None:
    instruments().mllp_rejections.labels(reason=reason).inc()


@_safe
def mllp_commit(code: str, sent: bool) -> None:
    instruments().mllp_commit_acks.labels(code=code, sent="true" if sent else "false").inc()


@_safe
def mllp_peer_ack(code: str) -> None:
    instruments().mllp_peer_acks.labels(code=code).inc()


@_safe
def mllp_resend_joined() -> None:
    instruments().mllp_resends_joined.inc()


@_safe
def mllp_reply(outcome: str) -> None:
    instruments().mllp_replies.labels(outcome=outcome).inc()


@_safe
def mllp_tls_failure() -> None:
    instruments().mllp_tls_failures.inc()


def reset_multiproc_dir() -> int:
    """Remove the counter files of processes that are gone (call when the whole service starts).

    Their counts leave the sums, which Prometheus reads as a counter reset (rate() handles it). Files of
    live processes (a separately started `rxgate mllp`, say) are kept. Returns the number removed.
    """
    directory = multiproc_dir()
    if directory is None:
        return 0
    removed = 0
    for f in Path(directory).glob("*.db"):
        try:
            pid = int(f.stem.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            f.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- queue depth, read from Redis at scrape time -----------------------------------------------------


class QueueCollector:
    """Gauges read live from the broker: nothing stale is left behind by a process that died."""

    def __init__(self, settings=None, client=None):
        from workers.settings import Settings

        self.settings = settings or Settings()
        self._client = client

    def client(self):
        if self._client is None:
            import redis

            from workers.queue import sentinel
            from workers.queue.embedded import resolve_stream_url

            if sentinel.enabled(self.settings):
                self._client = sentinel.master_client(self.settings, socket_timeout=1.0)
            else:
                self._client = redis.Redis.from_url(resolve_stream_url(self.settings), socket_timeout=1.0,
                                                    socket_connect_timeout=1.0)
        return self._client

    def collect(self):
        p = self.settings.stream_prefix
        inbound, deadletter = f"{p}:inbound", f"{p}:deadletter"
        up = GaugeMetricFamily("rxgate_broker_up", "1 when the broker answered this scrape, else 0")
        depth = GaugeMetricFamily("rxgate_queue_depth", "Messages waiting or in progress: entries on the inbound "
                                  "stream (answered ones are deleted) and tasks on the Celery queue", labels=["queue"])
        pending = GaugeMetricFamily("rxgate_queue_pending", "Inbound stream entries read by a bridge and not yet "
                                    "answered (XPENDING)", labels=["queue"])
        dead = GaugeMetricFamily("rxgate_deadletter_depth", "Entries on the dead-letter stream (an operator reads "
                                 "and deletes them)")
        try:
            r = self.client()
            pipe = r.pipeline(transaction=False)
            pipe.xlen(inbound)
            pipe.llen(QUEUE)
            pipe.xlen(deadletter)
            n_inbound, n_celery, n_dead = pipe.execute()
            try:
                n_pending = int(r.xpending(inbound, self.settings.stream_group)["pending"])
            except Exception:  # noqa: BLE001 - no consumer group yet: nothing is pending
                n_pending = 0
        except Exception as exc:  # noqa: BLE001 - the scrape still answers, saying the broker is down
            log.debug("metrics: broker unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        depth.add_metric([inbound], int(n_inbound))
        depth.add_metric([QUEUE], int(n_celery))
        pending.add_metric([inbound], n_pending)
        dead.add_metric([], int(n_dead))
        yield from (up, depth, pending, dead)


_queue_collector: QueueCollector | None = None


def metrics_response(queue: QueueCollector | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition (body, content type): every process's counters, plus queue gauges."""
    global _queue_collector
    directory = instruments().directory  # the counters exist (at zero) even before the first message
    if directory is not None and os.path.isdir(directory):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    if queue is None:
        if _queue_collector is None:
            try:
                _queue_collector = QueueCollector()
            except Exception as exc:  # noqa: BLE001 - bad settings: counters only
                log.debug("metrics: no queue collector (%s)", type(exc).__name__)
        queue = _queue_collector
    if queue is not None:
        live = CollectorRegistry(auto_describe=False)
        live.register(queue)
        started = time.perf_counter()
        body += generate_latest(live)
        log.debug("metrics: queue gauges read in %.1f ms", (time.perf_counter() - started) * 1000)
    return body, CONTENT_TYPE


def mount_metrics(app) -> None:
    """Add the open `GET /metrics` route to a FastAPI app (docs/interfaces.md §4: /metrics needs no token)."""
    from fastapi.responses import Response

    if any(getattr(r, "path", None) == "/metrics" for r in app.router.routes):
        return

    @app.get("/metrics", include_in_schema=False)
    def metrics():  # a sync route: runs in the thread pool, the Redis reads do not block the loop
        body, content_type = metrics_response()
        return Response(content=body, media_type=content_type)
