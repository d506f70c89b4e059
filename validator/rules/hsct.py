"""go.hsct — TODO (being written)."""

from __future__ import annotations

from ..findings import Finding
from .base import DoseContext, Rule

RULE_ID = "go.hsct"


def check(ctx: DoseContext) -> list[Finding]:
    return []


RULE = Rule(RULE_ID, check, (), __doc__ or "")
