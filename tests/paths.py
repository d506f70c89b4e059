"""Where the tests find the repository and the optional shared sample folder."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = Path(os.environ.get("RXGATE_SHARED_DIR", ROOT.parent / "shared"))  # extra sample messages, optional
EXAMPLES = ROOT / "examples"
