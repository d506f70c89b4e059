"""Authenticating a CDS client (CDS Hooks 2.0, "Trusting CDS Clients"): a signed JWT on every call.

`Authorization: Bearer <JWT>` whose header has `alg` RS384 or ES384 (never `none`, never HMAC) and a
`kid`; whose `iss` is configured in `RXGATE_CDS_ISSUERS` with its keys; whose `aud` is the exact URL
invoked (`RXGATE_CDS_BASE_URL` + path when rxgate sits behind a proxy); with `exp` and `iat` valid
within `LEEWAY`; and whose `jti` this issuer has not used before (kept in the database until the
token expires, so every API process agrees). A `jku` header is accepted only when it is the
issuer's configured JWKS URL: keys come from configuration, never from the token.

`RXGATE_CDS_ISSUERS` is `issuer=source,issuer=source,…`: a source is a JWKS URL (http(s)://…, fetched
with a timeout and cached) or a file holding a JWKS (JSON) or one PEM public key. An issuer must not
contain `=` or `,`. A file that cannot be read is a start-up error naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

ALGORITHMS = ("RS384", "ES384")
LEEWAY = timedelta(seconds=30)
JWKS_CACHE_SECONDS = 300


class CdsAuthError(Exception):
    """The call is not authenticated: answered 401 with this text, and nothing of its body is read."""


class CdsKeysUnavailable(Exception):
    """The issuer's JWKS URL cannot be fetched: answered 503 (the client is not at fault)."""


class IssuerConfigError(ValueError):
    """`RXGATE_CDS_ISSUERS` cannot be used (a start-up error naming the entry)."""


def _key_fits(key: Any, alg: str) -> bool:
    if alg == "RS384":
        return isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey)
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"


@dataclass
class Issuer:
    """One trusted CDS client: its keys from a JWKS URL, a JWKS file or a PEM public key file."""

    name: str
    source: str
    jwks_url: str = ""
    jwks: dict[str, jwt.PyJWK] = field(default_factory=dict)  # kid -> key (files)
    pem_key: Any = None  # a PEM file: the one key, whatever the kid
    timeout: float = 5.0
    _client: jwt.PyJWKClient | None = None

    def key_for(self, kid: str, alg: str) -> Any:
        if self.pem_key is not None:
            key = self.pem_key
        elif self.jwks_url:
            try:
                if self._client is None:
                    self._client = jwt.PyJWKClient(self.jwks_url, cache_keys=True, lifespan=JWKS_CACHE_SECONDS,
                                                   timeout=self.timeout)
                found = self._client.get_signing_key(kid)
            except jwt.PyJWKClientConnectionError as exc:
                raise CdsKeysUnavailable(f"the JWKS of issuer {self.name} cannot be fetched: {exc}") from None
            except jwt.PyJWKClientError:
                raise CdsAuthError(f"issuer {self.name} has no key with kid {kid!r}") from None
            key = _checked(found, alg, kid)
        else:
            found = self.jwks.get(kid)
            if found is None:
                raise CdsAuthError(f"issuer {self.name} has no key with kid {kid!r}")
            key = _checked(found, alg, kid)
        if not _key_fits(key, alg):
            raise CdsAuthError(f"the key of issuer {self.name} (kid {kid!r}) is not a {alg} key")
        return key


def _checked(found: jwt.PyJWK, alg: str, kid: str) -> Any:
    declared = found._jwk_data.get("alg")  # the JWK's own alg, when it names one (PyJWK keeps the JWK)
    if declared and declared != alg:
        raise CdsAuthError(f"key {kid!r} is for {declared}, the token says {alg}")
    return found.key


def _load_file(name: str, path: Path) -> Issuer:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IssuerConfigError(f"RXGATE_CDS_ISSUERS: key file {path} of issuer {name} cannot be read "
                                f"({exc.strerror})") from None
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            keys = jwt.PyJWKSet.from_dict(json.loads(text)).keys
        except (ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
            raise IssuerConfigError(f"RXGATE_CDS_ISSUERS: {path} is not a usable JWKS ({exc})") from None
        by_kid = {k.key_id: k for k in keys if k.key_id}
        if not by_kid:
            raise IssuerConfigError(f"RXGATE_CDS_ISSUERS: the JWKS in {path} has no key with a kid")
        return Issuer(name, str(path), jwks=by_kid)
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise IssuerConfigError(f"RXGATE_CDS_ISSUERS: {path} is neither a JWKS nor a PEM public key ({exc})") from None
    return Issuer(name, str(path), pem_key=key)


def parse_issuers(setting: str, timeout: float = 5.0) -> dict[str, Issuer]:
    """`issuer=source,…` -> issuers by name. Empty: no client is trusted (every call is 401)."""
    issuers: dict[str, Issuer] = {}
    for item in (part.strip() for part in setting.split(",")):
        if not item:
            continue
        name, sep, source = item.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            raise IssuerConfigError(f"RXGATE_CDS_ISSUERS: {item!r} is not issuer=jwks_url_or_key_file")
        if source.startswith(("http://", "https://")):
            issuers[name] = Issuer(name, source, jwks_url=source, timeout=timeout)
        else:
            issuers[name] = _load_file(name, Path(source).expanduser())
    return issuers


@dataclass
class Caller:
    """An authenticated call: who (iss, sub) and the token's id and expiry."""

    issuer: str
    subject: str
    jti: str
    expires_at: datetime
    tenant: str = ""


def authenticate(
    authorization: str | None, audience: str, issuers: dict[str, Issuer],
    claim_jti: Callable[[str, str, datetime], bool],
) -> Caller:
    """Check the bearer JWT for a call to `audience`; raise CdsAuthError (401) or CdsKeysUnavailable (503)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise CdsAuthError("missing Authorization: Bearer <JWT> (CDS Hooks client authentication)")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise CdsAuthError(f"the bearer token is not a JWT ({exc})") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise CdsAuthError(f"JWT alg {alg!r} is not accepted (RS384 or ES384)")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise CdsAuthError("the JWT header has no kid")
    if header.get("typ") not in (None, "JWT"):
        raise CdsAuthError(f"JWT typ {header.get('typ')!r} is not JWT")
    name = unverified.get("iss")
    issuer = issuers.get(name) if isinstance(name, str) else None
    if issuer is None:
        raise CdsAuthError(f"JWT issuer {name!r} is not trusted (RXGATE_CDS_ISSUERS)")
    jku = header.get("jku")
    if jku is not None and jku != issuer.jwks_url:
        raise CdsAuthError(f"JWT jku {jku!r} is not the configured JWKS of issuer {name}")
    key = issuer.key_for(kid, alg)
    try:
        claims = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=name, leeway=LEEWAY,
            options={"require": ["iss", "aud", "exp", "iat", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise CdsAuthError("the JWT has expired") from None
    except jwt.InvalidAudienceError:
        raise CdsAuthError(f"JWT aud {unverified.get('aud')!r} is not the URL invoked ({audience})") from None
    except jwt.PyJWTError as exc:
        raise CdsAuthError(f"the JWT is not valid: {exc}") from None
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise CdsAuthError("the JWT jti is not a string")
    expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    if not claim_jti(name, jti, expires_at):
        raise CdsAuthError(f"JWT jti {jti!r} was already used (a replayed token)")
    return Caller(issuer=name, subject=str(claims.get("sub") or ""), jti=jti, expires_at=expires_at,
                  tenant=str(claims.get("tenant") or ""))
