"""resumeFrom: restore from another run's checkpoints while this run has none; never write there."""

from __future__ import annotations

from pathlib import Path

import pytest
from spotrun import Checkpoint, PermanentStorageError, Settings
from spotrun._storage import LocalStorage


def test_resume_from_is_read_until_this_run_has_its_own(tmp_path: Path) -> None:
    Checkpoint(LocalStorage(tmp_path / "old-run"), attempt=7).write(b"old progress")
    source_files = sorted(p.name for p in (tmp_path / "old-run").rglob("*"))
    settings = Settings.from_env(
        {
            "SPOTRUN_CHECKPOINT_URI": str(tmp_path / "new-run"),
            "SPOTRUN_RESUME_FROM": (tmp_path / "old-run").as_uri(),
            "SPOTRUN_ATTEMPT": "1",
        }
    )
    cp = settings.checkpoint()
    assert cp.prev_exists()
    assert cp.read() == b"old progress"
    cp.write(b"new progress")
    assert cp.read() == b"new progress"
    assert Checkpoint(LocalStorage(tmp_path / "new-run"), attempt=2).read() == b"new progress"
    assert sorted(p.name for p in (tmp_path / "old-run").rglob("*")) == source_files  # untouched


def test_a_resume_from_source_is_never_written(tmp_path: Path) -> None:
    source = LocalStorage(tmp_path / "src", read_only=True)
    with pytest.raises(PermanentStorageError, match="read-only"):
        Checkpoint(source).write(b"x")
