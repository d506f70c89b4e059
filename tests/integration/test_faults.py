"""Faults with real processes: kill -9 at random points, a Redis restart, the database cut off for ~30 s
(PostgreSQL behind a TCP proxy, SQLite held by `BEGIN EXCLUSIVE`), a message that always crashes the
validator, and SIGTERM mid-batch. After each: messages in = responses out (one per delivery), one audit
record per message, history doses = accepted doses.

Bounded for `make test` (10 kills, 10 s outages: about 1.5 minutes on 2 cores); `make soak` raises the
counts with RXGATE_SOAK_KILLS / RXGATE_TEST_OUTAGE_S. Each test appends its numbers to
$RXGATE_FAULT_REPORT (`make soak`: var/fault-report.jsonl of the repository, which RELIABILITY.md
quotes; otherwise a file under the test session's tmp dir, `$RXGATE_VAR_DIR/fault-report.jsonl`).

Every wait polls for its condition with a generous deadline (`wait_until`); nothing sleeps a fixed time
and then asserts, so a busy machine makes the tests slower, never red.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.builders import adult_order_set, go_order
from tests.integration.conftest import (
    ROOT,
    Procs,
    TcpProxy,
    audit_count,
    audit_per_control_id,
    client,
    fault_hook,
    go_doses,
    health,
    msa2,
    names,
    service_env,
    wait_until,
)

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("RXGATE_SOAK_KILLS", "10"))
OUTAGE_S = float(os.environ.get("RXGATE_TEST_OUTAGE_S", "10"))


def report(name: str, **numbers) -> None:
    # read at the call: the session fixture (tests/conftest.py) points RXGATE_VAR_DIR at a tmp dir
    path = Path(os.environ.get("RXGATE_FAULT_REPORT") or Path(os.environ["RXGATE_VAR_DIR"]) / "fault-report.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps({"test": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **numbers}) + "\n")


def message(cid: str, mrn: str, *, refused: bool = False) -> str:
    """The accepted adult order set, or (refused) the same with a GO dose twice the expected one (AE)."""
    return adult_order_set(cid, mrn=mrn, go=go_order(dose="30") if refused else None)


def hooked_env(base: dict[str, str], tmp_path: Path, **overrides: str) -> dict[str, str]:
    hook = fault_hook(tmp_path / "hook")
    return dict(base, PYTHONPATH=f"{hook}{os.pathsep}{ROOT}", **overrides)


def responses_by_inbound(r, outbound: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for _id, f in r.xrange(outbound):
        out.setdefault(f["inbound_id"], []).append(f)
    return out


def drained(r, env) -> bool:
    """Every inbound entry answered and deleted, none pending."""
    inbound = names(env)[0]
    return r.xlen(inbound) == 0 and r.xpending(inbound, env.get("RXGATE_STREAM_GROUP", "rxgate"))["pending"] == 0


def settle(env, r, n: int, procs: Procs) -> None:
    """Wait for `n` responses and an empty inbound stream, then stop the consumers: a late duplicate (a consumer
    that answers an entry another one took over) is on the outbound stream before anything is counted."""
    outbound = names(env)[1]
    wait_until(lambda: r.xlen(outbound) >= n and drained(r, env), 180, what=f"{n} responses and nothing pending")
    procs.stop_all()


def check_ledger(env, r, sent: dict[str, tuple[str, str]], procs: Procs) -> Counter:
    """Every inbound entry answered exactly once, one audit record per control id, doses = accepted GO orders.

    `sent`: inbound entry id -> (control id, MRN). Stops `procs` (see `settle`). Returns the count of ack codes.
    """
    inbound, outbound, _ = names(env)
    settle(env, r, len(sent), procs)
    got = responses_by_inbound(r, outbound)
    assert set(got) == set(sent), f"missing {set(sent) - set(got)}, unexpected {set(got) - set(sent)}"
    dupes = {k: len(v) for k, v in got.items() if len(v) != 1}
    assert not dupes, f"entries answered more than once: {dupes}"
    acks: Counter = Counter()
    accepted_by_mrn: dict[str, int] = {}
    for inbound_id, (cid, mrn) in sent.items():
        f = got[inbound_id][0]
        assert f["control_id"] == cid == msa2(f["hl7"])
        acks[f["ack_code"]] += 1
        accepted_by_mrn.setdefault(mrn, 0)
        if f["ack_code"] == "AA":
            accepted_by_mrn[mrn] = 1  # a resent message (same key) counts once
    assert r.xpending(inbound, env.get("RXGATE_STREAM_GROUP", "rxgate"))["pending"] == 0
    assert r.xlen(inbound) == 0
    per_cid = audit_per_control_id(env)
    assert per_cid == {cid: 1 for cid, _ in sent.values()}, "one audit record per message"
    doses = go_doses(env, sorted(accepted_by_mrn))
    assert doses == accepted_by_mrn, "history doses = accepted doses"
    return acks


def consumer_pending(r, inbound: str, consumer: str) -> int:
    for c in r.xinfo_consumers(inbound, "rxgate"):
        if c["name"] == consumer:
            return int(c["pending"])
    return 0


def has_consumer(r, inbound: str, consumer: str) -> bool:
    try:
        return any(c["name"] == consumer for c in r.xinfo_consumers(inbound, "rxgate"))
    except redis.ResponseError:  # no group yet
        return False


# --- 1. kill -9 at random points -------------------------------------------------------------------


def test_bridges_killed_at_random_points(env, tmp_path):
    """Two bridges; one of them is SIGKILLed at a random moment, KILLS times, while messages keep arriving.

    The hook makes processing take ~30 ms (half before judging, half after the store commit), so kills
    land before the commit, between the commit and the answer, and in the MULTI/EXEC.
    """
    rng = random.Random(int(os.environ.get("RXGATE_FAULT_SEED", "0")) or None)
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    e = hooked_env(env, tmp_path, RXGATE_TEST_SLOW_MS="30", RXGATE_STREAM_BATCH="10")
    procs = Procs(e)
    inbound, outbound, _ = names(e)
    r = client(e)
    sent: dict[str, tuple[str, str]] = {}
    counter = 0

    def feed(n: int) -> None:
        nonlocal counter
        pipe = r.pipeline(transaction=False)
        batch = []
        for _ in range(n):
            cid, mrn = f"K{counter:05d}", f"KM{counter}"
            pipe.xadd(inbound, {"hl7": message(cid, mrn, refused=counter % 4 == 3)})
            batch.append((cid, mrn))
            if counter % 25 == 0:  # a resend of the same message: the stored answer, counted once
                pipe.xadd(inbound, {"hl7": message(cid, mrn, refused=counter % 4 == 3)})
                batch.append((cid, mrn))
            counter += 1
        for entry_id, item in zip(pipe.execute(), batch, strict=True):
            sent[entry_id] = item

    def consumer(proc) -> str:
        return f"{os.uname().nodename}-{proc.pid}"  # the bridge's consumer name

    def reading() -> list[int]:
        """The bridges that are up and reading (their consumer joined the group): on a busy machine a bridge
        takes seconds to start, and one that is not reading yet would never hold entries."""
        return [i for i, proc in enumerate(bridges) if has_consumer(r, inbound, consumer(proc))]

    up: list[int] = []

    def some_reading() -> bool:
        up[:] = reading()
        return bool(up)

    try:
        feed(40)
        bridges = [procs.start("bridge"), procs.start("bridge")]
        wait_until(lambda: len(reading()) == 2, 120, what="both bridges reading")
        kills = mid_batch = 0
        while kills < KILLS:
            # the victim: a random one of those reading (a bridge restarted by the last round may still start)
            wait_until(some_reading, 120, what="a bridge reading")
            i = rng.choice(up)
            victim = consumer(bridges[i])

            def victim_busy(v=victim) -> bool:
                if consumer_pending(r, inbound, v) > 0:
                    return True
                if r.xlen(inbound) - r.xpending(inbound, "rxgate")["pending"] < 10:
                    feed(30)  # nothing left to read: more work, until the victim holds some
                return False

            wait_until(victim_busy, 120, interval=0.01, what=f"bridge {victim} holding entries")
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment of its work: before, inside or after a commit
            mid_batch += consumer_pending(r, inbound, victim) > 0
            procs.kill9(bridges[i])
            kills += 1
            bridges[i] = procs.start("bridge")
        acks = check_ledger(e, r, sent, procs)
    finally:
        procs.stop_all()
    log_text = procs.logs()
    assert "Traceback" not in log_text
    assert kills >= 20 or KILLS < 20
    assert acks["AA"] and acks["AE"] and set(acks) <= {"AA", "AE"}
    report("bridges_killed_at_random_points", kills=kills, kills_with_entries_pending=mid_batch, seed=seed,
           entries_in=len(sent), responses_out=sum(acks.values()), audit_records=audit_count(e),
           messages=len({c for c, _ in sent.values()}), accepted=acks["AA"], refused=acks["AE"],
           history_doses=sum(go_doses(e, sorted({m for _, m in sent.values()})).values()))
    assert mid_batch >= kills // 2, "most kills must land while entries are pending"


# --- 2. Redis restarted -----------------------------------------------------------------------------


def test_redis_restart_queued_messages_survive_and_clients_reconnect(own_redis, tmp_path):
    from workers.queue.celery_app import make_app
    from workers.settings import Settings

    e = service_env(own_redis.url, tmp_path, RXGATE_VISIBILITY_TIMEOUT="10")
    procs = Procs(e)
    inbound, outbound, _ = names(e)
    r = client(e)
    app = make_app(Settings(broker_url=own_redis.url, visibility_timeout=10))  # the producer, kept across
    sent: dict[str, tuple[str, str]] = {}
    try:
        bridge = procs.start("bridge")
        worker = procs.start("worker", "--concurrency", "1")
        sent[r.xadd(inbound, {"hl7": message("R0000", "RM0")})] = ("R0000", "RM0")
        assert app.send_task("rxgate.validate", args=[message("RC000", "RCM0")]).get(timeout=60)["ack_code"] == "AA"
        wait_until(lambda: r.xlen(outbound) == 1, 60, what="the warm-up answer")
        # freeze the consumers, queue work, restart Redis under them
        for p in (bridge, worker):
            procs.signal_group(p, signal.SIGSTOP)
        for i in range(1, 21):
            sent[r.xadd(inbound, {"hl7": message(f"R{i:04d}", f"RM{i}")})] = (f"R{i:04d}", f"RM{i}")
        before = [app.send_task("rxgate.validate", args=[message(f"RC{i:03d}", f"RCM{i}")]) for i in range(1, 11)]
        own_redis.stop()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(own_redis.url, socket_connect_timeout=1).ping()
        own_redis.start()
        assert r.xlen(inbound) == 20, "the queued entries survived the restart (append-only file)"
        for p in (bridge, worker):
            procs.signal_group(p, signal.SIGCONT)
        # the same producer objects, after the restart
        for i in range(21, 31):
            sent[r.xadd(inbound, {"hl7": message(f"R{i:04d}", f"RM{i}")})] = (f"R{i:04d}", f"RM{i}")
        after = [app.send_task("rxgate.validate", args=[message(f"RC{i:03d}", f"RCM{i}")]) for i in range(11, 21)]
        results = [res.get(timeout=120) for res in before + after]
        assert [x["control_id"] for x in results] == [f"RC{i:03d}" for i in range(1, 21)]
        assert all(x["ack_code"] == "AA" for x in results)
        wait_until(lambda: r.xlen(outbound) >= len(sent), 120, what="stream answers")
        got = responses_by_inbound(r, outbound)
        assert set(got) == set(sent) and all(len(v) == 1 for v in got.values())
        assert bridge.poll() is None and worker.poll() is None, "both reconnected by themselves"
        per_cid = audit_per_control_id(e)
        assert set(per_cid.values()) == {1} and len(per_cid) == len(sent) + 21
        doses = go_doses(e, [m for _, m in sent.values()] + [f"RCM{i}" for i in range(21)])
        assert set(doses.values()) == {1}
    finally:
        procs.stop_all()
    report("redis_restart", stream_in=len(sent), stream_out=sum(len(v) for v in got.values()),
           celery_in=21, celery_results=len(results) + 1, queued_before_restart=30,
           audit_records=audit_count(e), history_doses=sum(doses.values()))


# --- 3. database unavailable ------------------------------------------------------------------------


def _outage(e, procs: Procs, r, cut, restore, label: str) -> None:
    """Warm up, cut the database for OUTAGE_S while messages arrive, restore: nothing answered meanwhile."""
    from workers.queue.celery_app import make_app
    from workers.settings import Settings

    inbound, outbound, _ = names(e)
    app = make_app(Settings(broker_url=e["RXGATE_BROKER_URL"], visibility_timeout=float(e["RXGATE_VISIBILITY_TIMEOUT"])))
    procs.start("bridge")
    procs.start("worker", "--concurrency", "1")
    sent = {r.xadd(inbound, {"hl7": message(f"{label}000", f"{label}M0")}): (f"{label}000", f"{label}M0")}
    assert app.send_task("rxgate.validate", args=[message(f"{label}C00", f"{label}CM0")]).get(timeout=60)
    wait_until(lambda: r.xlen(outbound) == 1, 60, what="the warm-up answer")
    assert health(e).returncode == 0
    cut()
    started = time.monotonic()
    try:
        unhealthy = health(e)
        assert unhealthy.returncode == 1 and "database  FAIL" in unhealthy.stdout, unhealthy.stdout
        for i in range(1, 11):
            sent[r.xadd(inbound, {"hl7": message(f"{label}{i:03d}", f"{label}M{i}")})] = (f"{label}{i:03d}",
                                                                                            f"{label}M{i}")
        tasks = [app.send_task("rxgate.validate", args=[message(f"{label}C{i:02d}", f"{label}CM{i}")])
                 for i in range(1, 6)]
        checks = 0
        while time.monotonic() - started < OUTAGE_S:
            assert r.xlen(outbound) == 1, "answered while the database was down"
            assert not any(t.ready() for t in tasks)
            assert audit_count_safe(e) in (None, 2)
            checks += 1
            time.sleep(1)
        assert health(e).returncode == 1
        assert r.xlen(inbound) == 10  # still queued (pending), none acknowledged
    finally:
        restore()
    results = [t.get(timeout=120) for t in tasks]
    assert [x["ack_code"] for x in results] == ["AA"] * 5
    assert health(e).returncode == 0  # while the service runs: the database is back
    acks = check_ledger_with_celery(e, r, sent, [f"{label}C{i:02d}" for i in range(6)], procs)
    assert acks == Counter(AA=11)
    report(f"database_unavailable_{label}", outage_s=round(time.monotonic() - started, 1), checks=checks,
           stream_in=len(sent), stream_out=sum(acks.values()), celery_in=6, celery_results=6,
           audit_records=audit_count(e), history_doses=sum(go_doses(
               e, [m for _, m in sent.values()] + [f"{label}CM{i}" for i in range(6)]).values()))


def audit_count_safe(e) -> int | None:
    """The audit count, or None when the database cannot be read right now (it is cut off)."""
    if e["RXGATE_DATABASE_URL"].startswith("postgresql"):
        return None
    db = e["RXGATE_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:  # read-only: no migration, no lock
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def check_ledger_with_celery(e, r, sent, celery: list[str], procs: Procs) -> Counter:
    inbound, outbound, _ = names(e)
    settle(e, r, len(sent), procs)
    got = responses_by_inbound(r, outbound)
    assert set(got) == set(sent) and all(len(v) == 1 for v in got.values())
    assert r.xpending(inbound, "rxgate")["pending"] == 0
    per_cid = audit_per_control_id(e)
    assert per_cid == {cid: 1 for cid in [c for c, _ in sent.values()] + celery}
    mrns = [m for _, m in sent.values()]
    assert set(go_doses(e, mrns).values()) == {1}
    return Counter(v[0]["ack_code"] for v in got.values())


def test_postgres_cut_off_behind_a_proxy(redis_url, tmp_path, pg_url):
    """The service talks to PostgreSQL through a loopback proxy; the proxy drops every connection for ~30 s."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    e = service_env(redis_url, tmp_path, RXGATE_DATABASE_URL=proxied, RXGATE_RETRY_BUDGET="300",
                    RXGATE_RETRY_INITIAL_DELAY="0.2", RXGATE_RETRY_MAX_DELAY="2", RXGATE_VISIBILITY_TIMEOUT="10")
    procs = Procs(e)
    try:
        _outage(e, procs, client(e), proxy.cut, proxy.restore, "PG")
        assert proxy.refused > 0, "the service tried to reconnect during the outage"
    finally:
        procs.stop_all()
        proxy.close()
    assert "Traceback" not in procs.logs()


def test_sqlite_locked_by_another_connection(redis_url, tmp_path):
    e = service_env(redis_url, tmp_path, RXGATE_RETRY_BUDGET="300", RXGATE_RETRY_INITIAL_DELAY="0.2",
                    RXGATE_RETRY_MAX_DELAY="2", RXGATE_VISIBILITY_TIMEOUT="10")
    db = e["RXGATE_DATABASE_URL"].removeprefix("sqlite:///")
    holder: list[sqlite3.Connection] = []

    def lock():
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        holder.append(conn)

    def unlock():
        for conn in holder:
            conn.execute("ROLLBACK")
            conn.close()
        holder.clear()

    procs = Procs(e)
    try:
        _outage(e, procs, client(e), lock, unlock, "SL")
    finally:
        unlock()
        procs.stop_all()
    assert "Traceback" not in procs.logs()


# --- 4. a message that always fails -------------------------------------------------------------------


def test_message_that_always_fails_is_dead_lettered_and_the_queue_flows(env, tmp_path):
    from workers.queue.celery_app import make_app
    from workers.settings import Settings

    e = hooked_env(env, tmp_path, RXGATE_TEST_POISON="POISON", RXGATE_ERROR_RETRIES="2",
                   RXGATE_RETRY_BUDGET="30", RXGATE_RETRY_INITIAL_DELAY="0.1", RXGATE_RETRY_MAX_DELAY="0.5")
    procs = Procs(e)
    inbound, outbound, deadletter = names(e)
    r = client(e)
    app = make_app(Settings(broker_url=e["RXGATE_BROKER_URL"], visibility_timeout=3))
    try:
        procs.start("bridge")
        procs.start("worker", "--concurrency", "1")
        sent = {}
        for i in range(11):
            cid = "POISON01" if i == 5 else f"G{i:03d}"
            sent[r.xadd(inbound, {"hl7": message(cid, f"GM{i}")})] = cid
        tasks = {("POISON02" if i == 3 else f"GC{i:02d}"): app.send_task(
            "rxgate.validate", args=[message("POISON02" if i == 3 else f"GC{i:02d}", f"GCM{i}")]) for i in range(7)}
        results = {cid: t.get(timeout=90) for cid, t in tasks.items()}
        wait_until(lambda: r.xlen(outbound) >= len(sent), 60, what="stream answers")
        got = responses_by_inbound(r, outbound)
        assert set(got) == set(sent) and all(len(v) == 1 for v in got.values())
        for inbound_id, cid in sent.items():
            f = got[inbound_id][0]
            if cid.startswith("POISON"):
                assert f["ack_code"] == "AR" and "|207^" in f["hl7"] and "not processed, resend" in f["hl7"]
                assert msa2(f["hl7"]) == cid
            else:
                assert f["ack_code"] == "AA"
        assert results["POISON02"]["ack_code"] == "AR" and "not processed" in results["POISON02"]["response"]
        assert all(x["ack_code"] == "AA" for c, x in results.items() if c != "POISON02")
        wait_until(lambda: r.xlen(deadletter) >= 2, 30, what="two dead letters")
        dead = {f["hl7"].split("|")[9]: f for _id, f in r.xrange(deadletter)}
        assert set(dead) == {"POISON01", "POISON02"}
        for cid, source in (("POISON01", "stream"), ("POISON02", "celery")):
            assert dead[cid]["source"] == source
            assert "RuntimeError" in dead[cid]["reason"] and "injected bug" in dead[cid]["reason"]
            assert int(dead[cid]["attempts"]) == 3  # 1 + RXGATE_ERROR_RETRIES
        per_cid = audit_per_control_id(e)
        assert "POISON01" not in per_cid and "POISON02" not in per_cid  # answered without an audit record
        assert per_cid == {c: 1 for c in [*sent.values(), *tasks] if not c.startswith("POISON")}
        assert r.xpending(inbound, "rxgate")["pending"] == 0
    finally:
        procs.stop_all()
    report("message_that_always_fails", stream_in=len(sent), stream_out=len(got), celery_in=len(tasks),
           celery_results=len(results), dead_letters=r.xlen(deadletter), audit_records=audit_count(e),
           attempts_per_poison=3)


# --- 5. SIGTERM ---------------------------------------------------------------------------------------------


def _started(path: Path) -> set[str]:
    try:
        return {line.split()[1] for line in path.read_text().splitlines() if line.strip()}
    except FileNotFoundError:
        return set()


def test_sigterm_bridge_finishes_in_flight_and_acks_nothing_unfinished(env, tmp_path):
    started_log = tmp_path / "started.log"
    e = hooked_env(env, tmp_path, RXGATE_TEST_SLOW_MS="300", RXGATE_TEST_STARTED_LOG=str(started_log),
                   RXGATE_STREAM_BATCH="20")
    procs = Procs(e)
    inbound, outbound, _ = names(e)
    r = client(e)
    n = 30
    sent = {r.xadd(inbound, {"hl7": message(f"T{i:03d}", f"TM{i}")}): (f"T{i:03d}", f"TM{i}") for i in range(n)}
    try:
        bridge = procs.start("bridge")
        wait_until(lambda: r.xlen(outbound) >= 3, 60, what="three answers")
        # inside a message now: its processing started and it is not answered yet
        wait_until(lambda: len(_started(started_log)) > r.xlen(outbound), 60, interval=0.01, what="a message in flight")
        os.killpg(bridge.pid, signal.SIGTERM)
        assert bridge.wait(30) == 0
        started = _started(started_log)
        answered = {f["control_id"] for _id, f in r.xrange(outbound)}
        audited = set(audit_per_control_id(e))
        assert started == answered == audited, "every started message finished: stored and answered"
        assert 3 <= len(answered) < n
        pending = r.xpending(inbound, "rxgate")["pending"]
        assert r.xlen(inbound) == n - len(answered)  # answered entries acked and deleted, the rest kept
        assert pending <= n - len(answered)  # read but unfinished: left pending for the next consumer
        stopped_with = len(answered)
        procs.start("bridge")
        acks = check_ledger(e, r, sent, procs)
    finally:
        procs.stop_all()
    assert acks == Counter(AA=n)
    report("sigterm_bridge", messages=n, answered_before_stop=stopped_with, started_before_stop=len(started),
           responses_out=sum(acks.values()), audit_records=audit_count(e))


def test_sigterm_celery_worker_finishes_in_flight(env, tmp_path):
    from workers.queue.celery_app import make_app
    from workers.settings import Settings

    started_log = tmp_path / "started.log"
    e = hooked_env(env, tmp_path, RXGATE_TEST_SLOW_MS="600", RXGATE_TEST_STARTED_LOG=str(started_log))
    procs = Procs(e)
    app = make_app(Settings(broker_url=e["RXGATE_BROKER_URL"], visibility_timeout=3))
    n = 12
    try:
        worker = procs.start("worker", "--concurrency", "2")
        tasks = [app.send_task("rxgate.validate", args=[message(f"W{i:03d}", f"WT{i}")]) for i in range(n)]
        wait_until(lambda: sum(t.ready() for t in tasks) >= 2, 60, what="two results")
        wait_until(lambda: len(_started(started_log)) > sum(t.ready() for t in tasks), 10, what="a task in flight")
        in_flight = _started(started_log) - {f"W{i:03d}" for i, t in enumerate(tasks) if t.ready()}
        worker.send_signal(signal.SIGTERM)  # the main process, as a supervisor or `docker stop` does
        assert worker.wait(60) == 0
        audited = set(audit_per_control_id(e))
        assert in_flight and in_flight <= audited, "the tasks running at SIGTERM were finished"
        assert _started(started_log) == audited, "nothing half-done"
        done_before = len(audited)
        assert done_before < n
        procs.start("worker", "--concurrency", "2")
        results = [t.get(timeout=90) for t in tasks]
    finally:
        procs.stop_all()
    assert [x["control_id"] for x in results] == [f"W{i:03d}" for i in range(n)]
    assert audit_per_control_id(e) == {f"W{i:03d}": 1 for i in range(n)}
    assert set(go_doses(e, [f"WT{i}" for i in range(n)]).values()) == {1}
    report("sigterm_worker", messages=n, in_flight_at_sigterm=len(in_flight), finished_before_stop=done_before,
           results=len(results), audit_records=audit_count(e))

