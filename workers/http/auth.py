"""Who may do what over HTTP (docs/interfaces.md §4, §5 "Access"): the one place where credentials are checked.

A request carries a credential as `Authorization: Bearer <token>`, as HTTP Basic (the password is
the token; `POST /hl7` only, as HAPI's HL7-over-HTTP client sends it), or as the session cookie the
login form sets. A token is a person's or system's (`rxgate users add`, stored as its SHA-256 in
the `users` table) with roles `auditor`, `operator`, `submit`; the old RXGATE_AUDIT_TOKEN_SHA256 is
one more credential, named `audit-token`, with the `auditor` role. No credential (or a wrong one):
401. A good credential without the route's role: 403.

**Failures are limited per address** (`FailureLimiter`): after `max_failures` wrong tokens or
logins within `window` seconds, every credential from that address is refused with 429 and a
`Retry-After` for `lockout` seconds, the right one too. The clock is injected (tests drive it).

**Sessions are kept on the server**: the cookie holds a random id; the app keeps its SHA-256 with
the person's name and expiry. Logout deletes it, so the old cookie opens nothing; revoking a person
ends their sessions (each request checks the person is still active). A restart ends every session.
"""

# no `from __future__ import annotations`: FastAPI reads the dependencies' Annotated types at runtime
import base64
import binascii
import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workers.store.access import AccessLedger, token_sha256

__all__ = ["LEGACY_NAME", "SESSION_COOKIE", "SESSION_SECONDS", "AccessControl", "FailureLimiter", "Principal",
           "bearer_scheme", "page_principal", "require_role"]

log = logging.getLogger("rxgate.http.auth")

SESSION_COOKIE = "rxgate_audit_session"
CSRF_COOKIE = "rxgate_login_csrf"
SESSION_SECONDS = 8 * 3600
LEGACY_NAME = "audit-token"  # the RXGATE_AUDIT_TOKEN_SHA256 credential
MAX_SESSIONS = 10_000
MAX_TRACKED_ADDRESSES = 100_000

# auto_error=False: a missing header is our 401 (with WWW-Authenticate), not FastAPI's 403
bearer_scheme = HTTPBearer(auto_error=False, description="a token made by `rxgate users add` "
                                                         "(the server keeps only its SHA-256)")


@dataclass(frozen=True)
class Principal:
    """Who a request is: a credential's name and roles."""

    name: str
    roles: frozenset[str]


class FailureLimiter:
    """Wrong credentials per client address: `max_failures` within `window` seconds lock it out for `lockout`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_failures: int = 10, window: float = 60.0,
                 lockout: float = 60.0) -> None:
        self.clock, self.max_failures, self.window, self.lockout = clock, max_failures, window, lockout
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds this address stays locked out; 0 when it may try."""
        with self._lock:
            until = self._locked_until.get(address)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self._locked_until[address]
                self._failures.pop(address, None)
                return 0.0
            return left

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._failures.pop(address, None) or deque()
            self._failures[address] = times  # most recent last: the oldest addresses are dropped first
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) >= self.max_failures:
                self._locked_until[address] = now + self.lockout
                log.warning("credential failures: an address is locked out for %.0f s", self.lockout)
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class AccessControl:
    """The credential checks, the failure limit and the sessions of one app instance."""

    def __init__(self, ledger: AccessLedger | None, legacy_sha256: str | None = None, *,
                 limiter: FailureLimiter | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self._legacy = (legacy_sha256 or "").strip().lower()
        self.limiter = limiter or FailureLimiter()
        self.clock = clock
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # sha256(id) -> (name, expires)
        self._lock = threading.Lock()

    # --- tokens

    def principal_for_token(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = token_sha256(token)
        if self._legacy and hmac.compare_digest(digest, self._legacy):
            return Principal(LEGACY_NAME, frozenset({"auditor"}))
        user = self.ledger.user_for_token(digest) if self.ledger is not None else None
        return None if user is None else Principal(user.name, user.roles)

    def _still_active(self, name: str) -> Principal | None:
        if name == LEGACY_NAME:
            return Principal(LEGACY_NAME, frozenset({"auditor"})) if self._legacy else None
        user = self.ledger.active_user(name) if self.ledger is not None else None
        return None if user is None else Principal(user.name, user.roles)

    # --- sessions

    def new_session(self, principal: Principal) -> str:
        value = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            for key in [k for k, (_n, exp) in self._sessions.items() if exp <= now]:
                del self._sessions[key]
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.popitem(last=False)
            self._sessions[hashlib.sha256(value.encode()).hexdigest()] = (principal.name, now + SESSION_SECONDS)
        return value

    def session_principal(self, value: str | None) -> Principal | None:
        if not value or len(value) > 200:
            return None
        key = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            held = self._sessions.get(key)
            if held is not None and held[1] <= self.clock():
                del self._sessions[key]
                held = None
        return None if held is None else self._still_active(held[0])

    def end_session(self, value: str | None) -> None:
        if value:
            with self._lock:
                self._sessions.pop(hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest(), None)

    def start_session(self, request: Request, response: Response, principal: Principal) -> None:
        response.set_cookie(SESSION_COOKIE, self.new_session(principal), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")

    # --- one request

    def refuse_if_locked(self, request: Request) -> None:
        left = self.limiter.retry_after(_address(request))
        if left > 0:
            raise HTTPException(429, "too many failed credentials from this address; try again later",
                                headers={"Retry-After": str(max(1, int(left + 0.999)))})

    def authenticate(self, request: Request, *, allow_basic: bool = False) -> Principal | None:
        """The request's principal; None without a credential. A wrong credential counts as a failure
        (401 from the caller); a locked-out address is 429 before anything is checked."""
        self.refuse_if_locked(request)
        header = request.headers.get("authorization")
        if header:
            principal = self._from_header(header, allow_basic)
            if principal is None:
                self.limiter.failed(_address(request))
            return principal
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = self.session_principal(cookie)
            if principal is None:
                self.limiter.failed(_address(request))
            return principal
        return None

    def _from_header(self, header: str, allow_basic: bool) -> Principal | None:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self.principal_for_token(value)
        if scheme.lower() == "basic" and allow_basic:
            try:
                user, sep, token = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            principal = self.principal_for_token(token) if sep else None
            if principal is not None and user and user != principal.name:
                return None  # a user name that is not the token's: refused, not ignored
            return principal
        return None

    # --- the login form's CSRF token (double submit: a cookie and the same value in the form)

    @staticmethod
    def set_csrf(response: Response, request: Request, value: str) -> None:
        response.set_cookie(CSRF_COOKIE, value, max_age=3600, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/login")

    @staticmethod
    def csrf_ok(request: Request, form_value: str | None) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE)
        return bool(cookie and form_value) and hmac.compare_digest(cookie.encode(), form_value.encode())


def access_control(request: Request) -> AccessControl:
    return request.app.state.auth


def _unauthorised(basic: bool) -> HTTPException:
    challenge = 'Basic realm="rxgate", charset="UTF-8"' if basic else "Bearer"
    return HTTPException(401, "missing or wrong credential", headers={"WWW-Authenticate": challenge})


@functools.cache  # one callable per (role, basic): FastAPI then runs it once per request however often it is named
def require_role(role: str | None, *, allow_basic: bool = False) -> Callable[..., Principal]:
    """A dependency: the request's principal, which must hold `role` (None: any role). 401 / 403 / 429."""

    def dependency(request: Request,
                   _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> Principal:
        principal = access_control(request).authenticate(request, allow_basic=allow_basic)
        if principal is None:
            raise _unauthorised(allow_basic)
        if role is not None and role not in principal.roles:
            raise HTTPException(403, f"the {role!r} role is needed")
        request.state.principal = principal
        return principal

    return dependency


def page_principal(request: Request) -> Principal | None:
    """For the pages, which answer the login form (not a JSON 401) to a stranger; 429 when locked out."""
    return access_control(request).authenticate(request)
