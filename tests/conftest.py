"""Shared fixtures. The shared/ folder sits beside the repository (../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("RXGATE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared folder not found at {SHARED} (set RXGATE_SHARED_DIR)")
    return SHARED
