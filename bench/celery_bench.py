"""The Celery app the bench's workers run: `workers.queue.tasks`' app (rxgate.validate, same configuration)
plus `bench.noop`, a task that does nothing, to measure the transport alone (part 2 (d)).

    python -m celery -A bench.celery_bench worker -Q rxgate.orders -c N ...
"""

from __future__ import annotations

from typing import Any

from workers.queue.celery_app import get_app

# `celery -A bench.celery_bench` needs an app object in this module: the service's own (rxgate.validate
# registered, same configuration), built when the worker imports this module
app = get_app()

NOOP = "bench.noop"


@app.task(name=NOOP, acks_late=True)
def noop(text: Any) -> dict[str, Any]:
    return {"ack_code": "AA"}
