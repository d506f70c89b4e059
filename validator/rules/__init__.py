"""The rule catalogue: one module per area, each declaring `RULE` (id, check, parameters, doc).

Rules run on each GO dose in this order; every one runs (a pharmacist sees all
problems at once, not the first).
"""

from __future__ import annotations

from . import cd33, dose, eligibility, hsct, infusion, liver, premedication, route, schedule, wbc
from .base import DoseContext, Rule

DOSE_RULES: list[Rule] = [
    eligibility.RULE,
    dose.RULE,
    route.RULE,
    infusion.RULE,
    schedule.RULE,
    premedication.RULE,
    cd33.RULE,
    wbc.RULE,
    liver.RULE,
    hsct.RULE,
]

__all__ = ["DOSE_RULES", "DoseContext", "Rule"]
