"""Part 2 — the queue path, and part 4 — worker memory.

On a private redis-server and a real store (SQLite file, PostgreSQL database), with N = 1, 2 worker
processes:
  (a) `rxgate.validate` through Celery: a worker `celery -A bench.celery_bench worker -c N` (the service's
      app and settings: acks_late, prefetch 1, results in Redis); the producer (this process) sends every
      task, throughput = tasks / (last result's `date_done` - first send);
  (b) the stream bridge: N `python -m workers.cli bridge` processes in one consumer group; the producer
      XADDs (pipelined by 100) to `<prefix>:inbound`, a reader thread takes the responses off
      `<prefix>:outbound`; throughput = entries / (last response seen - first XADD). `bridge` is the
      default (the entries of a read written in one transaction, RXGATE_STORE_BATCH=100);
      `bridge_unbatched` the same with RXGATE_STORE_BATCH=1 (one transaction per entry, as (c) does);
  (c) in-process: `process_text` + audit commit on the same store, one process, no queue;
  (d) the transport alone, same N: a no-op Celery task (`bench.noop`), resp. `bench.stream_echo`
      consumers doing the bridge's Redis work without processing.
ideal = 1 / (1/(d) + 1/(N x (c))); efficiency = measured / ideal, with (c) measured again right before each
run (the machine is shared and its speed drifts). Also reported, steadier on a shared machine: CPU
milliseconds per message of every process involved (producer, redis-server, workers; not the PostgreSQL
server), and CPU efficiency = (CPU of (d) + CPU of (c)) / CPU of the path.
Latency: the same paths fed at a steady 50 % and 90 % of their measured maximum; latency of one message
= Celery result `date_done` - send time, resp. response seen on outbound - XADD time.
Every message is unique (new control id, new patient: a day-1 GO order set, answered AA), so no
answer comes from the dedupe table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis

from . import corpus
from .infra import Infra
from .timing import percentile

b = corpus.b
REPO = corpus.REPO
QUEUE_MODULES = ("workers.queue.celery_app", "workers.queue.tasks", "workers.queue.bridge", "workers.store")


def queue_code_ready() -> tuple[bool, str]:
    import importlib

    for name in QUEUE_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            return False, f"{name}: {type(exc).__name__}: {exc}"
    return True, ""


def messages(tag: str, count: int) -> list[str]:
    """`count` distinct accepted day-1 GO order sets (26 segments), each a new patient and control id."""
    return [b.adult_order_set(f"{tag}{i:07d}", mrn=f"{tag}{i:07d}") for i in range(count)]


# --- processes ------------------------------------------------------------------------------------


class Procs:
    """Worker processes started by the bench; stopped by their own pids."""

    def __init__(self, infra: Infra, env: dict[str, str]):
        self.infra = infra
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.infra.tmp / f"{name}-{uuid.uuid4().hex[:6]}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, *args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, timeout: float = 20) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: only the processes it started
                except ProcessLookupError:
                    pass
                p.wait(5)
        self.procs = []

    def rss_mb(self) -> list[float]:
        """RSS of every worker process: Celery pool children, or the bridge processes themselves."""
        out = []
        for p in self.procs:
            try:
                proc = psutil.Process(p.pid)
                children = proc.children(recursive=True)
                for c in children or [proc]:
                    out.append(round(c.memory_info().rss / 2**20, 1))
            except psutil.NoSuchProcess:
                pass
        return out


class CpuMeter:
    """CPU seconds (user + system) of the producer (this process), redis-server and the worker
    processes (Celery main + pool children, or the stream consumers). On a shared, noisy machine
    CPU per message is steadier than wall-clock throughput; the PostgreSQL server's CPU is not counted."""

    def __init__(self, procs: Procs):
        self.procs = procs
        self.me = psutil.Process()
        rp = procs.infra.redis_proc
        self.redis = psutil.Process(rp.pid) if rp is not None else None

    def _workers(self) -> list[psutil.Process]:
        out = []
        for p in self.procs.procs:
            try:
                main = psutil.Process(p.pid)
                out += [main, *main.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {"producer": self._cpu([self.me]), "redis": self._cpu([self.redis] if self.redis else []),
                "workers": self._cpu(self._workers())}

    @staticmethod
    def per_message_ms(before: dict, after: dict, count: int) -> dict[str, float]:
        out = {}
        for role in after:
            out[role] = round(sum(v - before[role].get(pid, 0.0) for pid, v in after[role].items()) / count * 1e3, 3)
        out["total"] = round(sum(out.values()), 3)
        return out


def worker_env(redis_url: str, db_url: str, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RXGATE_BROKER_URL=redis_url, RXGATE_DATABASE_URL=db_url, RXGATE_TIMEZONE="UTC",
        RXGATE_STREAM_PREFIX=prefix, RXGATE_LOG_LEVEL=os.environ.get("RXGATE_BENCH_LOG_LEVEL", "INFO"),
        RXGATE_VAR_DIR=str(Path(db_url.removeprefix("sqlite:///")).parent) if db_url.startswith("sqlite") else "var",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


# --- Celery ---------------------------------------------------------------------------------------


class CeleryPath:
    """Celery on Redis, or with `amqp_url` on RabbitMQ (quorum queue, publisher confirms; results still in
    the Redis at `redis_url`, as the service keeps them)."""

    def __init__(self, infra: Infra, redis_url: str, db_url: str, n: int, amqp_url: str | None = None):
        from workers.queue.celery_app import make_app
        from workers.settings import Settings

        self.n = n
        env = worker_env(redis_url, db_url, "benchrx")
        if amqp_url:
            env.update(RXGATE_BROKER_URL=amqp_url, RXGATE_STREAM_URL=redis_url)
        self.procs = Procs(infra, env)
        self.app = make_app(Settings(broker_url=amqp_url or redis_url, stream_url=redis_url if amqp_url else "",
                                     database_url=db_url, timezone="UTC"))

    def start(self) -> None:
        self.procs.spawn(["-m", "celery", "-A", "bench.celery_bench", "worker", "-Q", "rxgate.orders", "-c",
                          str(self.n), "-l", self.procs.env["RXGATE_LOG_LEVEL"], "-n",
                          f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"], "celery")

    def stop(self) -> None:
        self.procs.stop()
        self.app.close()

    def run(self, task: str, texts: list[str], rate: float | None = None, timeout: float = 600) -> dict[str, Any]:
        """Send every text (as fast as possible, or paced at `rate`/s); wait for all results."""
        meter = CpuMeter(self.procs)
        cpu0 = meter.snapshot()
        sent: list[tuple[str, float]] = []
        t0 = time.time()
        for i, text in enumerate(texts):
            if rate:
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            now = time.time()
            r = self.app.send_task(task, args=[text])
            sent.append((r.id, now))
        done: dict[str, dict] = {}
        backend = self.app.backend
        for task_id, meta in backend.get_many({i for i, _ in sent}, timeout=timeout, interval=0.05):
            done[task_id] = meta
        ends = []
        latencies = []
        acks: dict[str, int] = {}
        for task_id, t_sent in sent:
            meta = done[task_id]
            d = meta.get("date_done")
            end = _ts(d)
            ends.append(end)
            latencies.append(end - t_sent)
            res = meta.get("result")
            ack = res.get("ack_code", "?") if isinstance(res, dict) else meta.get("status", "?")
            acks[ack] = acks.get(ack, 0) + 1
        out = _summary(len(texts), sent[0][1], max(ends), latencies, acks)
        out["cpu_ms_per_message"] = CpuMeter.per_message_ms(cpu0, meter.snapshot(), len(texts))
        return out


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _summary(count: int, first: float, last: float, latencies: list[float], acks: dict[str, int]) -> dict[str, Any]:
    lat = sorted(latencies)
    elapsed = max(last - first, 1e-9)
    return {
        "messages": count,
        "seconds": round(elapsed, 3),
        "per_second": round(count / elapsed, 1),
        "latency_p50_ms": round(percentile(lat, 50) * 1e3, 2),
        "latency_p99_ms": round(percentile(lat, 99) * 1e3, 2),
        "ack_codes": acks,
    }


# --- streams --------------------------------------------------------------------------------------


class StreamPath:
    """N consumers (the bridge, or the echo consumer) on `<prefix>:inbound`; responses on `<prefix>:outbound`."""

    def __init__(self, infra: Infra, redis_url: str, db_url: str, n: int, echo: bool, env: dict[str, str] | None = None):
        self.n = n
        self.echo = echo
        self.redis_url = redis_url
        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.procs = Procs(infra, {**worker_env(redis_url, db_url, self.prefix), **(env or {})})
        self.client = redis.Redis.from_url(redis_url)

    def start(self) -> None:
        for i in range(self.n):
            if self.echo:
                self.procs.spawn(["-m", "bench.stream_echo", self.redis_url, self.prefix, "rxgate", f"echo{i}"], "echo")
            else:
                self.procs.spawn(["-m", "workers.cli", "bridge"], "bridge")

    def stop(self) -> None:
        self.procs.stop()
        self.client.close()

    def run(self, texts: list[str], rate: float | None = None, timeout: float = 600) -> dict[str, Any]:
        inbound, outbound = f"{self.prefix}:inbound", f"{self.prefix}:outbound"
        last = self.client.xrevrange(outbound, count=1)
        start_id = last[0][0] if last else b"0-0"
        seen: dict[bytes, float] = {}
        acks: dict[str, int] = {}
        expected = len(texts)
        finished = threading.Event()

        def collect() -> None:
            reader = redis.Redis.from_url(self.redis_url)
            cursor = start_id
            deadline = time.time() + timeout
            while len(seen) < expected and time.time() < deadline:
                reply = reader.xread({outbound: cursor}, count=1000, block=500)
                now = time.time()
                for _s, items in reply or []:
                    for entry_id, fields in items:
                        cursor = entry_id
                        seen[fields[b"inbound_id"]] = now
                        ack = fields.get(b"ack_code", b"?").decode()
                        acks[ack] = acks.get(ack, 0) + 1
            reader.close()
            finished.set()

        meter = CpuMeter(self.procs)
        cpu0 = meter.snapshot()
        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        sent: list[tuple[bytes, float]] = []
        t0 = time.time()
        if rate:
            for i, text in enumerate(texts):
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                now = time.time()
                sent.append((self.client.xadd(inbound, {"hl7": text}), now))
        else:
            for lo in range(0, len(texts), 100):
                pipe = self.client.pipeline(transaction=False)
                for text in texts[lo:lo + 100]:
                    pipe.xadd(inbound, {"hl7": text})
                now = time.time()
                sent.extend((i, now) for i in pipe.execute())
        finished.wait(timeout)
        thread.join(5)
        missing = [i for i, _ in sent if i not in seen]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(sent)} stream entries got no response within {timeout} s")
        latencies = [seen[i] - t for i, t in sent]
        out = _summary(len(texts), sent[0][1], max(seen[i] for i, _ in sent), latencies, acks)
        out["cpu_ms_per_message"] = CpuMeter.per_message_ms(cpu0, meter.snapshot(), len(texts))
        return out


# --- (c) in-process ---------------------------------------------------------------------------------


def in_process(db_url: str, texts: list[str]) -> dict[str, Any]:
    from validator import load_protocol, process_text
    from workers.store import open_sql_store

    store = open_sql_store(db_url, create=True)
    protocol = load_protocol()
    acks: dict[str, int] = {}
    try:
        for text in texts[:5]:  # warm-up (engine, first connection, statement caches)
            process_text(text, store, protocol, tz=b.UTC)
        t0, c0 = time.perf_counter(), time.process_time()
        for text in texts[5:]:
            out = process_text(text, store, protocol, tz=b.UTC)
            acks[out[0].ack_code] = acks.get(out[0].ack_code, 0) + 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        store.dispose()
    n = len(texts) - 5
    return {"messages": n, "seconds": round(elapsed, 3), "per_second": round(n / elapsed, 1),
            "mean_ms": round(elapsed / n * 1e3, 3), "cpu_ms_per_message": round(cpu / n * 1e3, 3), "ack_codes": acks}


def _in_process_worker(db_url: str, texts: list[str], barrier, results) -> None:
    from validator import load_protocol, process_text
    from workers.store import open_sql_store

    store = open_sql_store(db_url, create=True)
    protocol = load_protocol()
    try:
        for text in texts[:5]:
            process_text(text, store, protocol, tz=b.UTC)
        barrier.wait()
        t0, c0 = time.time(), time.process_time()
        for text in texts[5:]:
            process_text(text, store, protocol, tz=b.UTC)
        results.put((t0, time.time(), time.process_time() - c0, len(texts) - 5))
    finally:
        store.dispose()


def in_process_together(db_url: str, n: int, tag: str, count: int) -> dict[str, Any]:
    """(c) in N processes at once on the same store, no queue: what this machine gives N workers when
    they share its two cores (and the chain's append lock). Reported beside the issue's ideal, which
    assumes N x (c): a second busy process slows the first here (BENCHMARKS.md)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_in_process_worker, args=(db_url, messages(f"{tag}{i}", count + 5), barrier, results))
             for i in range(n)]
    for proc in procs:
        proc.start()
    done = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    start, end = min(d[0] for d in done), max(d[1] for d in done)
    total = sum(d[3] for d in done)
    return {"processes": n, "messages": total, "seconds": round(end - start, 3),
            "per_second": round(total / (end - start), 1),
            "cpu_ms_per_message": round(sum(d[2] for d in done) / total * 1e3, 3)}


# --- orchestration ------------------------------------------------------------------------------------


def ideal(transport: float, work: float, n: int) -> float:
    return 1 / (1 / transport + 1 / (n * work))


def run_queue(infra: Infra, cfg: dict[str, Any], log=print) -> dict[str, Any]:
    ready, why = queue_code_ready()
    if not ready:
        return {"measured": False, "reason": f"queue code not importable: {why}"}
    redis_url = infra.start_redis()
    stores: dict[str, Callable[[], str]] = {}
    if "sqlite" in cfg["queue_stores"]:
        stores["sqlite"] = infra.new_sqlite_url
    if "postgresql" in cfg["queue_stores"]:
        if infra.pg_available():
            stores["postgresql"] = infra.new_pg_db
        else:
            log("  queue: PostgreSQL not reachable: not measured on it")
    count = cfg["queue_messages"]
    warm = cfg["queue_warmup"]
    ns = cfg["queue_n"]
    out: dict[str, Any] = {"measured": True, "redis": redis_url.rsplit("/", 1)[0].split("@")[-1],
                           "messages_per_run": count, "transport": {}, "stores": {}}
    flush = redis.Redis.from_url(redis_url)
    seq = iter(range(1, 10**6))

    def tag() -> str:
        return f"Q{next(seq):03d}"

    amqp_url = cfg.get("amqp_url") or None  # RXGATE_BENCH_AMQP_URL: the celery_amqp path (RabbitMQ)
    paths = [p for p in cfg["queue_paths"] if p != "celery_amqp" or amqp_url]
    if "celery_amqp" in cfg["queue_paths"] and not amqp_url:
        log("  queue: celery_amqp needs RXGATE_BENCH_AMQP_URL (a RabbitMQ vhost): not measured")

    def celery_noop(n: int, broker: str | None) -> dict[str, Any]:
        cp = CeleryPath(infra, redis_url, infra.new_sqlite_url(), n, amqp_url=broker)
        cp.start()
        try:
            cp.run("bench.noop", ["x"] * max(warm, 20), timeout=120)
            return cp.run("bench.noop", [f"x{i}" for i in range(count)])
        finally:
            cp.stop()

    # (d) transport alone, independent of the store
    for n in ns:
        flush.flushdb()
        transport: dict[str, Any] = {}
        if any(p in paths for p in ("celery",)) or not paths:
            transport["celery_noop"] = celery_noop(n, None)
        if "celery_amqp" in paths:
            transport["celery_amqp_noop"] = celery_noop(n, amqp_url)
        if any(p.startswith("bridge") for p in paths):
            sp = StreamPath(infra, redis_url, infra.new_sqlite_url(), n, echo=True)
            sp.start()
            try:
                sp.run(["x"] * max(warm, 20), timeout=120)
                transport["stream_echo"] = sp.run(messages(tag(), count))
            finally:
                sp.stop()
        out["transport"][str(n)] = transport
        log(f"  queue transport N={n}: " + ", ".join(f"{k} {v['per_second']}/s" for k, v in transport.items()))

    for store_name, new_url in stores.items():
        db_url = new_url()
        res: dict[str, Any] = {"in_process": in_process(db_url, messages(tag(), cfg["in_process_messages"] + 5))}
        log(f"  queue {store_name}: in-process validate+commit {res['in_process']['per_second']}/s")
        for n in ns:
            row: dict[str, Any] = {}
            transport = out["transport"][str(n)]
            together = in_process_together(db_url, n, tag(), cfg["in_process_messages"]) if n > 1 else None
            for path in paths:
                # (c) again right before this run: the machine is shared, its speed drifts
                adjacent = in_process(db_url, messages(tag(), cfg["in_process_messages"] + 5))
                c = adjacent["per_second"]
                flush.flushdb()
                runner: Any = (CeleryPath(infra, redis_url, db_url, n) if path == "celery"
                               else CeleryPath(infra, redis_url, db_url, n, amqp_url=amqp_url) if path == "celery_amqp"
                               else StreamPath(infra, redis_url, db_url, n, echo=False,
                                               env={"RXGATE_STORE_BATCH": "1"} if path == "bridge_unbatched" else None))
                runner.start()
                try:
                    go = (lambda texts, rate=None, r=runner: r.run("rxgate.validate", texts, rate)) \
                        if path.startswith("celery") else (lambda texts, rate=None, r=runner: r.run(texts, rate))
                    go(messages(tag(), warm))
                    maxrate = go(messages(tag(), count))
                    floor = transport[{"celery": "celery_noop", "celery_amqp": "celery_amqp_noop"}.get(path, "stream_echo")]
                    best = ideal(floor["per_second"], c, n)
                    t_cpu = floor["cpu_ms_per_message"]["total"]
                    ideal_cpu = t_cpu + adjacent["cpu_ms_per_message"]
                    entry = {"in_process": adjacent, "max": maxrate, "ideal_per_second": round(best, 1),
                             "efficiency": round(maxrate["per_second"] / best, 3),
                             # the ideal with (c) of N processes measured together instead of N x (c)
                             "in_process_together": together,
                             "efficiency_vs_together": round(maxrate["per_second"] / (
                                 1 / (1 / floor["per_second"] + 1 / (together["per_second"] if together else c))), 3),
                             "cpu_ideal_ms_per_message": round(ideal_cpu, 3),
                             "cpu_efficiency": round(ideal_cpu / maxrate["cpu_ms_per_message"]["total"], 3),
                             "latency": {}}
                    if n in cfg["latency_n"]:
                        for load in (0.5, 0.9):
                            rate = maxrate["per_second"] * load
                            k = max(20, int(rate * cfg["latency_seconds"]))
                            r = go(messages(tag(), k), rate)
                            entry["latency"][f"{int(load * 100)}%"] = {"rate": round(rate, 1), **r}
                    if cfg.get("memory_messages") and n == cfg["memory_n"] and store_name == cfg["memory_store"] \
                            and path in cfg["memory_paths"]:
                        entry["memory"] = memory_run(runner, go, cfg, tag)
                finally:
                    runner.stop()
                row[path] = entry
                lat = entry["latency"].get("90%", {})
                log(f"  queue {store_name} N={n} {path}: {maxrate['per_second']}/s (c {c}/s), ideal "
                    f"{entry['ideal_per_second']}/s, efficiency {entry['efficiency']:.0%}, CPU efficiency "
                    f"{entry['cpu_efficiency']:.0%}" + (f", p99 at 90% {lat.get('latency_p99_ms')} ms" if lat else ""))
            res[str(n)] = row
        out["stores"][store_name] = res
    flush.close()
    return out


def memory_run(runner: Any, go: Callable, cfg: dict[str, Any], tag: Callable[[], str]) -> dict[str, Any]:
    """RSS of every worker process after warm-up, then every `step` messages up to `memory_messages`."""
    total, step = cfg["memory_messages"], cfg["memory_step"]
    go(messages(tag(), cfg["memory_warmup"]))
    points = [{"after_messages": 0, "rss_mb": runner.procs.rss_mb()}]
    done = 0
    while done < total:
        k = min(step, total - done)
        go(messages(tag(), k))
        done += k
        points.append({"after_messages": done, "rss_mb": runner.procs.rss_mb()})
    first, last = points[0]["rss_mb"], points[-1]["rss_mb"]
    growth = [round(b_ - a, 1) for a, b_ in zip(first, last, strict=False)]
    return {"warmup_messages": cfg["memory_warmup"], "points": points, "growth_mb": growth,
            "growth_kb_per_message": [round(g * 1024 / total, 3) for g in growth] if total else []}
