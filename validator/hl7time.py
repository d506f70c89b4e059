"""HL7 DTM/TS values to exact instants (docs/protocol.md, "Times").

A time with a UTC offset names one instant. A time without one is a wall-clock
time in the service's zone, placed with that zone's offset *on that date*: the
returned datetimes carry a fixed UTC offset, so subtracting two of them gives the
exact elapsed time even across a daylight-saving change (a datetime in a ZoneInfo
zone subtracts as wall-clock time). A wall-clock time that the zone skips or
repeats names two instants, and a value coarser than a minute (a date alone, a
date and an hour) covers an interval: `Moment` keeps the earliest and the latest
instant it may name, and every window or limit is judged at the end less
favourable to accepting (`gap_bounds`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


@dataclass(frozen=True)
class Moment:
    """The instants an HL7 time may name: one when it is exact, else the earliest and the latest."""

    earliest: datetime
    latest: datetime
    has_time_of_day: bool = True

    @property
    def exact(self) -> bool:
        return self.earliest == self.latest


def _fixed(value: datetime) -> datetime:
    """The same instant with a fixed UTC offset (exact arithmetic, same wall clock for display)."""
    offset = value.utcoffset()
    assert offset is not None
    return value.replace(tzinfo=timezone(offset), fold=0)


def _readings(wall: datetime, tz: tzinfo) -> list[datetime]:
    """The instants a wall-clock time names in `tz`: two when the zone skips or repeats it."""
    return sorted({_fixed(wall.replace(tzinfo=tz, fold=fold)) for fold in (0, 1)})


def wall_clock_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The earliest instant a naive wall-clock time names in `tz`, with a fixed UTC offset."""
    return _readings(wall, tz)[0]


def parse_moment(raw: str, tz: tzinfo) -> Moment | None:
    """`YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]` as the instants it may name; without an offset it is in `tz`.

    To the minute or finer the value is exact (missing seconds are 00); a date alone or a
    date and an hour covers that day or hour. None for an empty or malformed value, and for
    one without a day (a time needs at least a date to be placed).
    """
    raw = raw.strip().split("^")[0]
    m = _DTM.match(raw)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    if day is None:
        return None
    try:
        wall = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        return None
    span = timedelta(days=1) if hour is None else timedelta(hours=1) if minute is None else timedelta(0)
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        if delta >= timedelta(hours=24):
            return None
        first = wall.replace(tzinfo=timezone(sign * delta))
        return Moment(first, first + span, hour is not None)
    starts = _readings(wall, tz)
    # The interval's end is the next day's / hour's wall clock in the zone (a day may last 23 or 25 h).
    ends = _readings(wall + span, tz) if span else starts
    return Moment(starts[0], max(ends[-1], starts[-1]), hour is not None)


def parse_datetime(raw: str, tz: tzinfo) -> datetime | None:
    """The earliest instant an HL7 time may name (see `parse_moment`), or None."""
    moment = parse_moment(raw, tz)
    return moment.earliest if moment else None


def gap_bounds(
    earlier: datetime, later: datetime, *, earlier_latest: datetime | None = None,
    later_latest: datetime | None = None,
) -> tuple[timedelta, timedelta]:
    """The shortest and the longest time from `earlier` to `later`, over every instant each may name."""
    return later - (earlier_latest or earlier), (later_latest or later) - earlier


def seconds_of(delta: timedelta) -> Decimal:
    """A time difference in exact Decimal seconds (no binary float)."""
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / Decimal(1_000_000)


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
