"""workers/metrics.py: what is counted, multiprocess aggregation, queue gauges, the /metrics route.

Counting is checked in subprocesses with their own multiprocess directory: the pytest process may
share its directory (var/metrics) with other test runs, so its sums are not ours alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fakeredis
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.paths import ROOT
from workers import metrics
from workers.settings import Settings
from workers.store import open_sql_store


def samples(body: bytes | str) -> dict[tuple[str, tuple], float]:
    text = body.decode() if isinstance(body, bytes) else body
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_py(code: str, tmp_path: Path, **env_extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RXGATE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PYTHONPATH=str(ROOT), RXGATE_VAR_DIR=str(tmp_path / "var"), RXGATE_TIMEZONE="America/New_York",
               RXGATE_BROKER_URL="redis://127.0.0.1:1/0", **env_extra)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


PROCESS = """
    from tests.builders import adult_order_set, go_order
    from tests.fakes import FlakyStore, OperationalError
    from validator import InMemoryStore
    from workers import metrics
    from workers.bootstrap import bootstrap
    from workers.settings import Settings
    import fakeredis
    from workers.queue.bridge import Bridge, ensure_group

    print(metrics.configure())  # what an entry point (rxgate worker, bridge, ...) does first
    service = bootstrap(Settings(), store=InMemoryStore())
    ok = adult_order_set("M0001", mrn="MM1")
    service.process(ok)
    service.process(ok)  # redelivery: the stored answer
    service.process(adult_order_set("M0002", mrn="MM2", go=go_order(dose="40")))  # a dose far over: AE
    service.process("not hl7 at all")  # AR hl7.structure

    # the bridge: one transient failure then success (a retry), and one entry given up (a dead letter)
    s = Settings(stream_prefix="t", retry_budget=0.05, retry_initial_delay=0.01, retry_max_delay=0.02,
                 stream_block_ms=10)
    client = fakeredis.FakeRedis()
    bridge = Bridge(bootstrap(s, store=FlakyStore(1, OperationalError("down"))), client, s, consumer="c")
    ensure_group(client, bridge.streams)
    client.xadd("t:inbound", {"hl7": adult_order_set("M0003", mrn="MM3")})
    client.xadd("t:inbound", {"nohl7": "x"})
    bridge.step()
"""


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """Two processes counting into one multiprocess directory, a third one scraping."""
    tmp = tmp_path_factory.mktemp("metrics")
    first = run_py(PROCESS, tmp)
    run_py(PROCESS, tmp)
    assert Path(first.strip()) == (tmp / "var" / "metrics").resolve()  # default: <var_dir>/metrics
    body = run_py("""
        import sys
        from workers import metrics
        metrics.configure()  # the audit API's start
        body, ctype = metrics.metrics_response()
        sys.stdout.write(ctype + "\\n" + body.decode())
    """, tmp)
    ctype, _, text = body.partition("\n")
    return ctype, samples(text)


def test_messages_counted_by_outcome_summed_over_processes(counted):
    ctype, s = counted
    assert ctype.startswith("text/plain; version=0.0.4")
    assert s[("rxgate_messages_total", (("outcome", "AA"), ("redelivered", "false")))] == 2 * 2  # M0001, M0003
    assert s[("rxgate_messages_total", (("outcome", "AA"), ("redelivered", "true")))] == 2
    assert s[("rxgate_messages_total", (("outcome", "AE"), ("redelivered", "false")))] == 2
    # AR: "not hl7 at all" and the dead-lettered bridge entry is not a processed message (not counted here)
    assert s[("rxgate_messages_total", (("outcome", "AR"), ("redelivered", "false")))] == 2


def test_findings_by_rule_errors_and_warnings_only(counted):
    _, s = counted
    assert s[("rxgate_findings_total", (("rule", "go.dose"), ("severity", "error")))] == 2
    assert s[("rxgate_findings_total", (("rule", "hl7.structure"), ("severity", "error")))] == 2
    assert not any(k[0] == "rxgate_findings_total" and ("severity", "info") in k[1] for k in s)


def test_latency_histogram(counted):
    _, s = counted
    # each Service.process call: 4 direct + the bridge's 2 attempts (1 failed, not observed) = 5 per process
    assert s[("rxgate_processing_seconds_count", ())] == 2 * 5
    assert s[("rxgate_processing_seconds_bucket", (("le", "+Inf"),))] == 2 * 5
    assert 0 < s[("rxgate_processing_seconds_sum", ())] < 60


def test_retries_and_dead_letters(counted):
    _, s = counted
    assert s[("rxgate_retries_total", (("kind", "transient"), ("source", "bridge")))] == 2
    assert s[("rxgate_dead_letters_total", (("source", "bridge"),))] == 2
    assert ("rxgate_retries_total", (("kind", "error"), ("source", "bridge"))) not in s


def test_metrics_dir_off_gives_per_process_metrics(tmp_path):
    out = run_py("""
        from workers import metrics
        print(metrics.configure())
    """, tmp_path, RXGATE_METRICS_DIR="off")
    assert out.strip() == "None"
    assert not (tmp_path / "var" / "metrics").exists()


def test_observe_never_raises():
    class Broken:
        @property
        def result(self):
            raise RuntimeError("boom")

    metrics.observe([Broken()], 0.01)  # swallowed: metrics never break processing
    metrics.observe(None, 0.01)


# --- queue gauges --------------------------------------------------------------------------------


def test_queue_gauges_read_live_from_redis():
    r = fakeredis.FakeRedis()
    for i in range(3):
        r.xadd("q:inbound", {"hl7": f"m{i}"})
    r.xgroup_create("q:inbound", "rxgate", id="0")
    r.xreadgroup("rxgate", "c", {"q:inbound": ">"}, count=2)  # 2 read, not answered
    r.lpush("rxgate.orders", "t1", "t2", "t3", "t4")
    r.xadd("q:deadletter", {"reason": "x"})
    collector = metrics.QueueCollector(Settings(stream_prefix="q"), client=r)
    body, _ = metrics.metrics_response(queue=collector)
    s = samples(body)
    assert s[("rxgate_broker_up", ())] == 1
    assert s[("rxgate_queue_depth", (("queue", "q:inbound"),))] == 3
    assert s[("rxgate_queue_depth", (("queue", "rxgate.orders"),))] == 4
    assert s[("rxgate_queue_pending", (("queue", "q:inbound"),))] == 2
    assert s[("rxgate_deadletter_depth", ())] == 1


def test_queue_gauges_without_a_consumer_group_report_zero_pending():
    r = fakeredis.FakeRedis()
    r.xadd("q2:inbound", {"hl7": "m"})
    s = samples(metrics.metrics_response(queue=metrics.QueueCollector(Settings(stream_prefix="q2"), client=r))[0])
    assert s[("rxgate_queue_depth", (("queue", "q2:inbound"),))] == 1
    assert s[("rxgate_queue_pending", (("queue", "q2:inbound"),))] == 0


def test_broker_down_still_answers_with_broker_up_0():
    import redis

    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    body, _ = metrics.metrics_response(queue=metrics.QueueCollector(Settings(), client=down))
    s = samples(body)
    assert s[("rxgate_broker_up", ())] == 0
    assert not any(k[0] == "rxgate_queue_depth" for k in s)
    assert ("rxgate_processing_seconds_count", ()) in s  # the counters are still there


# --- the route -------------------------------------------------------------------------------------


def test_mount_metrics_adds_an_open_route(monkeypatch):
    monkeypatch.setattr(metrics, "_queue_collector", metrics.QueueCollector(Settings(), client=fakeredis.FakeRedis()))
    app = FastAPI()
    metrics.mount_metrics(app)
    metrics.mount_metrics(app)  # idempotent
    assert sum(1 for r in app.router.routes if getattr(r, "path", "") == "/metrics") == 1
    resp = TestClient(app).get("/metrics")  # no credentials: /metrics is open (docs/interfaces.md §4)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE rxgate_messages_total counter" in resp.text
    assert "rxgate_broker_up 1.0" in resp.text


def test_audit_api_serves_metrics_without_a_token(tmp_path, monkeypatch):
    audit_api = pytest.importorskip("workers.http.app")
    monkeypatch.setattr(metrics, "_queue_collector", metrics.QueueCollector(Settings(), client=fakeredis.FakeRedis()))
    url = f"sqlite:///{tmp_path / 'a.db'}"
    open_sql_store(url, create=True).dispose()  # the API reads a log the service made, never makes one
    app = audit_api.create_app(url, "0" * 64)
    client = TestClient(app)
    resp = client.get("/metrics")
    assert resp.status_code == 200 and "rxgate_processing_seconds" in resp.text
    assert client.get("/audit/verify").status_code == 401  # the rest stays closed


def test_reset_removes_only_files_of_dead_processes(tmp_path):
    out = run_py("""
        import os, subprocess, sys
        from pathlib import Path
        from workers import metrics
        d = Path(metrics.configure())
        dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
        (d / f"counter_{dead.pid}.db").write_bytes(b"")
        (d / f"counter_{os.getppid()}.db").write_bytes(b"")  # a live process (our parent)
        (d / "notes.txt").write_text("x")
        n = metrics.reset_multiproc_dir()
        left = {p.name for p in d.iterdir()}
        print(n, f"counter_{dead.pid}.db" not in left and {f"counter_{os.getppid()}.db", "notes.txt"} <= left)
    """, tmp_path)
    assert out.split() == ["1", "True"]


def test_mllp_counters_have_the_documented_labels(tmp_path):
    """The MLLP listener's counters (counted through `_safe` wrappers, which would hide a label mistake)."""
    out = run_py("""
        import sys
        from workers import metrics
        metrics.mllp_commit("CA", True)
        metrics.mllp_commit("CR", False)
        metrics.mllp_peer_ack("CE")
        metrics.mllp_resend_joined()
        for outcome in ("delivered", "retried", "retried", "refused", "given_up"):
            metrics.mllp_reply(outcome)
        metrics.mllp_tls_failure()
        body, _ = metrics.metrics_response()
        sys.stdout.write(body.decode())
    """, tmp_path, RXGATE_METRICS_DIR="off")
    s = samples(out)
    assert s[("rxgate_mllp_commit_acks_total", (("code", "CA"), ("sent", "true")))] == 1
    assert s[("rxgate_mllp_commit_acks_total", (("code", "CR"), ("sent", "false")))] == 1
    assert s[("rxgate_mllp_peer_acks_total", (("code", "CE"),))] == 1
    assert s[("rxgate_mllp_resends_joined_total", ())] == 1
    assert s[("rxgate_mllp_replies_total", (("outcome", "retried"),))] == 2
    assert s[("rxgate_mllp_replies_total", (("outcome", "given_up"),))] == 1
    assert s[("rxgate_mllp_tls_handshake_failures_total", ())] == 1
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for name in ("rxgate_mllp_commit_acks_total", "rxgate_mllp_peer_acks_total", "rxgate_mllp_resends_joined_total",
                 "rxgate_mllp_replies_total", "rxgate_mllp_tls_handshake_failures_total"):
        assert f"`{name}`" in docs
