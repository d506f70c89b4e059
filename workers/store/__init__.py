"""The SQL store: course history, message keys, deliveries and the hash-chained audit log.

    schema.py    the tables (declarative rows, the UTC datetime type), column lengths
    chain.py     canonical JSON, the chain hash, a record's hashed content; chain verification
    records.py   the rows of one audit record, built from a ProcessedMessage
    engine.py    engines, SQLite set-up, the queued-writer connection, migrations, opening modes
    sqlstore.py  SqlStore (the core's validator.history.Store port) and open_sql_store
    audit.py     the auditors' queries: filters, list, detail, stats
    errors.py    the store's exceptions; database errors said without patient data
    migrations/  Alembic revisions, applied by engine.migrate when the service opens the store

`open_sql_store(url, create=True)` for the service and `rxgate check --db`;
`open_sql_store(url, create=False)` for `rxgate audit` and the HTTP API, which never create a
database (docs/interfaces.md §5 "Access").
"""

from workers.store.audit import (
    MAX_LIMIT,
    OUTCOMES,
    AuditFilter,
    FilterError,
    get_message,
    iter_messages,
    parse_filter,
    query_messages,
    stats,
)
from workers.store.chain import GENESIS_HASH, Verification, canonical_json, chain_hash, record_content, verify_chain
from workers.store.engine import make_engine, migrate, safe_url
from workers.store.errors import HistoryChanged, StoreMissing, StoreRefused, StoreUnavailable
from workers.store.sqlstore import SqlStore, open_sql_store

__all__ = [
    "GENESIS_HASH",
    "MAX_LIMIT",
    "OUTCOMES",
    "AuditFilter",
    "FilterError",
    "HistoryChanged",
    "SqlStore",
    "StoreMissing",
    "StoreRefused",
    "StoreUnavailable",
    "Verification",
    "canonical_json",
    "chain_hash",
    "get_message",
    "iter_messages",
    "make_engine",
    "migrate",
    "open_sql_store",
    "parse_filter",
    "query_messages",
    "record_content",
    "safe_url",
    "stats",
    "verify_chain",
]
