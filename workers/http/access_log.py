"""uvicorn's access log without query strings: a filter value may be a patient id (an MRN)."""

from __future__ import annotations

import logging

__all__ = ["DropQueryStrings", "install_access_log_filter"]


class DropQueryStrings(logging.Filter):
    """uvicorn.access logs (client, method, path, version, status): keep the path, drop `?...`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


_ACCESS_FILTER = DropQueryStrings()


def install_access_log_filter() -> None:
    """Idempotent: every app built in one process shares the one filter."""
    logger = logging.getLogger("uvicorn.access")
    if _ACCESS_FILTER not in logger.filters:
        logger.addFilter(_ACCESS_FILTER)
