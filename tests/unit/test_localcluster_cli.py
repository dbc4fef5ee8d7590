"""`python -m localcluster`: which cluster a command acts on, and how `node notice` is parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import __main__ as cli
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


def _recording_cluster(calls: list[tuple[object, ...]]) -> type:
    """A stand-in for Cluster that records the node command it is given in CALLS."""

    class RecordingCluster:
        def __init__(self, state_dir: Path) -> None:
            self.dir = state_dir

        def running(self) -> bool:
            return True

        def notice_node(self, name: str, taint: str, value: str | None) -> str:
            calls.append((self.dir, name, taint, value))
            return value or ""

    return RecordingCluster


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["spot-1"], ("spot-1", "aws-node-termination-handler/spot-itn", None)),
        (["spot-2", "--taint", "karpenter.sh/disrupted", "--value", ""], ("spot-2", "karpenter.sh/disrupted", "")),
        (
            ["--taint", "cloud.google.com/impending-node-termination", "--value", "e-1", "spot-1"],
            ("spot-1", "cloud.google.com/impending-node-termination", "e-1"),
        ),
    ],
)
def test_node_notice_parses_taint_and_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], expected: tuple[str, str, str | None]
) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli, "Cluster", _recording_cluster(calls))
    assert main(["--state-dir", str(tmp_path), "node", "notice", *args]) == 0
    assert calls == [(tmp_path, *expected)]


def test_node_notice_needs_a_node_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["node", "notice"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: name" in capsys.readouterr().err


def test_node_notice_without_a_running_cluster_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"no cluster is running in {tmp_path}; `up` first"):
        main(["--state-dir", str(tmp_path), "node", "notice", "spot-1"])


def test_node_notice_on_a_node_the_cluster_does_not_have_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli.Cluster, "running", lambda _self: True)
    with pytest.raises(SystemExit, match=f"there is no node spot-1 in {tmp_path}"):
        main(["--state-dir", str(tmp_path), "node", "notice", "spot-1"])


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--state-dir", "{dir}"],
        ["--state-dir", "{other}", "status", "--state-dir", "{dir}"],
        ["node", "kill", "spot-1", "--state-dir", "{dir}"],
        ["node", "--state-dir", "{dir}", "notice", "spot-1"],
    ],
)
def test_the_state_dir_may_come_after_the_subcommand(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    monkeypatch.setenv("LOCALCLUSTER_STATE_DIR", str(tmp_path / "from-env"))
    try:
        said = str(main([a.format(dir=tmp_path / "given", other=tmp_path / "other") for a in args]))
    except SystemExit as stopped:
        said = str(stopped.code)
    said += capsys.readouterr().err
    assert f"in {tmp_path / 'given'}" in said, said  # "no cluster in DIR", "no cluster is running in DIR"
    assert "unrecognized" not in said
    assert "from-env" not in said
    assert "other" not in said
