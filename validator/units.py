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


def _identifier_or_text(unit: Coded) -> str:
    """Units by code first (docs/protocol.md, "Units"): the identifier when there is one, never a
    fall-back to the text (`mg/kg^mg` is mg/kg, an unknown unit); the text only when the identifier is empty."""
    return unit.code if unit.code.strip() else unit.text


def factor(unit: Coded, table: dict[str, Decimal]) -> Decimal | None:
    """The table's factor for a unit (its identifier, else its text when the identifier is empty). None when unknown."""
    candidate = _identifier_or_text(unit)
    if not candidate:
        return None
    return _lowered_table(tuple(table.items())).get(unit_key(candidate))


def is_one_of(unit: Coded, aliases: list[str]) -> bool:
    candidate = _identifier_or_text(unit)
    return bool(candidate) and unit_key(candidate) in _alias_keys(tuple(aliases))


def unit_label(unit: Coded) -> str:
    return unit.code or unit.text or "(no unit)"
