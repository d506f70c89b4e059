"""Unit conversion against the protocol's alias tables (matched case-insensitively, spaces ignored)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from .model import Coded


def unit_key(text: str) -> str:
    return "".join(text.split()).lower()


# The lowered alias tables are cached by value (the table's items), not by identity: a protocol
# edited in place still gets fresh tables. Building them on every call was a hot spot (BENCHMARKS.md).
@lru_cache(maxsize=256)
def _lowered_table(items: tuple[tuple[str, Decimal], ...]) -> dict[str, Decimal]:
    return {unit_key(k): v for k, v in items}


@lru_cache(maxsize=256)
def _alias_keys(aliases: tuple[str, ...]) -> frozenset[str]:
    return frozenset(unit_key(a) for a in aliases)


def factor(unit: Coded, table: dict[str, Decimal]) -> Decimal | None:
    """The table's factor for a unit: its identifier first, else its text. None when unknown."""
    lowered = _lowered_table(tuple(table.items()))
    for candidate in (unit.code, unit.text):
        if candidate:
            key = unit_key(candidate)
            if key in lowered:
                return lowered[key]
    return None


def is_one_of(unit: Coded, aliases: list[str]) -> bool:
    keys = _alias_keys(tuple(aliases))
    return any(c and unit_key(c) in keys for c in (unit.code, unit.text))


def unit_label(unit: Coded) -> str:
    return unit.code or unit.text or "(no unit)"
