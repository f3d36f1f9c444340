"""Shared pytest fixtures. Helpers that tests import live in `tests/support/`, not here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.manifests import write_manifest


@pytest.fixture
def make_manifest(tmp_path: Path) -> Callable[..., Path]:
    """`make_manifest(**kwargs)` writes a manifest with `write_manifest` under `tmp_path/data` and returns it."""

    def make(**kwargs) -> Path:
        return write_manifest(tmp_path / "data", **kwargs)

    return make
