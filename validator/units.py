"""Unit conversion against the protocol's alias tables (matched case-insensitively, spaces ignored)."""

from __future__ import annotations

from decimal import Decimal

from .model import Coded


def unit_key(text: str) -> str:
    return "".join(text.split()).lower()


def factor(unit: Coded, table: dict[str, Decimal]) -> Decimal | None:
    """The table's factor for a unit: its identifier first, else its text. None when unknown."""
    lowered = {unit_key(k): v for k, v in table.items()}
    for candidate in (unit.code, unit.text):
        if candidate and unit_key(candidate) in lowered:
            return lowered[unit_key(candidate)]
    return None


def is_one_of(unit: Coded, aliases: list[str]) -> bool:
    keys = {unit_key(a) for a in aliases}
    return any(c and unit_key(c) in keys for c in (unit.code, unit.text))


def unit_label(unit: Coded) -> str:
    return unit.code or unit.text or "(no unit)"
