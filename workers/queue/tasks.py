"""`rxgate.validate`: one message text in, the JSON result of docs/interfaces.md §1 out.

A text holding several messages is processed whole (every message stored and
answered in order); the task returns the first message's result. See
celery_app.py for the delivery settings and the retry policy.

Nothing is built at import: `make_app` registers the task on each app it makes (`register_tasks`).
The attributes `app` and `validate` are the process's app (`celery_app.get_app()`) and its task,
looked up on first use, so `celery -A workers.queue.tasks worker` still finds the app.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from workers import metrics
from workers.bootstrap import Service, backoff_delays, bootstrap, is_transient, settle_heap
from workers.queue.bridge import deadletter_celery, not_processed_result, safe_reason
from workers.queue.celery_app import TASK, get_app

log = logging.getLogger("rxgate.tasks")

_service: tuple[int, Service] | None = None


def __getattr__(name: str) -> Any:
    """`app` and `validate` of the process's app, made on first use (module attributes, PEP 562)."""
    if name == "app":
        return get_app()
    if name == "validate":
        return get_app().tasks[TASK]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def current_service(settings) -> Service:
    """The process's service, built lazily after the pool forked (no engine crosses a fork)."""
    global _service
    if _service is None or _service[0] != os.getpid():
        _service = (os.getpid(), bootstrap(settings))
        settle_heap()
    return _service[1]


def set_service(service: Service | None) -> None:
    """Tests and embedders: use this service in this process."""
    global _service
    _service = (os.getpid(), service) if service is not None else None


def register_tasks(app) -> None:
    """Put `rxgate.validate` on `app` (called by `celery_app.make_app`). shared=False: only on this app,
    not on every app made later in the process."""
    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             shared=False)(validate_message)


def validate_message(self, text: Any) -> dict[str, Any]:
    """The body of `rxgate.validate` (`self`: the bound task, whose app carries the settings)."""
    if not isinstance(text, str | bytes):
        text = "" if text is None else str(text)  # not a message: processed as one, and rejected (AR)
    try:
        # opening the store can fail too (database down)
        task_id = self.request.id
        outcomes = current_service(self.app.rxgate_settings).process(
            text, delivery_id=f"celery:{task_id}" if task_id else None)
    except Exception as exc:  # never bad input (that is answered AR): the store, the broker, or a bug
        return _retry_or_give_up(self, text, exc)
    return outcomes[0].result


def _retry_or_give_up(task, text, exc: Exception) -> dict[str, Any]:
    app = task.app
    settings = app.rxgate_settings
    delays = list(backoff_delays(settings))
    attempt = task.request.retries  # retries done so far
    transient = is_transient(exc)
    allowed = len(delays) if transient else min(settings.error_retries, len(delays))
    if attempt < allowed:
        log.warning("task %s attempt %d failed (%s); retrying in %.2f s",
                    task.request.id, attempt + 1, safe_reason(exc), delays[attempt])
        metrics.retry("celery", transient)
        raise task.retry(exc=exc, countdown=delays[attempt], max_retries=allowed)
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    reason = f"{safe_reason(exc)}: {detail}" if detail else safe_reason(exc)
    metrics.dead_letter("celery")
    log.error("task %s not processed after %d attempts (%s): dead-lettered, AR returned",
              task.request.id, attempt + 1, safe_reason(exc))
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if not task.request.is_eager:
        deadletter_celery(app.conf.broker_url, settings, body, reason, attempt + 1, task.request.id or "")
    return not_processed_result(body, reason, settings.tz)
