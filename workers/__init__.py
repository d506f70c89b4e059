"""Everything of rxgate that runs, by adapter kind, around the pure core in `validator/`.

    store/     SQL: tables, migrations, the keyed audit chain, the Store port, auditors' queries
    queue/     Redis streams, Celery, MLLP, dead letters
    http/      the HTTP API, the auditor page, HL7 over HTTP, CDS Hooks
    cli/       the `rxgate` command, one module per command group
    settings.py (RXGATE_* settings), bootstrap.py (opening the store), metrics.py, health.py

Adapters import the core, never the reverse; nothing runs at import time.
"""

__all__ = ["bootstrap", "cli", "health", "http", "metrics", "queue", "settings", "store"]
