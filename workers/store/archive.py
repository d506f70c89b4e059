"""Retention: an archive of the audit chain's first records that verifies on its own (docs/interfaces.md §5).

`write_archive(store, before, tz, out)` writes JSON Lines:

    {"rxgate_archive": 1, "before": "2026-01-01", "timezone": "...", "first_seq": 1, "last_seq": N,
     "records": N, "last_hash": "..."}                               the header (first line)
    {"seq": 1, "prev_hash": "000...", "hash": "...", "content": {...}}   one line per record, in order

`content` is exactly what the chain hashes (`workers.store.chain.record_content`), so
`verify_archive(lines)` recomputes every hash and link without the database. The records stay
in the database: rxgate never deletes audit rows.

Which records: the chain's prefix up to the last record received before `before` (the start of
that date in the service's time zone). Sequence numbers follow the order records were written,
and a record can be written with an earlier received time than the one before it (a resent dead
letter keeps its original received time), so "every record received before DATE" need not be a
prefix; the prefix that holds them all is archived (never fewer), so the archive is one unbroken
piece of the chain and its last hash anchors the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, tzinfo
from typing import TextIO

from sqlalchemy import func, select

from workers.store.chain import (
    GENESIS_HASH,
    ChainKeys,
    Verification,
    canonical_json,
    chain_hash,
    chained_content,
    link_problem,
    read_records,
)
from workers.store.errors import database_errors
from workers.store.schema import ChainRow, MessageRow
from workers.store.sqlstore import SqlStore

FORMAT = 1


class ArchiveError(ValueError):
    """The file is not an rxgate archive (not JSON Lines, no header): said, never 'intact'."""


@database_errors
def archive_end(store: SqlStore, before: date, tz: tzinfo) -> int:
    """The last sequence number to archive (0: nothing was received before `before`)."""
    cut = datetime.combine(before, time.min, tzinfo=tz).astimezone(UTC)
    with store.read_session() as s:
        return s.execute(select(func.max(MessageRow.id)).where(MessageRow.received_at < cut)).scalar() or 0


@database_errors
def archive_lines(store: SqlStore, last_seq: int, batch: int = 500) -> Iterator[dict]:
    """The chain's records 1..last_seq with their hashed content, read `batch` at a time."""
    done = 0
    with store.read_session() as s:
        while done < last_seq:
            hi = min(done + batch, last_seq)
            lo = done + 1
            chain = list(s.execute(select(ChainRow).where(ChainRow.seq >= lo, ChainRow.seq <= hi)
                                   .order_by(ChainRow.seq)).scalars())
            records = read_records(s, lo, hi)
            for row in chain:
                message, verdict, response, parts = records.of(row.seq)
                content = None if message is None else chained_content(row.key_id, message, verdict, response, parts)
                # written as stored: a record already broken in the database verifies as broken in the file
                yield {"seq": row.seq, "prev_hash": row.prev_hash, "hash": row.hash, "key_id": row.key_id,
                       "content": content}
            done = hi


def write_archive(store: SqlStore, before: date, tz: tzinfo, out: TextIO) -> tuple[int, str | None]:
    """Write the archive; returns (records written, last hash)."""
    last_seq = archive_end(store, before, tz)
    head = None
    if last_seq:
        with store.read_session() as s:
            head = s.get(ChainRow, last_seq)
    header = {"rxgate_archive": FORMAT, "before": before.isoformat(), "timezone": str(tz),
              "first_seq": 1 if last_seq else None, "last_seq": last_seq or None, "records": last_seq,
              "last_hash": head.hash if head else None}
    out.write(canonical_json(header) + "\n")
    for line in archive_lines(store, last_seq):
        out.write(canonical_json(line) + "\n")
    return last_seq, header["last_hash"]


def verify_archive(lines: Iterable[str], keys: ChainKeys, anchor: tuple[int, str] | None = None) -> Verification:
    """Recompute the archive's chain from its own lines (no database): the first bad record is named; a
    header whose count or last hash differs from the records (a cut or extended file) is broken too.
    Keyed records (a `key_id`) need the audit keys (`keys`, from the caller's settings); records from
    before the chain was keyed verify with plain SHA-256, and only before every keyed one."""
    keyed = False
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, json.JSONDecodeError):
        raise ArchiveError("not an rxgate archive: no JSON header line") from None
    if not isinstance(header, dict) or header.get("rxgate_archive") != FORMAT:
        raise ArchiveError("not an rxgate archive (format 1): the first line has no \"rxgate_archive\": 1")
    expected, prev, checked = 1, GENESIS_HASH, 0
    hashes: dict[int, str] = {}
    for n, text in enumerate(it, start=2):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            seq, prev_hash, hash_, content = line["seq"], line["prev_hash"], line["hash"], line["content"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return Verification(False, checked=checked, first_bad_seq=expected,
                                reason=f"line {n} is not an archived record")
        if seq != expected:
            return Verification(False, checked=checked, first_bad_seq=expected,
                                reason=f"record {expected} is missing (the next record is {seq})")
        if prev_hash != prev:
            return Verification(False, checked=checked, first_bad_seq=seq,
                                reason="its link to the previous record does not match")
        if content is None:
            return Verification(False, checked=checked, first_bad_seq=seq, reason="its message row was removed")
        key_id = line.get("key_id")
        if key_id is None and keyed:
            return Verification(False, checked=checked, first_bad_seq=seq,
                                reason="it is not signed with the audit key but follows signed records")
        if key_id is None:
            problem = None if chain_hash(content, seq, prev) == hash_ else "its content was altered"
        else:
            keyed = True
            problem = link_problem(seq, prev, hash_, key_id, content, keys)
        if problem:
            return Verification(False, checked=checked, first_bad_seq=seq, reason=problem)
        prev, expected, checked = hash_, expected + 1, checked + 1
        if anchor is not None and seq == anchor[0]:
            hashes[seq] = hash_
    if checked != (header.get("records") or 0) or (checked and header.get("last_hash") != prev):
        return Verification(False, checked=checked, first_bad_seq=expected,
                            reason=f"the header says {header.get('records')} records ending in "
                                   f"{header.get('last_hash')}, the file holds {checked}: it was cut or extended")
    if anchor is not None and hashes.get(anchor[0]) != anchor[1]:
        return Verification(False, checked=checked, first_bad_seq=anchor[0],
                            reason="the anchored record is not in the archive with that hash")
    return Verification(True, checked=checked, head_seq=checked or None, head_hash=prev if checked else None)
