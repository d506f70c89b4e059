"""The Celery task in eager mode: result, dedupe, retries with backoff, give-up AR, and the delivery settings."""

from __future__ import annotations

import pytest

from tests.builders import adult_order_set, msa
from tests.fakes import FlakyStore, OperationalError
from validator import InMemoryStore
from workers.bootstrap import backoff_delays, bootstrap, is_transient, retry_count
from workers.queue import tasks
from workers.queue.celery_app import QUEUE, TASK, make_app
from workers.settings import Settings

SETTINGS = Settings(retry_budget=0.5, retry_initial_delay=0.01, retry_max_delay=0.1, error_retries=2,
                    broker_url="redis://127.0.0.1:1/0")


@pytest.fixture(scope="module")
def app():
    """An app of its own (a dead broker URL: nothing is sent), tasks run eagerly."""
    app = make_app(SETTINGS)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = False  # True would re-raise Retry instead of retrying eagerly
    return app


@pytest.fixture
def validate(app):
    return app.tasks[TASK]


@pytest.fixture
def eager(app):
    def use(store):
        service = bootstrap(SETTINGS, store=store)
        tasks.set_service(service)
        return service

    yield use
    tasks.set_service(None)


def test_task_name_and_queue_are_the_contract(app, validate):
    assert validate.name == TASK == "rxgate.validate"
    assert app.conf.task_routes[TASK]["queue"] == QUEUE == "rxgate.orders"
    assert app.conf.task_default_queue == "rxgate.orders"


def test_the_module_attributes_are_the_process_app_made_on_first_use(monkeypatch):
    """`celery -A workers.queue.tasks` reads `tasks.app`; it is built when read, from Settings(), once."""
    from workers.queue import celery_app

    monkeypatch.setenv("RXGATE_BROKER_URL", "redis://127.0.0.1:1/0")
    celery_app.get_app.cache_clear()
    try:
        assert tasks.app is tasks.app is celery_app.get_app()
        assert tasks.validate is tasks.app.tasks[TASK]
        assert tasks.app.conf.broker_url == "redis://127.0.0.1:1/0"
        from celery.app.utils import find_app

        assert find_app("workers.queue.tasks") is tasks.app  # what `celery -A workers.queue.tasks` resolves
        assert TASK in find_app("workers.queue.tasks").tasks
        with pytest.raises(AttributeError):
            tasks.no_such_thing  # noqa: B018
    finally:
        celery_app.get_app.cache_clear()


def test_result_is_the_json_of_contract_section_1(eager, validate):
    store = InMemoryStore()
    eager(store)
    result = validate.delay(adult_order_set("TASK01")).get()
    assert result["control_id"] == "TASK01"
    assert result["ack_code"] in {"AA", "AE"}
    assert msa(result["response"])[1:3] == [result["ack_code"], "TASK01"]
    assert {o["placer_order_number"] for o in result["orders"]} >= {"ORD1001"}
    assert len(store.audit) == 1


def test_redelivered_task_returns_the_stored_answer_byte_for_byte(eager, validate):
    store = InMemoryStore()
    eager(store)
    first = validate.delay(adult_order_set("TASK02")).get()
    second = validate.delay(adult_order_set("TASK02")).get()
    assert second["response"] == first["response"]
    assert len(store.audit) == 1
    assert len(store.deliveries) == 2
    assert sum(1 for e in store.orders_for("MRN55501^GENHOSP") if e.protocol_order) == 1


def test_several_messages_in_one_task_get_one_ar_and_one_record(eager, validate):
    """A task is one delivery (issue 15): before, the second message was judged and recorded but its
    answer never reached the sender (the task returns one result)."""
    store = InMemoryStore()
    eager(store)
    text = adult_order_set("TASK03", mrn="P3A") + "\n" + adult_order_set("TASK04", mrn="P3B")
    result = validate.delay(text).get()
    assert result["control_id"] == "TASK03" and result["ack_code"] == "AR"
    assert [p.control_id for p in store.audit] == ["TASK03"]


@pytest.mark.parametrize("bad", ["", "garbage", "MSH|broken", None, 12345])
def test_bad_input_gets_ar_and_is_not_retried(eager, bad, validate):
    store = FlakyStore(0, RuntimeError())
    eager(store)
    result = validate.delay(bad).get()
    assert result["ack_code"] == "AR"
    assert msa(result["response"])[1] == "AR"
    assert store.calls == 1  # processed once: no retry


def test_transient_fault_is_retried_then_processed(eager, validate):
    store = FlakyStore(3, OperationalError("database is locked"))
    eager(store)
    result = validate.delay(adult_order_set("TASK05")).get()
    assert result["ack_code"] in {"AA", "AE"}
    assert store.calls == 4
    assert len(store.audit) == 1


def test_persistent_transient_fault_gives_ar_207_not_processed_after_the_budget(eager, validate):
    store = FlakyStore(10_000, OperationalError("connection refused"))
    eager(store)
    result = validate.delay(adult_order_set("TASK06")).get()
    assert result["ack_code"] == "AR"
    fields = msa(result["response"])
    assert fields[2] == "TASK06"
    err = next(s for s in result["response"].split("\r") if s.startswith("ERR|"))
    assert "207^" in err and "not processed, resend" in err
    assert store.calls == 1 + retry_count(SETTINGS)
    assert store.answers == {}  # not stored under the message key: a resend is processed afresh


def test_a_bug_is_retried_only_error_retries_times(eager, validate):
    store = FlakyStore(10_000, KeyError("boom"))
    eager(store)
    result = validate.delay(adult_order_set("TASK07")).get()
    assert result["ack_code"] == "AR"
    assert store.calls == 1 + 2  # error_retries=2


def test_backoff_is_exponential_capped_and_sums_to_the_budget():
    s = Settings(retry_budget=360, retry_initial_delay=1, retry_max_delay=60)
    delays = list(backoff_delays(s))
    assert delays[:7] == [1, 2, 4, 8, 16, 32, 60]
    assert max(delays) == 60
    assert sum(delays) == pytest.approx(360)
    assert sum(delays[:-1]) < 360
    assert sum(backoff_delays(Settings())) >= 300  # the production default rides out 5 minutes
    assert max(backoff_delays(Settings())) < Settings().visibility_timeout


def test_transient_classification():
    assert is_transient(OperationalError("x"))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = ConnectionResetError()
    assert is_transient(wrapped)
    assert not is_transient(KeyError("x"))
    assert not is_transient(ValueError("x"))


def test_reliability_settings_took_effect():
    app = make_app(Settings(visibility_timeout=1234, prefetch_multiplier=9, broker_url="redis://127.0.0.1:1/0"))
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 4  # clamped to 1..4
    # celery #7651: read the value back from the transport the worker will use
    conn = app.connection_for_write()
    assert conn.transport_options["visibility_timeout"] == 1234
    assert conn.transport_options["unacked_restore_interval"] == Settings().unacked_restore_interval
    assert app.tasks[TASK].acks_late is True
    assert app.tasks[TASK].reject_on_worker_lost is True


def test_production_defaults():
    s = Settings()
    # each retry is a new message whose countdown (<= retry_max_delay) the worker holds unacked: the
    # visibility timeout must cover one attempt plus that, not the whole retry budget; and it bounds
    # the wait after a kill -9 to minutes
    assert s.retry_max_delay + 60 <= s.visibility_timeout <= 600
    assert 1 <= s.prefetch_multiplier <= 4
    assert s.retry_budget >= 300
