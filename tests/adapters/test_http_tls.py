"""HTTPS of the HTTP API: RXGATE_HTTP_TLS_CERT/_KEY become uvicorn's options; an unusable file is exit 2 naming
it, never plain HTTP (tests/integration/test_hl7_http.py serves over it)."""

from __future__ import annotations

import pytest
import trustme

from workers.cli.service import api_tls_args
from workers.cli.usage import UsageError
from workers.settings import Settings


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    server, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(d / "server.pem")
    server.private_key_pem.write_to_path(d / "server.key")
    other.private_key_pem.write_to_path(d / "other.key")
    return d


def test_no_files_is_plain_http():
    assert api_tls_args(Settings(http_tls_cert="", http_tls_key="")) == []


def test_good_files_become_uvicorn_options(pem):
    s = Settings(http_tls_cert=str(pem / "server.pem"), http_tls_key=str(pem / "server.key"))
    assert api_tls_args(s) == ["--ssl-certfile", str(pem / "server.pem"), "--ssl-keyfile", str(pem / "server.key")]


@pytest.mark.parametrize(("cert", "key", "named"), [
    ("server.pem", "", "both"), ("", "server.key", "both"),
    ("missing.pem", "server.key", "missing.pem"), ("server.pem", "other.key", "with RXGATE_HTTP_TLS_KEY"),
])
def test_unusable_files_are_refused_naming_them(pem, cert, key, named):
    s = Settings(http_tls_cert=str(pem / cert) if cert else "", http_tls_key=str(pem / key) if key else "")
    with pytest.raises(UsageError, match=named):
        api_tls_args(s)
