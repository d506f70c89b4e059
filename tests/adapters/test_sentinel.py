"""Redis Sentinel settings (workers/queue/sentinel.py) and their use in the Celery app (docs/scale-out.md)."""

from __future__ import annotations

import pytest

from workers.queue import sentinel
from workers.queue.celery_app import make_app
from workers.settings import Settings


def test_off_by_default_celery_uses_the_broker_url():
    s = Settings(broker_url="redis://10.1.1.1:6379/0")
    assert not sentinel.enabled(s)
    app = make_app(s)
    assert app.conf.broker_url == "redis://10.1.1.1:6379/0"
    assert "master_name" not in app.conf.broker_transport_options


def test_sentinels_parsed_with_default_port():
    s = Settings(broker_sentinels=" 10.0.0.1:26380, sentinel://10.0.0.2 ,,redis-s3:26379 ")
    assert sentinel.sentinels(s) == [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("redis-s3", 26379)]
    with pytest.raises(ValueError, match="bad port"):
        sentinel.sentinels(Settings(broker_sentinels="h1:abc"))


def test_celery_gets_the_sentinel_transport_and_options():
    s = Settings(broker_url="redis://ignored:6379/0", broker_sentinels="h1:26379,h2:26380",
                 broker_sentinel_master="rx", broker_sentinel_db=2, broker_sentinel_password="p@ss",
                 broker_sentinel_sentinel_password="spw", visibility_timeout=120)
    app = make_app(s)
    assert app.conf.broker_url == "sentinel://:p%40ss@h1:26379/2;sentinel://:p%40ss@h2:26380/2"
    assert app.conf.result_backend == app.conf.broker_url
    for options in (app.conf.broker_transport_options, app.conf.result_backend_transport_options):
        assert options["master_name"] == "rx"
        assert options["sentinel_kwargs"]["password"] == "spw"
        assert options["visibility_timeout"] == 120  # celery #7651: kept next to the sentinel options
    with app.connection_for_write() as conn:
        assert type(conn.transport).__name__ == "SentinelTransport"
