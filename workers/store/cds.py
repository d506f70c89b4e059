"""What the CDS Hooks service keeps besides the audit log: used JWT ids and the cards it showed.

- `cds_jti`   (issuer, jti) unique, with the token's expiry: a token is accepted once (replay
              protection shared by every API process through the database). Rows past their
              expiry (plus the leeway) are deleted when new ones are claimed: they can no longer
              be replayed, since the token itself is refused as expired.
- `cds_cards` one row per card answered: its uuid, who was shown it (issuer, hookInstance), the
              patient key, rule, indicator and location, so that feedback (workers/http/cds.py) is
              recorded against the card's call in the audit log. The call itself, cards included,
              is an audit record; this table only finds it again.

The tables are `CdsJtiRow` and `CdsCardRow` in schema.py (migration 0007_cds_hooks).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from workers.store import SqlStore
from workers.store.schema import CdsCardRow as CardRow
from workers.store.schema import CdsJtiRow as JtiRow
from workers.store.schema import clean_text as _clean


@dataclass(frozen=True)
class Card:
    uuid: str
    issuer: str
    hook_instance: str
    patient_key: str
    rule: str
    indicator: str
    location: str | None
    summary: str


class CdsLedger:
    """The two tables, on the SQL store's engine (its SQLite writer queue and PostgreSQL pool)."""

    def __init__(self, store: SqlStore) -> None:
        self._sessions = sessionmaker(store.engine, expire_on_commit=False)

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime, leeway: timedelta) -> bool:
        """Record a token id; False when this issuer used it before (a replay)."""
        try:
            with self._sessions.begin() as s:
                s.execute(delete(JtiRow).where(JtiRow.expires_at < now - leeway))
                s.execute(insert(JtiRow).values(issuer=_clean(issuer), jti=_clean(jti), expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def add_cards(self, cards: list[Card], at: datetime) -> None:
        if not cards:
            return
        with self._sessions.begin() as s:
            s.execute(insert(CardRow), [
                dict(uuid=c.uuid, issuer=_clean(c.issuer), hook_instance=_clean(c.hook_instance),
                     patient_key=_clean(c.patient_key) or "", rule=_clean(c.rule), indicator=c.indicator,
                     location=_clean(c.location), summary=_clean(c.summary), created_at=at)
                for c in cards
            ])

    def cards(self, uuids: list[str]) -> dict[str, Card]:
        if not uuids:
            return {}
        with self._sessions() as s:
            rows = s.execute(select(CardRow).where(CardRow.uuid.in_([_clean(u) for u in uuids]))).scalars().all()
            return {r.uuid: Card(r.uuid, r.issuer, r.hook_instance, r.patient_key, r.rule, r.indicator, r.location,
                                 r.summary) for r in rows}
