"""Fixtures for every tier."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def say(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Writes a line to the terminal whatever pytest captures: a harness's seed and statistics."""

    def write(line: str) -> None:
        with capsys.disabled():
            print(f"\n{line}", flush=True)

    return write
