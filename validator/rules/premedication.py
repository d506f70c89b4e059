"""go.premedication — TODO (being written)."""

from __future__ import annotations

from ..findings import Finding
from ..model import Order, OrderSet
from ..protocol import Protocol
from .base import DoseContext, Rule

RULE_ID = "go.premedication"


def belonging_premedications(order_set: OrderSet, go_doses: list[Order], protocol: Protocol) -> dict[int, int]:
    """Map premedication order index -> index of the GO dose it prepares (nearest start within the window)."""
    return {}


def check(ctx: DoseContext) -> list[Finding]:
    return []


RULE = Rule(RULE_ID, check, (), __doc__ or "")
