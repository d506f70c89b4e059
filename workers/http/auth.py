"""Who may read the audit log (docs/interfaces.md §4): the one place where credentials are checked.

A request is let in by `Authorization: Bearer <token>` whose SHA-256 hex equals the configured
RXGATE_AUDIT_TOKEN_SHA256, or by the session cookie the login form sets. With no hash configured
nothing is let in (closed by default). The session is an expiry time and an HMAC under a key made
per app instance, so a restart ends every session and one instance's cookie opens no other.
"""

# no `from __future__ import annotations`: FastAPI reads `require_auth`'s Annotated types at runtime
import hashlib
import hmac
import secrets
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["SESSION_COOKIE", "SESSION_SECONDS", "AuditAuth", "bearer_scheme", "page_authorised", "require_auth"]

SESSION_COOKIE = "rxgate_audit_session"
SESSION_SECONDS = 8 * 3600

# auto_error=False: a missing header is our 401 (with WWW-Authenticate), not FastAPI's 403
bearer_scheme = HTTPBearer(auto_error=False, description="the audit token (its SHA-256 is configured on the server)")


class AuditAuth:
    """The token check and the session cookie of one app instance."""

    def __init__(self, token_sha256: str | None) -> None:
        self._expected = (token_sha256 or "").strip().lower()
        self._session_key = secrets.token_bytes(32)

    def token_ok(self, token: str | None) -> bool:
        if not self._expected or not token:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(digest, self._expected)

    def _session_mac(self, expires: str) -> str:
        # the expected hash is in the MAC: changing the token ends the sessions made with the old one
        return hmac.new(self._session_key, f"{expires}:{self._expected}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        expires = str(int(time.time()) + SESSION_SECONDS)
        return f"{expires}.{self._session_mac(expires)}"

    def session_ok(self, value: str | None) -> bool:
        if not self._expected or not value or "." not in value:
            return False
        expires, mac = value.split(".", 1)
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._session_mac(expires))

    def authorised(self, request: Request, creds: HTTPAuthorizationCredentials | None) -> bool:
        if creds is not None and creds.scheme.lower() == "bearer" and self.token_ok(creds.credentials):
            return True
        return self.session_ok(request.cookies.get(SESSION_COOKIE))

    def start_session(self, request: Request, response: Response) -> None:
        response.set_cookie(SESSION_COOKIE, self.new_session(), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")

    @staticmethod
    def end_session(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")


def _auth_of(request: Request) -> AuditAuth:
    return request.app.state.auth


def require_auth(request: Request,
                 creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> None:
    """The dependency of every JSON route but /health: 401 unless the token or the session is good."""
    if not _auth_of(request).authorised(request, creds):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


async def page_authorised(request: Request) -> bool:
    """For the pages, which answer the login form (not a JSON 401) to a stranger."""
    return _auth_of(request).authorised(request, await bearer_scheme(request))
