"""Choosing the pre-dose lab result a rule judges (docs/protocol.md, "How values are chosen").

Shared by `go.cd33`, `go.wbc` and `go.liver`: for each dose, the most recent
result (OBX-14) at or before that dose's planned start, within the rule's
recency limit — an exact duration, inclusive (72 h is 72 h 0 s, not 72 h 1 s).
Labs without OBX-14 cannot be shown recent: they are treated as missing and the
problem says so. `ctx.observations` are already final/corrected and not
future-dated (`validator.observations.usable_observations`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal

from ..model import Location, Observation
from ..observations import latest_at

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400


def exact_duration(amount: Decimal, unit_seconds: int) -> timedelta:
    """A protocol duration (Decimal hours or days) as an exact timedelta (no binary float)."""
    return timedelta(microseconds=int(amount * unit_seconds * 1_000_000))


def when(at: datetime, tz: tzinfo) -> str:
    """A time for messages, in the service's zone; seconds only when there are some."""
    local = at.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M:%S}" if local.second else f"{local:%Y-%m-%d %H:%M}"


def num(value: Decimal | int) -> str:
    """A number for display without exponent or trailing zeros (30.000 → 30, 1E+1 → 10)."""
    return format(Decimal(value).normalize(), "f")


def duration_text(span: timedelta, *, in_days: bool) -> str:
    """`72 h 1 s`, `60 days 1 s`: exact, so a message shows why a boundary was missed."""
    seconds = int(span.total_seconds())
    negative = seconds < 0
    seconds = abs(seconds)
    parts: list[str] = []
    if in_days:
        days, seconds = divmod(seconds, SECONDS_PER_DAY)
        if days:
            parts.append(f"{days} day{'s' if days != 1 else ''}")
    hours, seconds = divmod(seconds, SECONDS_PER_HOUR)
    minutes, seconds = divmod(seconds, 60)
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if seconds or not parts:
        parts.append(f"{seconds} s")
    return ("-" if negative else "") + " ".join(parts)


def limit_text(amount: Decimal, *, in_days: bool) -> str:
    return f"{num(amount)} days" if in_days else f"{num(amount)} h"


@dataclass
class LabChoice:
    """The result a rule judges, or why there is none (`problem`, located at `location`)."""

    observation: Observation | None
    problem: str = ""
    location: Location | None = None
    age: timedelta | None = None
    had_candidates: bool = True


def time_location(obs: Observation) -> Location:
    return obs.location.model_copy(update={"field": 14})


def recent_result(
    candidates: list[Observation],
    start: datetime,
    max_age: timedelta,
    *,
    what: str,
    limit: str,
    tz: tzinfo,
    in_days: bool,
    start_latest: datetime | None = None,
) -> LabChoice:
    """The most recent dated candidate at or before `start`, if it is no older than `max_age`.

    The age is exact, from the earliest instant the result's OBX-14 may name to the latest the
    GO start may name (a coarse or ambiguous time is judged at its older reading).
    """
    if not candidates:
        return LabChoice(None, f"no {what} result in the message", had_candidates=False)
    chosen = latest_at(candidates, start, undated_counts=False)
    undated = [o for o in candidates if o.observed_at is None]
    undated_note = (
        f"; {len(undated)} {what} result(s) without an observation time (OBX-14) cannot be shown to be "
        f"within {limit} and are treated as missing"
        if undated else ""
    )
    if chosen is None:
        later = sorted(o.observed_at for o in candidates if o.observed_at is not None)
        if later:
            return LabChoice(
                None,
                f"no {what} result at or before the GO start {when(start, tz)} (the earliest is dated "
                f"{when(later[0], tz)}, after it){undated_note}",
                time_location(next(o for o in candidates if o.observed_at == later[0])),
            )
        return LabChoice(
            None,
            f"the {what} result has no observation time (OBX-14): it cannot be shown to be within {limit} "
            "before the GO start and is treated as missing",
            time_location(undated[0]),
        )
    assert chosen.observed_at is not None
    age = (start_latest or start) - chosen.observed_at
    if age > max_age:
        return LabChoice(
            None,
            f"the most recent {what} result, dated {when(chosen.observed_at, tz)}, is "
            f"{duration_text(age, in_days=in_days)} before the GO start {when(start, tz)}; it must be within "
            f"{limit}{undated_note}",
            time_location(chosen),
            age,
        )
    return LabChoice(chosen, location=chosen.location, age=age)


def first_usable(*choices: LabChoice) -> LabChoice:
    """The first choice that found a result; else the problem of the first that had candidates."""
    for choice in choices:
        if choice.observation is not None:
            return choice
    for choice in choices:
        if choice.had_candidates:
            return choice
    return choices[0]


_WORD_EDGE = r"(?<![a-z0-9]){}(?![a-z0-9])"


def text_mentions(text: str, word: str) -> bool:
    """`word` in `text` as a whole word, case-insensitive ("AST" is not in "blasts")."""
    return re.search(_WORD_EDGE.format(re.escape(word.lower())), text.lower()) is not None
