"""Celery on RabbitMQ (docs/interfaces.md §5 "Celery on RabbitMQ"), on this machine's RabbitMQ in a vhost of its own.

Skipped, with the reason, when RabbitMQ does not answer on 127.0.0.1:5672 or no vhost can be made.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.builders import adult_order_set
from tests.integration.conftest import Procs, audit_per_control_id, fault_hook, service_env, wait_until
from tests.paths import ROOT

RABBIT = ("127.0.0.1", 5672)


def _rabbit_answers() -> bool:
    try:
        with socket.create_connection(RABBIT, timeout=1):
            return True
    except OSError:
        return False


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def amqp_url():
    if not _rabbit_answers():
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("no rabbitmqctl to create a vhost of this test's own")
    vhost = f"rxgate-test-{uuid.uuid4().hex[:8]}"
    try:
        _ctl("add_vhost", vhost)
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot create a RabbitMQ vhost with rabbitmqctl ({exc})")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=120)


def test_health_sees_rabbitmq_and_the_streams_redis(amqp_url, redis_url, tmp_path):
    from workers.health import health_status
    from workers.settings import Settings
    from workers.store import open_sql_store

    db = f"sqlite:///{tmp_path / 'h.db'}"
    open_sql_store(db, create=True).dispose()
    status = health_status(Settings(broker_url=amqp_url, stream_url=redis_url, database_url=db))
    assert status["status"] == "ok", status
    assert status["broker"]["detail"].startswith("rabbitmq") and "guest:guest" not in status["broker"]["url"]
    assert status["streams"]["detail"].startswith("redis")
    down = health_status(Settings(broker_url="amqp://guest:guest@127.0.0.1:1/x", stream_url=redis_url,
                                  database_url=db))
    assert down["status"] == "unavailable" and not down["broker"]["ok"]


def test_the_queue_is_a_quorum_queue_with_a_delivery_limit_and_dead_letter_exchange(amqp_url, redis_url):
    from workers.queue.celery_app import QUEUE, TASK, make_app
    from workers.settings import Settings

    app = make_app(Settings(broker_url=amqp_url, stream_url=redis_url))  # (another limit: a declare mismatch)
    assert app.conf.broker_transport_options["confirm_publish"] is True
    assert app.conf.result_backend == redis_url
    app.send_task(TASK, args=["MSH|"])  # declares the queue as configured (nobody consumes it here)
    with app.connection_for_write() as conn:
        _name, messages, _consumers = conn.default_channel.queue_declare(QUEUE, passive=True)
    assert messages >= 1
    out = subprocess.run(["rabbitmqctl", "list_queues", "-p", amqp_url.rsplit("/", 1)[1], "name", "type",
                          "arguments", "--formatter", "json"], capture_output=True, text=True, timeout=120)
    queue = next(q for q in json.loads(out.stdout) if q["name"] == QUEUE)
    assert queue["type"] == "quorum"
    args = {a[0] if isinstance(a, list) else a: a for a in queue["arguments"]} if isinstance(
        queue["arguments"], list) else queue["arguments"]
    assert "x-delivery-limit" in json.dumps(args) and "rxgate.orders.dlx" in json.dumps(args)
    assert "10" in json.dumps(args)  # RXGATE_AMQP_DELIVERY_LIMIT, above the error retries
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)


def test_a_worker_killed_mid_task_is_redelivered_within_seconds_and_counted_once(amqp_url, redis_url, tmp_path):
    from workers.queue.celery_app import TASK, make_app
    from workers.settings import Settings

    started = tmp_path / "started.log"
    hook = fault_hook(tmp_path / "hook")
    e = service_env(redis_url, tmp_path, RXGATE_BROKER_URL=amqp_url, RXGATE_STREAM_URL=redis_url,
                    RXGATE_TEST_SLOW_MS="20000", RXGATE_TEST_STARTED_LOG=str(started),
                    RXGATE_METRICS_DIR="off", PYTHONPATH=f"{hook}:{ROOT}")
    procs = Procs(e)
    app = make_app(Settings(broker_url=amqp_url, stream_url=redis_url))
    try:
        first = procs.start("worker", "--concurrency", "1")
        result = app.send_task(TASK, args=[adult_order_set("AMQP0001", mrn="AMQPM1")])
        wait_until(lambda: started.exists() and started.read_text().strip(), 90, what="the first worker at work")
        procs.kill9(first)  # mid-task: it is sleeping inside the judgement, nothing stored yet
        killed = time.monotonic()
        second = procs.start("worker", "--concurrency", "1", env=dict(e, RXGATE_TEST_SLOW_MS="0"))
        answer = result.get(timeout=120)
        elapsed = time.monotonic() - killed
        assert answer["control_id"] == "AMQP0001" and answer["ack_code"] in {"AA", "AE"}
        pids = [line.split()[0] for line in started.read_text().splitlines()]
        assert len(pids) == 2 and pids[0] != pids[1]  # the same task, started again by the second worker
        assert audit_per_control_id(e) == {"AMQP0001": 1}  # counted once
        # no visibility timeout to wait for (Redis: 300 s): the second worker's start-up is most of it
        assert elapsed < 60, elapsed
        print(f"redelivered after a kill -9 in {elapsed:.1f} s (worker start included)", file=sys.stderr)
        assert second.poll() is None
    finally:
        procs.stop_all()


def test_an_unsupported_broker_url_is_refused_in_one_line(tmp_path):
    env = service_env("kafka://127.0.0.1:9092", tmp_path, RXGATE_METRICS_DIR="off")
    out = subprocess.run([sys.executable, "-m", "workers.cli", "worker"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert "unsupported broker" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert Path(tmp_path).exists()
