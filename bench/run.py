"""`python -m bench.run [--quick] [--skip-queue] [--out bench/results.json] [--md BENCHMARKS.md]`

Runs every part in one process and writes the results JSON and the BENCHMARKS.md tables.
Counts come from the profile (full, or --quick for the smoke test) and can be overridden with
RXGATE_BENCH_<KEY>=value (e.g. RXGATE_BENCH_QUEUE_MESSAGES=3000, RXGATE_BENCH_MEMORY_MESSAGES=0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import corpus, report

FULL: dict[str, Any] = {
    # part 1: per-contender time budget per fixed message (s); iteration bounds
    "budget_s": 2.0, "min_n": 50, "max_n": 20000, "rounds": 10, "warmup": 3,
    "slow_budget_s": 3.0, "slow_min": 10, "slow_max": 200,  # hl7apy
    "public_budget_s": 0.12, "public_slow_budget_s": 0.3, "public_limit": 0,
    # part 3
    "history_sizes": [1, 1000, 100000], "history_messages": 150, "size_orders": [1, 2, 5, 10, 20, 35, 50],
    "size_budget_s": 0.6,
    # part 2
    "queue_paths": ["celery", "bridge", "bridge_unbatched"], "queue_n": [1, 2], "queue_messages": 600, "queue_stores": ["sqlite", "postgresql"], "queue_warmup": 60, "in_process_messages": 150,
    "latency_n": [1, 2], "latency_seconds": 6.0,
    "amqp_url": "",  # RXGATE_BENCH_AMQP_URL: a RabbitMQ vhost for the celery_amqp path (RXGATE_BENCH_QUEUE_PATHS)
    # part 4
    "memory_messages": 10000, "memory_step": 2000, "memory_warmup": 500, "memory_n": 2,
    "memory_store": "postgresql", "memory_paths": ["celery"],
}
QUICK: dict[str, Any] = {
    "budget_s": 0.01, "min_n": 3, "max_n": 5, "rounds": 1, "warmup": 1,
    "slow_budget_s": 0.01, "slow_min": 1, "slow_max": 1,
    "public_budget_s": 0.001, "public_slow_budget_s": 0.001, "public_limit": 3,
    "history_sizes": [1, 20], "history_messages": 3, "size_orders": [1, 3],
    "size_budget_s": 0.01,
    "queue_paths": ["celery", "bridge"], "queue_n": [1], "queue_messages": 10, "queue_stores": ["sqlite"], "queue_warmup": 3, "in_process_messages": 5,
    "latency_n": [], "latency_seconds": 1.0,
    "memory_messages": 0, "memory_step": 10, "memory_warmup": 3, "memory_n": 1,
    "memory_store": "sqlite", "memory_paths": ["celery"],
}


def configure(quick: bool) -> dict[str, Any]:
    cfg = dict(QUICK if quick else FULL)
    for key, default in list(cfg.items()):
        raw = os.environ.get(f"RXGATE_BENCH_{key.upper()}")
        if raw is None:
            continue
        if isinstance(default, list):
            cfg[key] = [type(default[0])(x) if default else x for x in raw.split(",") if x]
        elif isinstance(default, bool):
            cfg[key] = raw.lower() in ("1", "true", "yes")
        else:
            cfg[key] = type(default)(raw)
    return cfg


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=corpus.REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=corpus.REPO,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_worktree_dirty": dirty,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hl7", "hl7apy", "pydantic", "celery", "kombu", "redis", "sqlalchemy", "psycopg"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny counts (the smoke test): shape only, numbers meaningless")
    ap.add_argument("--skip-queue", action="store_true", help="parts 1 and 3 only (no Redis, workers or SQL)")
    ap.add_argument("--skip-sql", action="store_true", help="part 3 on the in-memory store only")
    ap.add_argument("--out", default=str(corpus.REPO / "bench" / "results.json"))
    ap.add_argument("--md", default=str(corpus.REPO / "BENCHMARKS.md"), help="'' to skip writing the markdown")
    args = ap.parse_args(argv)
    if not os.environ.get("RXGATE_AUDIT_KEY") and not os.environ.get("RXGATE_AUDIT_KEY_FILE"):
        # every database the bench writes is a scratch one made for this run (and its workers, which
        # inherit the environment): a key of its own, never a site's audit key
        import secrets

        os.environ["RXGATE_AUDIT_KEY"] = secrets.token_hex(32)
    cfg = configure(args.quick)
    started = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    from validator import InMemoryStore, load_protocol

    from . import core, scaling
    from .infra import Infra

    protocol = load_protocol()
    results: dict[str, Any] = {"machine": machine(), "versions": versions(), "quick": args.quick, "config": cfg}
    log(f"bench: {'quick' if args.quick else 'full'} run on {results['machine']['nproc']} CPUs")
    results["core"] = core.run_core(cfg, protocol, log)

    infra = Infra()
    try:
        stores: dict[str, Any] = {"in-memory": InMemoryStore}
        sql_note = ""
        if not args.skip_sql:
            ready, why = _sqlstore_ready()
            if ready:
                from workers.store import open_sql_store

                stores["sqlite"] = lambda: open_sql_store(infra.new_sqlite_url(), create=True)
                if infra.pg_available():
                    stores["postgresql"] = lambda: open_sql_store(infra.new_pg_db(), create=True)
                else:
                    sql_note = "PostgreSQL not reachable"
            else:
                sql_note = f"workers.store not importable: {why}"
        log("bench: scaling")
        size_cfg = dict(cfg, budget_s=cfg["size_budget_s"], min_n=cfg["min_n"], max_n=cfg["max_n"])
        results["scaling"] = {
            "method": scaling.__doc__.strip(),
            "history": scaling.history_scaling(protocol, cfg["history_sizes"], cfg["history_messages"], stores, log),
            "message_size": scaling.size_scaling(protocol, cfg["size_orders"], size_cfg, log),
            "note": sql_note,
        }
        if args.skip_queue:
            results["queue"] = {"measured": False, "reason": "--skip-queue"}
        else:
            log("bench: queue path")
            from . import queue

            try:
                results["queue"] = queue.run_queue(infra, cfg, log)
                results["queue"]["method"] = queue.__doc__.strip()
            except Exception as exc:  # noqa: BLE001 - parts 1 and 3 are still written
                traceback.print_exc()
                results["queue"] = {"measured": False, "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        infra.close()
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"bench: wrote {args.out} ({results['elapsed_seconds']} s)")
    if args.md:
        report.write_markdown(results, Path(args.md))
        log(f"bench: wrote {args.md}")
    return 0


def _sqlstore_ready() -> tuple[bool, str]:
    try:
        import workers.store  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


if __name__ == "__main__":
    sys.exit(main())
