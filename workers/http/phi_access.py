"""Every read of patient data over HTTP leaves one access-log row naming the person (docs/interfaces.md §5 "Access").

Written before the data is read: when the row cannot be written the read is refused (503), so
no patient data leaves without its row. The target is the query (the filters, page) or the record
id; it stays in the database (the access log is itself patient data), never in a log line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import Request

from workers.http.auth import Principal

__all__ = ["record_read"]


def record_read(request: Request, principal: Principal, target: str | None = None) -> int:
    """Append the row for this request's read: `target`, or else the request's query string."""
    if target is None:
        target = urlencode(sorted(request.query_params.multi_items()))
    address = request.client.host if request.client else "unknown"
    ledger = request.app.state.access_ledger
    now = datetime.fromtimestamp(request.app.state.auth.clock(), UTC)
    return ledger.record(principal.name, address, f"{request.method} {request.url.path}", target, now)
