"""RabbitMQ's dead letters into `rxgate:deadletter` (docs/interfaces.md §5 "Celery on RabbitMQ").

The quorum queue `rxgate.orders` dead-letters a task delivered more than RXGATE_AMQP_DELIVERY_LIMIT
times (its workers kept dying on it) to the exchange `rxgate.orders.dlx`, queue `rxgate.orders.dead`. The
stream bridge runs `drain` beside its loop: each such task becomes an entry of `rxgate:deadletter`
(`source` `celery`, the message text as `hl7`, the reason), XADDed before the RabbitMQ message is
acknowledged (a crash between the two leaves a duplicate dead letter, never a lost one). An operator
then resends it (`rxgate deadletter resend`, back as a task) or drops it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import redis

from workers.queue.bridge import Streams, safe_reason
from workers.settings import Settings

log = logging.getLogger("rxgate.amqp_deadletters")


def task_text(body: Any) -> str | None:
    """The message text of a Celery task body (protocol 2: [args, kwargs, embed]; protocol 1: a dict)."""
    args = body[0] if isinstance(body, list | tuple) and body else (body or {}).get("args") if isinstance(
        body, dict) else None
    if isinstance(args, list | tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def dead_letter_fields(body: Any, headers: dict[str, Any], limit: int) -> dict[str, str]:
    text = task_text(body)
    fields = {"reason": f"RabbitMQ: delivered more than {limit} times (x-delivery-limit; its workers died on it)",
              "source": "celery", "task_id": str(headers.get("id") or ""), "attempts": str(limit + 1),
              "failed_at": datetime.now(UTC).isoformat()}
    if text is not None:
        fields["hl7"] = text
    return fields


def drain(settings: Settings, broker_url: str, client: redis.Redis, stop: threading.Event,
          poll: float = 1.0) -> int:
    """Move dead-lettered tasks to the stream until `stop`; returns how many were moved."""
    from kombu import Connection

    from workers.queue.celery_app import dead_queue

    streams = Streams.from_settings(settings)
    moved = 0
    while not stop.is_set():
        try:
            with Connection(broker_url, connect_timeout=5) as conn:
                queue = dead_queue()(conn.default_channel)
                queue.declare()
                while not stop.is_set():
                    message = queue.get(no_ack=False, accept=["json"])
                    if message is None:
                        stop.wait(poll)
                        continue
                    client.xadd(streams.deadletter, dead_letter_fields(
                        message.decode(), message.headers or {}, settings.amqp_delivery_limit))
                    message.ack()
                    moved += 1
                    log.error("celery task %s dead-lettered by RabbitMQ (delivery limit): on %s",
                              (message.headers or {}).get("id"), streams.deadletter)
        except Exception as exc:  # noqa: BLE001 - the broker or Redis is down: wait it out, nothing is acked
            log.warning("amqp dead-letter drain: %s; retrying in 5 s", safe_reason(exc))
            stop.wait(5)
    return moved
