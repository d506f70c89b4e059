"""TLS for MLLP (docs/interfaces.md §5 "MLLP"): the listener's server context and the reply sender's client context.

TLS 1.2 or later only. A certificate, key or CA file that is missing, unreadable or not what it
should be is a start-up error naming the file (`TlsSetupError`; the command exits 2): never a
silent plain listener, never a reply sent in clear to a peer configured for TLS.
"""

from __future__ import annotations

import ssl


class TlsSetupError(Exception):
    """A TLS file cannot be used; the message names the file and the option or setting it came from."""


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise TlsSetupError(f"{what} {path}: {exc.strerror or exc}") from None


def server_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """The listener's context; with `client_ca`, only clients presenting a certificate it signed are served."""
    if not cert or not key:
        raise TlsSetupError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    _readable(cert, "TLS certificate (--tls-cert / RXGATE_MLLP_TLS_CERT)")
    _readable(key, "TLS key (--tls-key / RXGATE_MLLP_TLS_KEY)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"cannot use TLS certificate {cert} with key {key}: {exc.reason or exc}") from None
    if client_ca:
        _readable(client_ca, "TLS client CA (--tls-client-ca / RXGATE_MLLP_TLS_CLIENT_CA)")
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise TlsSetupError(f"cannot use TLS client CA {client_ca}: {exc.reason or exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, or a foreign one, fails the handshake
    return ctx


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """The reply sender's context: the peer must present a certificate `ca` signed for its host name or
    address; with `cert`/`key`, rxgate presents its own (peers that require mutual TLS)."""
    _readable(ca, "reply TLS CA (RXGATE_MLLP_REPLY_TLS_CA)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # host name checked, certificate required; only `ca` trusted
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"cannot use reply TLS CA {ca}: {exc.reason or exc}") from None
    if cert or key:
        if not (cert and key):
            raise TlsSetupError("a reply client certificate needs both RXGATE_MLLP_REPLY_TLS_CERT and _KEY")
        _readable(cert, "reply TLS certificate (RXGATE_MLLP_REPLY_TLS_CERT)")
        _readable(key, "reply TLS key (RXGATE_MLLP_REPLY_TLS_KEY)")
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise TlsSetupError(f"cannot use reply TLS certificate {cert} with key {key}: {exc.reason or exc}") \
                from None
    return ctx
