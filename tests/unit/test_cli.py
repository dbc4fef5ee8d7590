"""The `spotrun` command: checkpoints list/show/download and the directory mode (restore, sync)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import spotrun

from tests.integration.helpers import wait_for
from tests.protocol_cases import tree, write_tree


def spotrun_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spotrun", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_checkpoints_list_show_download(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cp = spotrun.Checkpoint(spotrun.open_storage(str(store)), attempt=2)
    cp.write(b"first", step=10)
    cp.save(write_tree(tmp_path / "d", {"w.bin": b"weights"}), step=20)

    listing = spotrun_cli("checkpoints", "list", store.as_uri())
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "ATTEMPT", "STEP", "FILES", "SIZE", "TIME"]
    assert [line.split()[:3] for line in lines[1:]] == [["000002-000002", "2", "20"], ["000002-000001", "2", "10"]]
    as_json = json.loads(spotrun_cli("checkpoints", "list", str(store), "--json").stdout)
    assert [c["step"] for c in as_json] == [20, 10]

    shown = json.loads(spotrun_cli("checkpoints", "show", str(store)).stdout)
    assert (shown["id"], shown["files"][0]["path"]) == ("000002-000002", "w.bin")
    older = json.loads(spotrun_cli("checkpoints", "show", str(store), "000002-000001").stdout)
    assert older["step"] == 10

    assert spotrun_cli("checkpoints", "download", str(store), str(tmp_path / "out")).returncode == 0
    assert tree(tmp_path / "out") == {"w.bin": b"weights"}


def test_checkpoints_show_of_an_unknown_id_is_a_clear_error(tmp_path: Path) -> None:
    spotrun.Checkpoint(spotrun.open_storage(str(tmp_path)), attempt=1).write(b"x")
    shown = spotrun_cli("checkpoints", "show", str(tmp_path), "000009-000009")
    assert shown.returncode == 2
    assert "no checkpoint '000009-000009'" in shown.stderr


def test_directory_mode_restores_syncs_changes_and_commits_on_sigterm(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"SPOTRUN_CHECKPOINT_URI": str(store), "SPOTRUN_ATTEMPT": "1"}
    work = tmp_path / "work"
    assert spotrun_cli("restore", str(work), env=env).returncode == 0  # nothing yet: starts empty
    write_tree(work, {"state/a": b"a" * 100, "state/b": b"b" * 100, "log.txt": b"step 1\n"})
    storage = spotrun.open_storage(str(store))
    reader = spotrun.Checkpoint(storage, attempt=9)

    sync = subprocess.Popen(
        [sys.executable, "-m", "spotrun", "sync", str(work), "--interval", "0.2"],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(reader.list, 30, "the first sync commit")
        data_before = {key for key, _ in storage.list("data/")}
        (work / "log.txt").write_bytes(b"step 1\nstep 2\n")
        wait_for(lambda: len(reader.list()) >= 2, 30, "a commit of the change")
        uploaded = {key for key, _ in storage.list("data/")} - data_before
        assert [key.rsplit("/", 1)[1] for key in uploaded] == ["log.txt"]  # only what changed
        (work / "final.txt").write_bytes(b"written just before SIGTERM")
        sync.send_signal(signal.SIGTERM)
        _, err = sync.communicate(timeout=30)
    finally:
        sync.kill()
    assert sync.returncode == 0, err
    restored = tmp_path / "next-attempt"
    assert spotrun_cli("restore", str(restored), env={**env, "SPOTRUN_ATTEMPT": "2"}).returncode == 0
    assert tree(restored) == tree(work)
