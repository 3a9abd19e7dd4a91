"""Shared fixtures: the offline assets mirror (see ../shared/assets/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The assets mirror from $DFPRACTISE_ASSETS (default: ../shared/assets); skip tests if absent."""
    path = Path(os.environ.get("DFPRACTISE_ASSETS") or REPO_ROOT.parent / "shared" / "assets")
    path = path.expanduser().resolve()
    if not (path / "weights").is_dir():
        pytest.skip(f"offline assets not found at {path} (set DFPRACTISE_ASSETS to the mirror)")
    return path
