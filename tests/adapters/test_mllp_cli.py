"""`rxgate mllp` / `rxgate serve --mllp` configuration errors: exit 2 naming the problem, before anything listens.

In-process (`workers.cli.main`): every case is refused before the broker is looked up or a socket is
opened, so nothing needs to run; tests/integration/test_mllp_tls.py starts the real listeners.
"""

from __future__ import annotations

import pytest
import trustme

from workers.cli import main


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(d / "ca.pem")
    server, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(d / "server.pem")
    server.private_key_pem.write_to_path(d / "server.key")
    other.private_key_pem.write_to_path(d / "other.key")
    (d / "not.pem").write_text("not a certificate\n")
    return d


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("RXGATE_MLLP_TLS_CERT", "RXGATE_MLLP_TLS_KEY", "RXGATE_MLLP_TLS_CLIENT_CA", "RXGATE_MLLP_REPLY_TO",
                 "RXGATE_MLLP_REPLY_TLS_CA", "RXGATE_MLLP_REPLY_TLS_CERT", "RXGATE_MLLP_REPLY_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RXGATE_BROKER_URL", "redis://127.0.0.1:1/0")  # never reached


def refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "listening" not in err and err.startswith("rxgate: error: ")
    return err


@pytest.mark.parametrize(("args", "named"), [
    (["--tls-cert", "{d}/missing.pem", "--tls-key", "{d}/server.key"], "missing.pem: No such file"),
    (["--tls-cert", "{d}", "--tls-key", "{d}/server.key"], "Is a directory"),
    (["--tls-cert", "{d}/server.pem", "--tls-key", "{d}/other.key"], "server.pem with key"),  # not its key
    (["--tls-cert", "{d}/not.pem", "--tls-key", "{d}/server.key"], "not.pem"),
    (["--tls-cert", "{d}/server.pem", "--tls-key", "{d}/server.key", "--tls-client-ca", "{d}/ca-missing.pem"],
     "ca-missing.pem"),
    (["--tls-cert", "{d}/server.pem", "--tls-key", "{d}/server.key", "--tls-client-ca", "{d}/not.pem"], "not.pem"),
    (["--tls-cert", "{d}/server.pem"], "--tls-key"),
    (["--tls-client-ca", "{d}/ca.pem"], "does not turn TLS on"),
])
def test_rxgate_mllp_refuses_unusable_tls_files(pem, capsys, args, named):
    err = refused(capsys, "mllp", "--port", "0", *(a.format(d=pem) for a in args))
    assert named in err


def test_the_settings_are_checked_like_the_options(pem, capsys, monkeypatch):
    monkeypatch.setenv("RXGATE_MLLP_TLS_CERT", str(pem / "gone.pem"))
    monkeypatch.setenv("RXGATE_MLLP_TLS_KEY", str(pem / "server.key"))
    assert "gone.pem" in refused(capsys, "mllp", "--port", "0")


def test_serve_checks_the_listener_configuration_before_starting_anything(pem, capsys, monkeypatch):
    err = refused(capsys, "serve", "--mllp", "--mllp-tls-cert", str(pem / "missing.pem"),
                  "--mllp-tls-key", str(pem / "server.key"))
    assert "missing.pem" in err and "running" not in err
    assert "need --mllp" in refused(capsys, "serve", "--mllp-tls-cert", str(pem / "server.pem"))
    monkeypatch.setenv("RXGATE_MLLP_REPLY_TO", "PHARMSYS=10.0.0.5")
    assert "RXGATE_MLLP_REPLY_TO entry 'PHARMSYS=10.0.0.5'" in refused(capsys, "serve", "--mllp")


@pytest.mark.parametrize(("env", "named"), [
    ({"RXGATE_MLLP_REPLY_TO": "PHARMSYS^GENHOSP=host"}, "is not MSH-3^MSH-4=host:port"),
    ({"RXGATE_MLLP_REPLY_TLS_CA": "{d}/missing-ca.pem"}, "missing-ca.pem"),
    ({"RXGATE_MLLP_REPLY_TLS_CERT": "{d}/server.pem"}, "need RXGATE_MLLP_REPLY_TLS_CA"),
    ({"RXGATE_MLLP_REPLY_TLS_CA": "{d}/ca.pem", "RXGATE_MLLP_REPLY_TLS_CERT": "{d}/server.pem"}, "_KEY"),
    ({"RXGATE_MLLP_REPLY_BUDGET": "0"}, "RXGATE_MLLP_REPLY_BUDGET must be positive"),
])
def test_bad_reply_settings_are_refused(pem, capsys, monkeypatch, env, named):
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(d=pem))
    assert named in refused(capsys, "mllp", "--port", "0")


def test_explain_documents_the_timeout_rule(capsys):
    assert main(["explain", "rxgate.timeout"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rxgate.timeout — ") and "RXGATE_MLLP_TIMEOUT" in out and "not stored" in out
