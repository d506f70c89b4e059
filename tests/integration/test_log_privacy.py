"""No patient data in any log: `rxgate serve` (Celery worker, stream bridge, audit API as child processes) and
`rxgate submit` over every bundled example plus distinctive test patients, the Celery path, duplicates,
rejections and audit API queries whose URLs carry a patient id. Every byte the processes logged is scanned
for the patients' names, MRNs and birth dates (as sent and as YYYY-MM-DD).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.builders import adult_order_set, go_order
from tests.integration.conftest import ROOT, service_env, wait_until
from workers.queue.embedded import free_port

pytestmark = pytest.mark.integration

EXAMPLES = sorted((ROOT / "examples").glob("*.hl7"))
TOKEN = "privacy-test-token"


def distinctive(cid: str, mrn: str, family: str, given: str, dob: str, **kw) -> str:
    return adult_order_set(cid, mrn=mrn, dob=dob, **kw).replace("DOE^JANE^A", f"{family}^{given}^Q")


EXTRA = [
    distinctive("PRIV01", "ZQMRN4242", "XYLOPHONIA", "QUENDOLYN", "19531107"),
    distinctive("PRIV02", "ZQMRN4343", "BRATWURSTEL", "HILDEGUNDE", "19480229", go=go_order(dose="30")),  # AE
    distinctive("PRIV03", "ZQMRN4444", "KUMQUATIAN", "ORSOLYAH", "19701231", version="2.2"),  # AR
]
CELERY = [t.replace("PRIV0", "CELE0").replace("ZQMRN4", "ZQMRN5") for t in EXTRA]  # other patients, same names


def patient_data(texts: list[str]) -> set[str]:
    """MRNs, family and given names (3+ letters) and birth dates of every PID in the texts."""
    out: set[str] = set()
    for text in texts:
        for seg in re.split(r"[\r\n]+", text):
            if not seg.startswith("PID|"):
                continue
            f = seg.split("|")
            for rep in f[3].split("~"):
                if rep.split("^")[0]:
                    out.add(rep.split("^")[0])
            for part in f[5].split("^")[:2]:
                if len(part) >= 3:
                    out.add(part)
            dob = f[7].split("^")[0][:8]
            if len(dob) == 8:
                out.update({dob, f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"})
    return out


def leaks(log: str, secrets: set[str]) -> list[str]:
    found = []
    for s in secrets:
        pattern = re.escape(s) if any(c.isdigit() for c in s) else rf"\b{re.escape(s)}\b"
        for m in re.finditer(pattern, log, flags=re.IGNORECASE):
            found.append(f"{s!r}: ...{log[max(0, m.start() - 60):m.end() + 20]!r}")
    return found


def test_no_patient_data_in_the_logs_of_a_service_run(redis_url, tmp_path):
    texts = [p.read_bytes().decode("utf-8", "replace") for p in EXAMPLES] + EXTRA + CELERY
    secrets = patient_data(texts)
    assert {"EXMRN001", "DOE", "JANE", "19600315", "ZQMRN4242", "XYLOPHONIA", "1953-11-07"} <= secrets
    port = free_port()
    e = service_env(redis_url, tmp_path, RXGATE_AUDIT_API_PORT=str(port), RXGATE_LOG_LEVEL="INFO",
                    RXGATE_AUDIT_TOKEN_SHA256=hashlib.sha256(TOKEN.encode()).hexdigest())
    for i, text in enumerate(EXTRA):
        (tmp_path / f"extra{i}.hl7").write_text(text)
    serve_log = tmp_path / "serve.log"
    with serve_log.open("wb") as fh:
        serve = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve", "--concurrency", "1"], env=e,
                                 cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    stderr_parts = []
    try:
        files = [str(p) for p in EXAMPLES] + [str(tmp_path / f"extra{i}.hl7") for i in range(len(EXTRA))]
        sub = subprocess.run([sys.executable, "-m", "workers.cli", "submit", "--json", "--timeout", "60", *files],
                             env=e, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        stderr_parts.append(sub.stderr)
        answers = [json.loads(line) for line in sub.stdout.splitlines()]
        assert len(answers) >= len(files), sub.stderr
        # the same again (stored answers) and a changed message under a used control id (AR duplicate)
        again = subprocess.run([sys.executable, "-m", "workers.cli", "submit", "--timeout", "60", files[-3],
                                str(tmp_path / "extra1.hl7")], env=e, cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)
        stderr_parts.append(again.stderr)
        (tmp_path / "dup.hl7").write_text(EXTRA[0].replace("GRP501", "GRP502"))
        dup = subprocess.run([sys.executable, "-m", "workers.cli", "submit", "--json", "--timeout", "60",
                              str(tmp_path / "dup.hl7")], env=e, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        stderr_parts.append(dup.stderr)
        assert json.loads(dup.stdout)["ack_code"] == "AR"
        # the Celery path
        from workers.queue.celery_app import make_app
        from workers.settings import Settings

        app = make_app(Settings(broker_url=redis_url, visibility_timeout=3))
        results = [app.send_task("rxgate.validate", args=[t]).get(timeout=60) for t in CELERY]
        assert [r["ack_code"] for r in results] == ["AA", "AE", "AR"]
        # the audit API, with patient ids and birth dates in URLs, authorised and not
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(base + "/health")[0] in (200, 503), 30, what="the audit API")
        for mrn in ("ZQMRN4242", "EXMRN001"):
            status, body = _get(f"{base}/audit/messages?patient={mrn}", TOKEN)
            assert status == 200 and json.loads(body)["total"] >= 1
            assert _get(f"{base}/audit/messages?patient={mrn}&control_id=19531107")[0] == 401
            assert _get(f"{base}/ui?patient={mrn}", TOKEN)[0] == 200
            assert _get(f"{base}/audit/messages?patient={mrn}&since=not-a-date", TOKEN)[0] == 422
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    log = serve_log.read_text("utf-8", "replace") + "".join(stderr_parts)
    log += "".join(p.read_text("utf-8", "replace") for p in (tmp_path / "var").rglob("*.log"))
    assert "processed control_id=PRIV01" in log, "the scan must see the service's log lines"
    assert "processed control_id=CELE01" in log
    found = leaks(log, secrets)
    assert not found, "patient data in the logs:\n" + "\n".join(found[:20])


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_no_patient_data_in_the_validator_log_at_debug(caplog, capsys):
    """In process, at DEBUG: `rxgate check` over the examples and the distinctive patients logs no patient data."""
    from workers.cli import main

    files = [str(p) for p in EXAMPLES]
    caplog.set_level(logging.DEBUG)
    status = main(["check", "--json", *files])
    assert status == 1  # the examples include refusals
    out = capsys.readouterr()
    assert out.out.count("\n") >= len(files)
    secrets = patient_data([p.read_bytes().decode("utf-8", "replace") for p in EXAMPLES])
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records) + out.err
    assert "processed control_id=" in logged
    assert not leaks(logged, secrets)
