"""The checkpoint commit protocol against a local directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from spotrun._storage import LocalStorage

from tests.gang_cases import *  # noqa: F403 - and a gang's
from tests.hardening_cases import *  # noqa: F403 - and a hostile writer's, a crashing task's, a second writer's
from tests.protocol_cases import *  # noqa: F403 - the shared cases are this module's tests
from tests.protocol_cases import MakeStorage


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def make_storage(store_root: Path) -> MakeStorage:
    return lambda: LocalStorage(store_root)


@pytest.fixture
def storage_spec(store_root: Path) -> dict[str, str]:
    return {"kind": "local", "root": str(store_root)}


@pytest.fixture
def storage_env(store_root: Path) -> dict[str, str]:
    return {"SPOTRUN_CHECKPOINT_URI": store_root.as_uri()}
