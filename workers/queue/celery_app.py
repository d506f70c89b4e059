"""The Celery app: task `rxgate.validate` on queue `rxgate.orders` (docs/interfaces.md §3).

Reliability settings, chosen on purpose:
- `task_acks_late`: the broker message is acked after the task returned, so a worker that dies
  mid-task does not lose it. Safe because the task is idempotent: the message key (MSH-3/4/10 +
  content hash, unique in the SQL store) makes a redelivered task return the stored result.
- `task_reject_on_worker_lost`: a pool child killed by a signal (OOM killer, kill -9) has its
  message requeued instead of acked as failed.
- `worker_prefetch_multiplier` (RXGATE_PREFETCH_MULTIPLIER, default 1, at most 4): with late acks
  each reserved message of a dead worker waits for the visibility timeout; a small prefetch keeps
  that set small. Validation is ~ms per message, so prefetch buys little throughput.
- `broker_transport_options.visibility_timeout` (RXGATE_VISIBILITY_TIMEOUT, default 3600 s): on
  Redis an unacked message is redelivered only after this time. It must exceed the longest task
  run, retries included (retry_budget, 6 min by default), else a slow task runs twice (harmless
  here, but wasted). Set in `broker_transport_options` at app creation: celery #7651 - the
  value is silently ignored elsewhere; tests read it back from the live channel.
- Retries: transient faults (database or broker down) are retried with exponential backoff
  (RXGATE_RETRY_INITIAL_DELAY doubling up to RXGATE_RETRY_MAX_DELAY) until RXGATE_RETRY_BUDGET
  (default 360 s, >= 5 minutes so a short outage is ridden out). Countdowns stay far below the
  visibility timeout (Redis ETAs beyond it run twice: celery #2481, kombu #337). Bad input is
  never retried: it never raises, it gets an AR. After the budget the task returns AR ERR 207
  "not processed, resend" and leaves a record on `rxgate:deadletter`.
- `worker_cancel_long_running_tasks_on_connection_loss`: a broker restart mid-task (celery
  #4671) cancels the task so it is redelivered rather than stuck.
"""

from __future__ import annotations

import functools
import logging

from celery import Celery

from workers.queue import sentinel
from workers.queue.embedded import broker_kind, resolve_broker_url, resolve_stream_url
from workers.settings import Settings

QUEUE = "rxgate.orders"
TASK = "rxgate.validate"
# RabbitMQ: where the quorum queue puts a message delivered more than RXGATE_AMQP_DELIVERY_LIMIT times
# (a task whose worker keeps dying on it), through the exchange rxgate.orders.dlx; the stream bridge drains
# it into rxgate:deadletter.
DEAD_EXCHANGE = "rxgate.orders.dlx"
DEAD_QUEUE = "rxgate.orders.dead"

log = logging.getLogger("rxgate.celery")


def amqp_queues(settings: Settings):
    """The quorum queue `rxgate.orders` (and its dead-letter queue), as Celery declares them."""
    from kombu import Exchange, Queue

    # a topic exchange: Celery's native delayed delivery (a retry's countdown on a quorum queue, which
    # cannot raise the prefetch for ETA tasks) works only with topic exchanges
    return Queue(QUEUE, Exchange(QUEUE, type="topic", durable=True), routing_key=QUEUE, durable=True,
                 queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": settings.amqp_delivery_limit,
                                  "x-dead-letter-exchange": DEAD_EXCHANGE,
                                  "x-dead-letter-routing-key": DEAD_QUEUE}), dead_queue()


def dead_queue():
    from kombu import Exchange, Queue

    return Queue(DEAD_QUEUE, Exchange(DEAD_EXCHANGE, type="direct", durable=True), routing_key=DEAD_QUEUE,
                 durable=True, queue_arguments={"x-queue-type": "quorum"})


def _amqp_conf(app: Celery, settings: Settings) -> None:
    """RabbitMQ: quorum queue with a delivery limit and a dead-letter exchange, publisher confirms. A worker
    that dies closes its connection, so RabbitMQ redelivers its unacked tasks at once (no visibility timeout)."""
    orders, dead = amqp_queues(settings)
    app.conf.update(
        task_queues=(orders,),
        task_create_missing_queues=False,
        broker_transport_options={"confirm_publish": True},  # send_task returns once RabbitMQ has it
        worker_detect_quorum_queues=True,  # per-consumer prefetch (quorum queues refuse a global QoS)
        broker_heartbeat=30,
    )

    from celery import signals

    def declare_dead_letters(sender=None, **_kw):  # the exchange must exist before a message is dead-lettered
        with app.connection_for_write() as conn:
            dead.bind(conn.default_channel).declare()

    signals.worker_ready.connect(declare_dead_letters, weak=False)
    app.rxgate_declare_dead_letters = declare_dead_letters


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    sentinel_options: dict = {}
    if sentinel.enabled(settings):  # RXGATE_BROKER_SENTINELS: failover via Redis Sentinel (docs/scale-out.md)
        broker, sentinel_options = sentinel.celery_broker(settings)
        amqp = False
    else:
        broker = resolve_broker_url(settings)  # an unsupported scheme raises UnsupportedBroker, by name
        amqp = broker_kind(broker) == "amqp"
    # results: RXGATE_RESULT_BACKEND, else the Redis broker (with RabbitMQ: the streams' Redis)
    backend = settings.result_backend or (resolve_stream_url(settings) if amqp else broker)
    if not amqp and settings.visibility_timeout < settings.retry_max_delay + 60:
        log.warning("RXGATE_VISIBILITY_TIMEOUT %.0f s is below RXGATE_RETRY_MAX_DELAY + 60 s: a retried task "
                    "waiting for its countdown can be delivered twice (harmless, the message key answers it)",
                    settings.visibility_timeout)
    app = Celery("rxgate", broker=broker, backend=backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=max(1, min(settings.prefetch_multiplier, 4)),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # how often a worker looks for unacked messages older than the visibility timeout (a dead
            # worker's): every interval x throttle seconds (kombu 5.7 defaults, 100 s)
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": settings.unacked_restore_throttle,
            **sentinel_options,
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout, **sentinel_options},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_default_queue=QUEUE,
        task_routes={TASK: {"queue": QUEUE}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=int(settings.result_expires),
        result_extended=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
        enable_utc=True,
    )
    if amqp:
        _amqp_conf(app, settings)
    if settings.worker_concurrency > 0:
        app.conf.worker_concurrency = settings.worker_concurrency
    app.rxgate_settings = settings  # read by the task
    from workers.queue.tasks import register_tasks  # here, not at the top: tasks.py imports this module

    register_tasks(app)
    # Celery logs a task's return value ("Task ... succeeded in 0.02s: {...}") at INFO: our result holds the
    # patient id and the response's PID segment. Logs never carry patient data, so that logger is held at
    # WARNING; the one line per message comes from validator.service (control id, outcome, rule ids, ms).
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    return app


@functools.cache
def get_app() -> Celery:
    """The process's app from `Settings()`, built on first use, never at import (building it resolves the
    broker URL, which may ping Redis). `rxgate worker` runs it; `celery -A workers.queue.tasks` finds it
    through that module's `app` attribute."""
    return make_app()
