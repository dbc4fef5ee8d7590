"""The `spotrun` command: checkpoints list/show/download and the directory mode (restore, sync)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import spotrun
from spotrun._cli import main

from tests.gang_cases import together
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


def test_checkpoints_download_of_a_gangs_checkpoint_gives_every_ranks_part(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ranks = [spotrun.Checkpoint(spotrun.open_storage(str(store)), rank=r, ranks=2) for r in (0, 1)]
    together(ranks, lambda r, cp: cp.save(write_tree(tmp_path / f"src-{r}", {f"shard-{r}": bytes([r])}), step=3))
    done = spotrun_cli("checkpoints", "download", str(store), str(tmp_path / "all"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "all") == {"rank-0/shard-0": b"\x00", "rank-1/shard-1": b"\x01"}
    one = spotrun_cli("checkpoints", "download", str(store), str(tmp_path / "one"), "--rank", "1")
    assert one.returncode == 0, one.stderr
    assert tree(tmp_path / "one") == {"shard-1": b"\x01"}
    wrong = spotrun_cli("checkpoints", "download", str(store), str(tmp_path / "no"), "--rank", "2")
    assert wrong.returncode == 2
    assert "--rank 2: checkpoint 000001-000001 has ranks 0..1" in wrong.stderr
    assert not (tmp_path / "no").exists()


def test_checkpoints_show_of_an_unknown_id_is_a_clear_error(tmp_path: Path) -> None:
    spotrun.Checkpoint(spotrun.open_storage(str(tmp_path)), attempt=1).write(b"x")
    shown = spotrun_cli("checkpoints", "show", str(tmp_path), "000009-000009")
    assert shown.returncode == 2
    assert "no checkpoint '000009-000009'" in shown.stderr


def test_checkpoints_download_into_a_directory_it_cannot_write_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spotrun.Checkpoint(spotrun.open_storage(str(tmp_path / "store")), attempt=1).write(b"x")
    target = tmp_path / "read-only"
    target.mkdir()
    make_temp = tempfile.mkdtemp

    def refused(*args: Any, **kwargs: Any) -> str:  # as mkdir(2) answers in a directory without write permission
        where = kwargs.get("dir")
        if where is not None and Path(where) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(target / ".spotrun-restore-x"))
        return make_temp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", refused)  # root may write anywhere: no chmod would do
    code = main(["checkpoints", "download", str(tmp_path / "store"), str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"spotrun: cannot write into {target}: Permission denied; give a directory you can write\n"


def test_a_tasks_own_os_error_keeps_its_traceback(tmp_path: Path) -> None:
    task = tmp_path / "task.py"
    task.write_text("def t():\n    open('/nonexistent/input.csv')\n")
    run = spotrun_cli("run", str(task), "t")
    assert run.returncode == 1
    assert "Traceback" in run.stderr
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/input.csv'" in run.stderr


def test_directory_mode_restores_syncs_changes_and_commits_on_sigterm(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"SPOTRUN_CHECKPOINT_URI": str(store), "SPOTRUN_ATTEMPT": "1"}
    work = tmp_path / "work"
    assert spotrun_cli("restore", str(work), env=env).returncode == 0  # nothing yet: starts empty
    # Over the 64 KiB a checkpoint may keep inside its manifest: the files are objects of their own.
    write_tree(work, {"state/a": b"a" * (40 << 10), "state/b": b"b" * (40 << 10), "log.txt": b"step 1\n"})
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


def handles_sigterm(pid: int) -> bool:
    """Whether the process caught SIGTERM (Linux: /proc's SigCgt mask), as `sync` does before its loop."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_directory_mode_sync_commits_at_once_on_an_interruption_notice(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {
        "SPOTRUN_CHECKPOINT_URI": str(store),
        "SPOTRUN_ATTEMPT": "2",
        "SPOTRUN_NOTICE_FILE": str(tmp_path / "notice"),
    }
    reader = spotrun.Checkpoint(spotrun.open_storage(str(store)), attempt=9)
    spotrun.Checkpoint(spotrun.open_storage(str(store)), attempt=1).save(
        write_tree(tmp_path / "first", {"state": b"step 1"}), step=1
    )
    work = tmp_path / "work"
    assert spotrun_cli("restore", str(work), env=env).returncode == 0  # what sync starts from is committed

    sync = subprocess.Popen(
        [sys.executable, "-m", "spotrun", "sync", str(work), "--interval", "60"],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: handles_sigterm(sync.pid), 30, "sync to start")
        # Another size than step 1's: were sync still looking at what restore left, it must not
        # take this for the restored checkpoint (it compares sizes).
        (work / "state").write_bytes(b"step two")
        temp = tmp_path / ".notice.tmp"  # replaced atomically, as the kubelet does
        temp.write_text('{"time": "2026-12-02T11:40:00Z", "reason": "example.com/reclaim", "kind": "Reclaim"}')
        os.replace(temp, tmp_path / "notice")
        noticed = time.monotonic()
        wait_for(lambda: len(reader.list()) >= 2, 10, "a commit on the notice")
        assert time.monotonic() - noticed < 5  # long before the 60 s interval
        # Withdrawn (an uncordon), then a new notice (a second cordon): committed for again, though
        # nothing changed, since its drain waits for a checkpoint newer than this notice.
        for text in ("", '{"time": "2026-12-02T11:50:00Z", "reason": "Cordoned", "kind": "Drain"}'):
            temp.write_text(text)
            os.replace(temp, tmp_path / "notice")
        wait_for(lambda: len(reader.list()) >= 3, 10, "a commit on the second notice")
        sync.send_signal(signal.SIGTERM)
        _, err = sync.communicate(timeout=30)
    finally:
        sync.kill()
    assert sync.returncode == 0, err
    assert f"Committed {work} on interruption notice (example.com/reclaim)" in err
    assert f"Committed {work} on interruption notice (Cordoned)" in err
    assert len(reader.list()) == 3  # nothing changed after the notices: SIGTERM committed nothing more
    restored = tmp_path / "next-attempt"
    assert spotrun_cli("restore", str(restored), env={**env, "SPOTRUN_ATTEMPT": "3"}).returncode == 0
    assert tree(restored) == {"state": b"step two"}
