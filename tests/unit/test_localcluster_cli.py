"""`python -m localcluster`: which cluster a command acts on."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster.__main__ import main


def test_the_state_dir_comes_from_the_env_file_export(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCALCLUSTER_STATE_DIR", str(tmp_path / "from-env"))
    assert main(["status"]) == 1
    assert f"no cluster in {tmp_path / 'from-env'}" in capsys.readouterr().err


def test_an_explicit_state_dir_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCALCLUSTER_STATE_DIR", str(tmp_path / "from-env"))
    assert main(["--state-dir", str(tmp_path / "explicit"), "status"]) == 1
    assert f"no cluster in {tmp_path / 'explicit'}" in capsys.readouterr().err
