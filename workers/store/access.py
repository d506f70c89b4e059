"""People, roles and the PHI access log (docs/interfaces.md §5 "Access"; migration 0005_access).

- `users`       one row per credential (a person or a system): its name, roles (`auditor`,
                `operator`, `submit`), the SHA-256 of its token, when it was made and revoked.
                The token itself is printed once by `rxgate users add` and never stored.
- `access_log`  one row per read of patient data: who, when, from which address, what (the route)
                and which query or record. Append-only and chained like the audit log: row N's
                HMAC-SHA256 (with the audit key, `chain.chain_hash`, never in the database) covers
                its content and row N-1's hash, so an edited, removed, inserted or forged row breaks
                the chain (`AccessLedger.verify`); `key_id` names the key (rotation as the audit log).

A token must carry at least 256 bits (32 bytes) of entropy (`token_entropy_bits`): `rxgate users add`
makes one from 32 random bytes, and a token given to it is measured and refused when shorter.
"""

from __future__ import annotations

import hashlib
import math
import string
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from workers.store.chain import GENESIS_HASH, Verification, chain_hash, link_problem
from workers.store.errors import database_errors
from workers.store.schema import ACTION_LEN, ADDRESS_LEN, NAME_LEN, AccessLogRow, UserRow, clean_text

if TYPE_CHECKING:
    from workers.store.sqlstore import SqlStore

__all__ = ["MIN_TOKEN_BITS", "ROLES", "AccessEntry", "AccessLedger", "User", "UserError", "token_entropy_bits",
           "token_sha256"]

ROLES = ("auditor", "operator", "submit")
MIN_TOKEN_BITS = 256  # 32 bytes of entropy
ACCESS_LOCK_KEY = 0x7278616C  # 'rxal': pg_advisory_xact_lock key serialising access-log appends
_ZLIB_OVERHEAD = 8  # header, checksum and block framing of a zlib stream
_NAME_CHARS = set(string.ascii_letters + string.digits + "._@-")


class UserError(ValueError):
    """A refused user operation (said to the operator as is: exit 2)."""


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class AccessEntry:
    seq: int
    at: datetime
    user: str
    address: str
    action: str
    target: str


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_entropy_bits(token: str) -> float:
    """An upper estimate of a token's entropy in bits: the smaller of its length times log2 of the alphabet
    its characters come from (hex 4, base64url 6, else printable ASCII 6.6 bits a character) and the size
    of its zlib compression (a repetitive token compresses to little). Generous to the token, so a token
    refused here is certainly too weak."""
    if not token:
        return 0.0
    chars = set(token)
    if chars <= set(string.hexdigits):
        alphabet = 16
    elif chars <= set(string.ascii_letters + string.digits + "-_=+/"):
        alphabet = 64
    else:
        alphabet = 95
    by_alphabet = len(token) * math.log2(alphabet)
    compressed = len(zlib.compress(token.encode("utf-8", "surrogatepass"), 9)) - _ZLIB_OVERHEAD
    return min(by_alphabet, max(compressed, 0) * 8.0)


def check_name(name: str) -> str:
    if not name or len(name) > NAME_LEN or not set(name) <= _NAME_CHARS:
        raise UserError(f"a user name is 1-{NAME_LEN} characters of letters, digits and . _ @ - (got {name!r})")
    return name


def check_roles(roles: list[str] | tuple[str, ...] | set[str]) -> frozenset[str]:
    bad = sorted(set(roles) - set(ROLES))
    if bad or not roles:
        raise UserError(f"roles are {', '.join(ROLES)} (got {', '.join(bad) or 'none'})")
    return frozenset(roles)


def _entry_content(row: AccessLogRow | dict[str, Any]) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    at = get("at")
    at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    return {"at": at, "user_name": get("user_name"), "address": get("address"), "action": get("action"),
            "target": get("target")}


class AccessLedger:
    """The users and access-log tables on the SQL store's engine (its SQLite writer queue, PostgreSQL pool)."""

    def __init__(self, store: SqlStore) -> None:
        self._sessions = sessionmaker(store.engine, expire_on_commit=False)
        self._reader = store.read_session
        self._keys = store.chain_keys  # the audit chain's keys (RXGATE_AUDIT_KEY / _FILE), read when first needed

    # --- users

    @database_errors
    def add_user(self, name: str, roles: list[str], token: str, now: datetime) -> User:
        check_name(name)
        role_set = check_roles(roles)
        bits = token_entropy_bits(token)
        if bits < MIN_TOKEN_BITS:
            raise UserError(f"the token has about {bits:.0f} bits of entropy; at least {MIN_TOKEN_BITS} "
                            "(32 random bytes) are needed")
        try:
            with self._sessions.begin() as s:
                s.execute(insert(UserRow).values(name=name, roles=",".join(sorted(role_set)),
                                                 token_sha256=token_sha256(token), created_at=now))
        except IntegrityError:
            raise UserError(f"a user named {name!r} exists already (or the token is in use): "
                            "revoke it or choose another name") from None
        return User(name, role_set, now)

    @database_errors
    def revoke(self, name: str, now: datetime) -> bool:
        """True when an active credential of that name was revoked."""
        with self._sessions.begin() as s:
            done = s.execute(update(UserRow).where(UserRow.name == clean_text(name), UserRow.revoked_at.is_(None))
                             .values(revoked_at=now))
            return bool(done.rowcount)

    @database_errors
    def users(self) -> list[User]:
        with self._reader() as s:
            rows = s.execute(select(UserRow).order_by(UserRow.name)).scalars().all()
            return [User(r.name, frozenset(r.roles.split(",")), r.created_at, r.revoked_at) for r in rows]

    @database_errors
    def user_for_token(self, digest: str) -> User | None:
        """The active credential whose token has this SHA-256 hex, or None."""
        with self._reader() as s:
            r = s.execute(select(UserRow).where(UserRow.token_sha256 == digest.lower(),
                                                UserRow.revoked_at.is_(None))).scalar_one_or_none()
            return None if r is None else User(r.name, frozenset(r.roles.split(",")), r.created_at)

    @database_errors
    def active_user(self, name: str) -> User | None:
        with self._reader() as s:
            r = s.execute(select(UserRow).where(UserRow.name == clean_text(name),
                                                UserRow.revoked_at.is_(None))).scalar_one_or_none()
            return None if r is None else User(r.name, frozenset(r.roles.split(",")), r.created_at)

    # --- the access log

    @database_errors
    def record(self, user: str, address: str, action: str, target: str, now: datetime) -> int:
        """Append one read; its sequence number. Raises (StoreUnavailable) rather than lose the row."""
        row = {"at": now, "user_name": (clean_text(user) or "")[:NAME_LEN],
               "address": (clean_text(address) or "")[:ADDRESS_LEN],
               "action": (clean_text(action) or "")[:ACTION_LEN], "target": clean_text(target) or ""}
        key = self._keys().current  # no key: ChainKeyError before anything is written (the read is refused)
        with self._sessions.begin() as s:
            self._lock(s)
            head = s.execute(select(AccessLogRow.seq, AccessLogRow.hash)
                             .order_by(AccessLogRow.seq.desc()).limit(1)).first()
            seq, prev = (1, GENESIS_HASH) if head is None else (head.seq + 1, head.hash)
            row.update(seq=seq, prev_hash=prev, hash=chain_hash(_entry_content(row), seq, prev, key),
                       key_id=key.key_id)
            s.execute(insert(AccessLogRow).values(**row))
        return seq

    @staticmethod
    def _lock(s: Session) -> None:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ACCESS_LOCK_KEY})
        # SQLite: the writer session's BEGIN IMMEDIATE holds the database's write lock

    @database_errors
    def entries(self, user: str | None = None, since: datetime | None = None) -> Iterator[AccessEntry]:
        with self._reader() as s:
            q = select(AccessLogRow).order_by(AccessLogRow.seq)
            if user:
                q = q.where(AccessLogRow.user_name == clean_text(user))
            if since is not None:
                q = q.where(AccessLogRow.at >= since)
            for r in s.execute(q).scalars():
                yield AccessEntry(r.seq, r.at, r.user_name, r.address, r.action, r.target)

    @database_errors
    def count(self) -> int:
        with self._reader() as s:
            return s.execute(select(func.count()).select_from(AccessLogRow)).scalar_one()

    @database_errors
    def verify(self) -> Verification:
        """Recompute every row's hash and link, in order; stop at the first bad row."""
        expected, prev, checked = 1, GENESIS_HASH, 0
        keys = self._keys()
        with self._reader() as s:
            for r in s.execute(select(AccessLogRow).order_by(AccessLogRow.seq)).scalars():
                if r.seq != expected:
                    return Verification(False, checked, expected, f"access-log row {expected} is missing")
                if r.prev_hash != prev:
                    return Verification(False, checked, r.seq, "its link to the previous row does not match")
                problem = link_problem(r.seq, prev, r.hash, r.key_id, _entry_content(r), keys)
                if problem is not None:
                    return Verification(False, checked, r.seq, problem.split(" (")[0])
                prev, expected, checked = r.hash, expected + 1, checked + 1
        return Verification(True, checked, head_seq=expected - 1 if checked else None,
                            head_hash=prev if checked else None)
