"""How many hypothesis examples a property runs: `n` in `make test`, `n x RXGATE_FUZZ_SCALE` under
`make fuzz` (scale 20) and `make soak` (scale 50).

At scale 1 the examples are derandomized (the same ones every run: `make test` never turns red by the luck
of a draw, and its time is the same every run); a larger scale draws new ones each run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("RXGATE_FUZZ_SCALE", "1")))


def examples(n: int, *, extra_health_checks: tuple[HealthCheck, ...] = ()) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, *extra_health_checks])
