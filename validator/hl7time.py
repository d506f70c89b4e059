"""HL7 DTM/TS values to zone-aware datetimes."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def parse_datetime(raw: str, tz: tzinfo) -> datetime | None:
    """`YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]`; without an offset the value is in `tz`.

    Returns None for an empty or malformed value, and for one without a day
    (a time needs at least a date to be placed).
    """
    raw = raw.strip().split("^")[0]
    m = _DTM.match(raw)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    if day is None:
        return None
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        return None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        if delta >= timedelta(hours=24):
            return None
        return value.replace(tzinfo=timezone(sign * delta))
    return value.replace(tzinfo=tz)


def parse_date(raw: str) -> date | None:
    """A full date (YYYYMMDD...) or None when absent, partial or invalid."""
    m = _DTM.match(raw.strip())
    if not m or m.group(3) is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def format_datetime(value: datetime) -> str:
    """HL7 DTM with offset, to the second."""
    return value.strftime("%Y%m%d%H%M%S%z")
