"""Nothing at import time but definitions: importing a module of `workers` creates no file, opens no socket,
sets no environment variable; `rxgate check` leaves its working directory as it found it.

Each check runs in a fresh interpreter whose working directory is an empty tmp dir, with no RXGATE_* or
PROMETHEUS_* variable set: the defaults (./var, ./var/metrics, the broker at 127.0.0.1:6379) are in play.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.paths import EXAMPLES, ROOT

IMPORT_ALL = """
    import importlib, json, os, pkgutil, socket, sys

    attempts = []

    def refuse(self, address, *args):
        attempts.append(repr(address))
        raise OSError("no connection at import time")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = lambda address, *a, **k: refuse(None, address)
    env_before = dict(os.environ)

    import workers

    modules = sorted(m.name for m in pkgutil.walk_packages(workers.__path__, "workers.")
                     if not m.name.endswith("__main__"))  # __main__ runs the CLI: that is its purpose
    for name in modules:
        importlib.import_module(name)
    changed = sorted(k for k in set(env_before) | set(os.environ) if env_before.get(k) != os.environ.get(k))
    print(json.dumps({"modules": modules, "connects": attempts, "env_changed": changed}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RXGATE_", "PROMETHEUS_", "prometheus_", "CELERY_"))}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def everything_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_importing_every_workers_module_creates_nothing_and_connects_nowhere(tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(IMPORT_ALL)], cwd=cwd, env=clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    # the modules that used to act at import are among those imported
    assert {"workers.metrics", "workers.queue.celery_app", "workers.queue.tasks", "workers.cli.service",
            "workers.http.app", "workers.store.sqlstore"} <= set(report["modules"])
    assert report["connects"] == []  # celery_app pinged Redis when it built the app at import
    assert report["env_changed"] == []  # metrics set PROMETHEUS_MULTIPROC_DIR at import
    assert everything_under(cwd) == []  # metrics created ./var/metrics at import


def test_rxgate_check_in_an_empty_directory_leaves_it_empty(tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-m", "workers.cli", "check", str(EXAMPLES / "adult-day1-accept.hl7")],
                         cwd=cwd, env=clean_env(RXGATE_TIMEZONE="America/New_York"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "AA" in out.stdout
    assert everything_under(cwd) == []  # no ./var, no ./var/metrics


def test_metrics_directory_is_made_by_configure_not_by_import(tmp_path):
    """The entry points call `metrics.configure`: that, and only that, makes <var_dir>/metrics and exports it."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    code = """
        import os
        from pathlib import Path
        from workers import metrics
        assert not Path("var").exists() and metrics.multiproc_dir() is None
        metrics.observe([], 0.01)  # counted in this process's memory: still nothing on disk
        assert not Path("var").exists()
        path = metrics.configure()
        print(path == os.path.abspath("var/metrics") == os.environ["PROMETHEUS_MULTIPROC_DIR"],
              Path(path).is_dir(), metrics.multiproc_dir() == path)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
