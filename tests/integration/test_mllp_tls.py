"""MLLP over TLS (docs/interfaces.md §5 "MLLP"): the listener as a subprocess, certificates made here.

`trustme` makes a CA, the listener's certificate (for 127.0.0.1), a client certificate that CA
signed, and a client certificate of a foreign CA. Shown: a TLS client gets its answer (TLS 1.2 or
later only); with a client CA, a client without a certificate or with a foreign one is refused at
the handshake and nothing it sent is queued; plain MLLP on the TLS port gets no MLLP byte back;
replies of enhanced mode go over TLS to a peer that requires rxgate's client certificate; `serve`
passes its TLS options to its listener. (Unusable TLS files at start-up: tests/adapters/test_mllp_cli.py.)
"""

from __future__ import annotations

import socket
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.builders import adult_order_set
from tests.integration.conftest import client, names, wait_until
from tests.integration.mllp_client import (
    ReplyPeer,
    ack,
    framed,
    read_frames,
    start_bridge,
    start_listener,
    wait_listening,
    with_modes,
)
from workers.queue.embedded import free_port

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client: trustme.LeafCert  # signed by `ca`
    foreign: trustme.LeafCert  # signed by another CA
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="rxgate test CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: d / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    server.cert_chain_pems[0].write_to_path(files["server.pem"])
    server.private_key_pem.write_to_path(files["server.key"])
    mirth = ca.issue_cert("mirth.genhosp.example")
    mirth.cert_chain_pems[0].write_to_path(files["client.pem"])
    mirth.private_key_pem.write_to_path(files["client.key"])
    foreign = trustme.CA(organization_name="someone else").issue_cert("mirth.genhosp.example")
    return Pki(ca, files["ca.pem"], files["server.pem"], files["server.key"], mirth, foreign,
               files["client.pem"], files["client.key"])


def tls_client(pki: Pki, cert: trustme.LeafCert | None = None, maximum: ssl.TLSVersion | None = None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    pki.ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():  # an old version on purpose: the listener must refuse it
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.maximum_version = maximum
    return ctx


def tls_args(pki: Pki, mutual: bool = False) -> list[str]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    return args + (["--tls-client-ca", str(pki.ca_file)] if mutual else [])


def exchange(ctx: ssl.SSLContext, port: int, text: str) -> tuple[str, str]:
    """Send one message over TLS; (the TLS version, the answer)."""
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(framed(text))
        [answer] = read_frames(s, 1, timeout=30)
        return s.version(), answer


def refused_at_handshake(ctx: ssl.SSLContext, port: int, text: str) -> None:
    """The connection fails in the TLS handshake (TLS 1.3: the server's alert arrives on the first read):
    no MLLP answer ever comes."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.settimeout(15)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(framed(text))
                data = s.recv(65536)
                assert data == b"", data  # an orderly close without an answer is a refusal too
                raise ssl.SSLError("closed without an answer")


def test_tls_client_gets_its_answer(env, procs, pki):
    start_bridge(procs, env)
    port = start_listener(procs, 20.0, *tls_args(pki))
    version, answer = exchange(tls_client(pki), port, adult_order_set("MTLS01", mrn="MTL1"))
    assert version in ("TLSv1.2", "TLSv1.3")
    assert ack(answer) == ("AA", "MTLS01")
    refused_at_handshake(tls_client(pki, maximum=ssl.TLSVersion.TLSv1_1), port, adult_order_set("MTLS02"))


def test_mutual_tls_serves_only_clients_the_ca_signed(env, procs, pki):
    port = start_listener(procs, 20.0, *tls_args(pki, mutual=True))  # enhanced mode: the CA needs no bridge
    message = with_modes(adult_order_set("MMT01", mrn="MMT1"), "AL", "NE")
    _version, answer = exchange(tls_client(pki, cert=pki.client), port, message)
    assert ack(answer) == ("CA", "MMT01")
    refused_at_handshake(tls_client(pki), port, message.replace("MMT01", "MMT02"))  # no client certificate
    refused_at_handshake(tls_client(pki, cert=pki.foreign), port, message.replace("MMT01", "MMT03"))
    queued = client(env).xrange(names(env)[0])
    assert len(queued) == 1 and "MMT01" in queued[0][1]["hl7"]  # nothing of the refused clients was queued
    logs = procs.logs()
    assert "TLS client certificate DNS:mirth.genhosp.example" in logs and logs.count("TLS handshake failed") == 2


def test_plain_mllp_on_the_tls_port_gets_nothing(env, procs, pki):
    port = start_listener(procs, 20.0, *tls_args(pki))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(15)
        s.sendall(framed(with_modes(adult_order_set("MPL01", mrn="MPL1"), "AL", "AL")))
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"\x0b" not in received and b"MSA" not in received  # closed without a byte of MLLP
    assert client(env).xlen(names(env)[0]) == 0


def test_enhanced_mode_reply_over_mutual_tls(env, procs, pki):
    peer_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(peer_ctx)
    pki.ca.configure_trust(peer_ctx)
    peer_ctx.verify_mode = ssl.CERT_REQUIRED  # the engine's reply port requires rxgate's client certificate
    peer = ReplyPeer(tls=peer_ctx)
    try:
        procs.env = dict(env, RXGATE_MLLP_REPLY_TO=f"PHARMSYS^GENHOSP=127.0.0.1:{peer.port}",
                         RXGATE_MLLP_REPLY_TLS_CA=str(pki.ca_file), RXGATE_MLLP_REPLY_TLS_CERT=str(pki.client_cert),
                         RXGATE_MLLP_REPLY_TLS_KEY=str(pki.client_key), RXGATE_MLLP_REPLY_ACK_TIMEOUT="5")
        start_bridge(procs, procs.env)
        port = start_listener(procs, 20.0, *tls_args(pki))
        _version, answer = exchange(tls_client(pki), port, with_modes(adult_order_set("MRP01", mrn="MRP1"), "AL", "AL"))
        assert ack(answer) == ("CA", "MRP01")
        [reply] = peer.wait_for(1)
    finally:
        peer.close()
    assert ack(reply) == ("AA", "MRP01")
    wait_until(lambda: "delivered" in procs.logs(), 15, what="the delivery to be logged")


def test_serve_passes_the_tls_options_to_its_listener(env, procs, pki):
    port = free_port()
    procs.env = dict(env, RXGATE_MLLP_PORT=str(port))
    procs.start("serve", "--no-worker", "--no-api", "--mllp", "--mllp-tls-cert", str(pki.server_cert),
                "--mllp-tls-key", str(pki.server_key))
    wait_listening(port, procs)
    _version, answer = exchange(tls_client(pki), port, adult_order_set("MSS01", mrn="MSS1"))
    assert ack(answer) == ("AA", "MSS01")  # over TLS, judged by the bridge `serve` started
