"""HL7 v2 over HTTP end to end (docs/interfaces.md §5 "HTTP"): `rxgate serve` runs the API over HTTPS
(RXGATE_HTTP_TLS_CERT/_KEY), a real bridge judges on a real Redis; the answer, the dedupe of a resend and the
audit record are the queue's."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import httpx
import pytest
import trustme

from tests.builders import adult_order_set
from tests.integration.conftest import audit_count, store
from tests.integration.mllp_client import ack, start_bridge
from workers.queue.embedded import free_port
from workers.store.access import AccessLedger

HEADERS = {"Content-Type": "application/hl7-v2; charset=utf-8"}


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


def _up(base: str, ca) -> bool:
    try:
        return httpx.get(base + "/health", verify=str(ca), timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def test_hl7_over_https_is_judged_deduplicated_and_audited_as_the_queue(env, procs, pki):
    port = free_port()
    procs.env = dict(env, RXGATE_AUDIT_API_PORT=str(port), RXGATE_HTTP_TLS_CERT=str(pki["cert"]),
                     RXGATE_HTTP_TLS_KEY=str(pki["key"]), RXGATE_MLLP_TIMEOUT="20")
    start_bridge(procs, procs.env)  # creates the database
    token = secrets.token_urlsafe(32)
    st = store(procs.env)
    AccessLedger(st).add_user("ehr-feed", ["submit"], token, datetime.now(UTC))
    st.dispose()
    procs.start("serve", "--no-worker", "--no-bridge")
    base = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _up(base, pki["ca"]):
        assert time.monotonic() < deadline, procs.logs()
        time.sleep(0.1)
    auth = {"Authorization": f"Bearer {token}"}
    message = adult_order_set("HTTP01", mrn="HTTP1")
    with httpx.Client(base_url=base, verify=str(pki["ca"]), timeout=30) as c:
        first = c.post("/hl7", content=message.encode(), headers={**HEADERS, **auth})
        assert first.status_code == 200 and first.headers["content-type"] == "application/hl7-v2; charset=utf-8"
        assert ack(first.text) == ("AA", "HTTP01")
        assert audit_count(procs.env) == 1
        again = c.post("/hl7", content=message.encode(), headers={**HEADERS, **auth})
        assert again.content == first.content  # the stored answer, byte for byte
        assert audit_count(procs.env) == 1
        wrong = c.post("/hl7", content=adult_order_set("HTTP02", mrn="HTTP2", dob="20261201").encode(),
                       headers={**HEADERS, **auth})
        assert wrong.status_code == 200 and ack(wrong.text)[0] in ("AE", "AR")  # a refusal is still 200
        assert c.post("/hl7", content=message.encode(), headers=HEADERS,
                      auth=("ehr-feed", "wrong")).status_code == 401
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port gets no answer
        httpx.post(f"http://127.0.0.1:{port}/hl7", content=message.encode(), headers={**HEADERS, **auth}, timeout=5)
