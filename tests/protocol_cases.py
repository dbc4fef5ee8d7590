"""The checkpoint commit protocol's cases, run against every Storage implementation.

A test module imports these (`from tests.protocol_cases import *`) and defines the fixture
`make_storage`: a callable that returns a fresh Storage handle on one shared, initially empty
location each time it is called.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from spotrun import (
    Checkpoint,
    CheckpointError,
    CheckpointUsageError,
    NoIntactCheckpointError,
    StorageError,
    TransientStorageError,
    _checkpoint,
    _snapshot,
)
from spotrun._context import Settings
from spotrun._manifest import manifest_key
from spotrun._storage import LocalStorage, S3Storage, Storage

MakeStorage = Callable[[], Storage]
REPO = Path(__file__).resolve().parent.parent


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`: a restore leaves nothing of Spotrun's among them."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def settle() -> None:
    """Waits out the filesystem's timestamp tick: a file changed within it of a scan is uploaded again
    by the next incremental commit, whatever its stamp ("racy git")."""
    time.sleep(_snapshot.RACY_NS * 2 / 1e9)


def objects_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small checkpoints as objects of their own, not inside the manifest: for cases that tamper with them."""
    monkeypatch.setattr(_checkpoint, "INLINE_MAX", -1)


def empty_dir(path: Path) -> Path:
    """A new directory to restore into (restore, as Flyte's, needs one that exists)."""
    path.mkdir(parents=True)
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


class FailingStorage:
    """Wraps a Storage and fails its `fail_at`-th call (counting every method) with a transient error."""

    def __init__(self, inner: Storage, fail_at: int) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.fail_at = fail_at
        self.calls = 0
        self.log: list[str] = []  # the methods called, in order

    def _tick(self, name: str) -> None:
        self.calls += 1
        self.log.append(name)
        if self.calls == self.fail_at:
            raise TransientStorageError(f"injected failure of call {self.calls} ({name})")

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._tick("put")
        self.inner.put(key, data, create_only=create_only)

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        self._tick("put_stream")
        self.inner.put_stream(key, stream)

    def put_file(self, key: str, source: Path) -> None:
        self._tick("put_file")
        self.inner.put_file(key, source)

    def get(self, key: str) -> bytes:
        self._tick("get")
        return self.inner.get(key)

    def get_stream(self, key: str, sink: IO[bytes]) -> None:
        self._tick("get_stream")
        self.inner.get_stream(key, sink)

    def get_file(self, key: str, target: Path, size: int | None = None) -> tuple[int, str]:
        self._tick("get_file")
        return self.inner.get_file(key, target, size)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        self._tick("list")
        return self.inner.list(prefix)

    def list_dirs(self, prefix: str) -> list[str]:
        self._tick("list_dirs")
        return self.inner.list_dirs(prefix)

    def delete(self, keys: Sequence[str]) -> None:
        self._tick("delete")
        self.inner.delete(keys)

    def newest(self, prefix: str) -> float | None:
        self._tick("newest")
        return self.inner.newest(prefix)

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        self._tick("list_uploads")
        return self.inner.list_uploads(prefix)

    def abort_upload(self, key: str, upload: str) -> None:
        self._tick("abort_upload")
        self.inner.abort_upload(key, upload)


# ----- basics ----------------------------------------------------------------------------------------


def test_read_after_write_and_prev_exists(make_storage: MakeStorage) -> None:
    cp = Checkpoint(make_storage(), attempt=1)
    assert cp.read() is None
    assert not cp.prev_exists()
    assert cp.restore() is None
    info = cp.write(b"hello", step=7)
    assert (info.attempt, info.sequence, info.step, info.size) == (1, 1, 7, 5)
    assert cp.read() == b"hello"
    cp.write(b"world")
    assert cp.read() == b"world"
    assert Checkpoint(make_storage(), attempt=2).prev_exists()


def test_a_new_attempt_restores_the_newest_of_all_earlier_attempts(make_storage: MakeStorage) -> None:
    Checkpoint(make_storage(), attempt=1).write(b"one")
    # Attempt 2 died before writing anything; attempt 3 must still find attempt 1's progress.
    Checkpoint(make_storage(), attempt=2)
    third = Checkpoint(make_storage(), attempt=3)
    assert third.read() == b"one"
    third.write(b"three")
    assert Checkpoint(make_storage(), attempt=4).read() == b"three"


def test_directory_round_trip_keeps_tree_modes_and_empty_dirs(make_storage: MakeStorage, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"a.txt": b"a", "sub/b.bin": os.urandom(1000), "sub/deep/c": b""})
    (source / "run.sh").write_bytes(b"#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    (source / "empty").mkdir()
    cp = Checkpoint(make_storage(), attempt=1)
    info = cp.save(source, step=3)
    assert info.files == 4
    restored = Checkpoint(make_storage(), attempt=2).restore(empty_dir(tmp_path / "dst"))
    assert restored == tmp_path / "dst"
    assert tree(restored) == tree(source)
    assert (restored / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (restored / "empty").is_dir()


def test_restore_is_idempotent_and_replaces_an_older_restore(make_storage: MakeStorage, tmp_path: Path) -> None:
    cp = Checkpoint(make_storage(), attempt=1)
    cp.save(write_tree(tmp_path / "v1", {"old.txt": b"1", "keep.txt": b"1"}))
    target = empty_dir(tmp_path / "restored")
    reader = Checkpoint(make_storage(), attempt=2)
    assert reader.restore(target) == target
    assert reader.restore(target) == target  # the same checkpoint again: nothing changes
    assert reader.restore(empty_dir(tmp_path / "elsewhere")) == target  # as Flyte: downloaded once
    assert tree(target) == {"old.txt": b"1", "keep.txt": b"1"}
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt", "old.txt"]  # no file of Spotrun's
    counter = FailingStorage(make_storage(), fail_at=0)
    assert Checkpoint(counter, attempt=2).restore(target) == target  # another process: same checkpoint
    assert [c for c in counter.log if c != "list"] == ["get"]  # its manifest only: the files are proved in place
    cp.save(write_tree(tmp_path / "v2", {"keep.txt": b"2", "new.txt": b"2"}))
    Checkpoint(make_storage(), attempt=3).restore(target)
    assert tree(target) == {"keep.txt": b"2", "new.txt": b"2"}  # what the older restore put there went


def test_save_file_and_stream(make_storage: MakeStorage, tmp_path: Path) -> None:
    cp = Checkpoint(make_storage(), attempt=1)
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    cp.save(source)
    assert tree(cp.restore(empty_dir(tmp_path / "a")) or tmp_path) == {"model.pt": b"weights"}
    with source.open("rb") as stream:
        cp.save(stream)
    assert cp.read() == b"weights"


def test_directory_context_manager_commits_only_on_success(make_storage: MakeStorage) -> None:
    cp = Checkpoint(make_storage(), attempt=1)

    def crash_mid_save() -> None:
        with cp.directory(step=1) as d:
            (d / "half").write_bytes(b"x")
            raise RuntimeError("framework crashed mid-save")

    with pytest.raises(RuntimeError):
        crash_mid_save()
    assert cp.latest() is None
    with cp.directory(step=2) as d:
        (d / "whole").write_bytes(b"y")
    latest = cp.latest()
    assert latest is not None
    assert (latest.step, latest.files) == (2, 1)


def test_read_of_a_directory_checkpoint_says_to_use_restore(make_storage: MakeStorage, tmp_path: Path) -> None:
    cp = Checkpoint(make_storage(), attempt=1)
    cp.save(write_tree(tmp_path / "d", {"a": b"1", "b": b"2"}))
    with pytest.raises(CheckpointError, match="use restore"):
        cp.read()


def test_large_file_streams_and_verifies(make_storage: MakeStorage, tmp_path: Path) -> None:
    payload = os.urandom(20 << 20)  # over the 8 MiB single-request threshold: multipart
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob").write_bytes(payload)
    Checkpoint(make_storage(), attempt=1).save(tmp_path / "big")
    restored = Checkpoint(make_storage(), attempt=2).restore(empty_dir(tmp_path / "out"))
    assert restored is not None
    assert (restored / "blob").read_bytes() == payload


# ----- fencing ---------------------------------------------------------------------------------------


def test_a_zombie_older_attempt_committing_later_loses(make_storage: MakeStorage) -> None:
    zombie = Checkpoint(make_storage(), attempt=2)
    zombie.write(b"zombie-1")
    current = Checkpoint(make_storage(), attempt=3)
    assert current.read() == b"zombie-1"
    current.write(b"current")
    zombie.write(b"zombie-2")  # the old pod is still running and commits after the new one
    zombie.write(b"zombie-3")
    assert Checkpoint(make_storage(), attempt=4).read() == b"current"
    assert current.read() == b"current"


def test_two_writers_of_one_attempt_never_overwrite_each_other(make_storage: MakeStorage) -> None:
    first = Checkpoint(make_storage(), attempt=5)
    second = Checkpoint(make_storage(), attempt=5)
    a = first.write(b"first")
    b = second.write(b"second")  # same attempt, same next sequence: the manifest id is taken
    assert a.id != b.id
    ids = [i.id for i in Checkpoint(make_storage(), attempt=6).list()]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 2
    assert Checkpoint(make_storage(), attempt=6).read() == b"second"


# ----- corruption --------------------------------------------------------------------------------------


def _data_keys(storage: Storage, cid: str) -> list[str]:
    manifest = json.loads(storage.get(manifest_key(cid)))
    return [f["key"] for f in manifest["files"]]


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_one_before(
    make_storage: MakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects_only(monkeypatch)
    cp = Checkpoint(make_storage(), attempt=1)
    cp.write(b"good")
    bad = cp.write(b"newer")
    storage = make_storage()
    (key,) = _data_keys(storage, bad.id)
    storage.put(key, b"NEWER")  # same size, different bytes: only the digest can tell
    assert Checkpoint(make_storage(), attempt=2).read() == b"good"


def test_a_tampered_small_checkpoint_in_its_manifest_is_skipped(make_storage: MakeStorage) -> None:
    cp = Checkpoint(make_storage(), attempt=1)
    cp.write(b"good")
    bad = cp.write(b"newer")
    storage = make_storage()
    body = json.loads(storage.get(manifest_key(bad.id)))
    assert body["files"][0]["key"] == ""  # committed inside the manifest
    body["files"][0]["inline"] = base64.b64encode(b"NEWER").decode()  # same size: only the digest can tell
    storage.put(manifest_key(bad.id), json.dumps(body).encode())
    reader = Checkpoint(make_storage(), attempt=2)
    assert reader.read() == b"good"
    assert reader.corrupt == [bad.id]
    body["files"][0]["inline"] = "not base64!"
    storage.put(manifest_key(bad.id), json.dumps(body).encode())
    assert Checkpoint(make_storage(), attempt=2).read() == b"good"


def test_a_missing_object_or_garbled_manifest_is_skipped(
    make_storage: MakeStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects_only(monkeypatch)
    cp = Checkpoint(make_storage(), attempt=1)
    cp.save(write_tree(tmp_path / "v1", {"x": b"v1"}))
    missing = cp.save(write_tree(tmp_path / "v2", {"x": b"v2"}))
    garbled = cp.save(write_tree(tmp_path / "v3", {"x": b"v3"}))
    storage = make_storage()
    storage.delete(_data_keys(storage, missing.id))
    storage.put(manifest_key(garbled.id), b"{not json")
    restored = Checkpoint(make_storage(), attempt=2).restore(empty_dir(tmp_path / "out"))
    assert restored is not None
    assert tree(restored) == {"x": b"v1"}


# ----- retention -------------------------------------------------------------------------------------------


def test_retention_keeps_the_newest_k_and_deletes_their_data(
    make_storage: MakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects_only(monkeypatch)
    cp = Checkpoint(make_storage(), attempt=1, keep=2)
    for n in range(5):
        cp.write(f"v{n}".encode())
    storage = make_storage()
    infos = Checkpoint(storage, attempt=2).list()
    assert [i.sequence for i in infos] == [5, 4]
    data = [k for k, _ in storage.list("data/")]
    assert sorted(data) == sorted(_data_keys(storage, infos[0].id) + _data_keys(storage, infos[1].id))


def test_the_restored_checkpoint_survives_until_a_newer_commit(make_storage: MakeStorage) -> None:
    Checkpoint(make_storage(), attempt=1, keep=1).write(b"progress")
    resumed = Checkpoint(make_storage(), attempt=2, keep=1)
    assert resumed.read() == b"progress"
    assert [i.attempt for i in resumed.list()] == [1]
    resumed.write(b"more")
    assert [i.attempt for i in resumed.list()] == [2]


def test_a_zombie_never_deletes_a_newer_attempts_checkpoints(make_storage: MakeStorage) -> None:
    Checkpoint(make_storage(), attempt=3, keep=1).write(b"newer attempt")
    zombie = Checkpoint(make_storage(), attempt=2, keep=1)
    for n in range(3):
        zombie.write(f"zombie {n}".encode())
    assert Checkpoint(make_storage(), attempt=4).read() == b"newer attempt"


def test_incremental_sync_uploads_only_what_changed(
    make_storage: MakeStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects_only(monkeypatch)
    work = write_tree(tmp_path / "w", {f"f{i}": os.urandom(100) for i in range(5)})
    settle()
    cp = Checkpoint(make_storage(), attempt=1, keep=2)
    first = cp.sync_directory(work)
    (work / "f0").write_bytes(b"changed")
    settle()
    storage = make_storage()
    before = {k for k, _ in storage.list("data/")}
    second = cp.sync_directory(work)
    added = {k for k, _ in storage.list("data/")} - before
    assert [k.rsplit("/", 1)[1] for k in added] == ["f0"]
    assert second.id != first.id
    for _ in range(3):  # retention must keep the objects the newest manifests still point at
        (work / "f1").write_bytes(os.urandom(10))
        cp.sync_directory(work)
    restored = Checkpoint(make_storage(), attempt=2).restore(empty_dir(tmp_path / "out"))
    assert restored is not None
    assert tree(restored) == tree(work)


# ----- failures ----------------------------------------------------------------------------------------------


def _count_calls(make_storage: MakeStorage, action: Callable[[Checkpoint], Any]) -> int:
    probe = FailingStorage(make_storage(), fail_at=-1)
    action(Checkpoint(probe, attempt=9))  # type: ignore[arg-type]
    return probe.calls


def test_a_failure_at_any_storage_call_of_a_commit_leaves_old_or_new_whole(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    old = write_tree(tmp_path / "old", {"a": b"old-a", "b/c": b"old-c"})
    new = write_tree(tmp_path / "new", {"a": b"new-a", "b/c": b"new-c", "d": b"new-d"})
    Checkpoint(make_storage(), attempt=1).save(old)
    calls = _count_calls(make_storage, lambda cp: cp.save(new))
    # Reset: the probe committed `new`; start over from a fresh prefix state for each failure point.
    assert calls >= 4
    for fail_at in range(1, calls + 1):
        storage = make_storage()
        for info in Checkpoint(storage, attempt=20).list():
            storage.delete([manifest_key(info.id)])
        Checkpoint(make_storage(), attempt=1).save(old)
        writer = Checkpoint(FailingStorage(make_storage(), fail_at), attempt=2)  # type: ignore[arg-type]
        with contextlib.suppress(StorageError):
            writer.save(new)
        restored = Checkpoint(make_storage(), attempt=3).restore(empty_dir(tmp_path / f"r{fail_at}"))
        assert restored is not None
        assert tree(restored) in (tree(old), tree(new)), f"failure at call {fail_at} left a mix"


def test_a_failure_during_restore_raises_and_leaves_the_target_alone(
    make_storage: MakeStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects_only(monkeypatch)
    Checkpoint(make_storage(), attempt=1).save(write_tree(tmp_path / "v1", {"a": b"1", "b": b"1"}))
    target = write_tree(tmp_path / "target", {"mine": b"untouched"})
    for fail_at in range(1, 5):
        reader = Checkpoint(FailingStorage(make_storage(), fail_at), attempt=2)  # type: ignore[arg-type]
        with pytest.raises(StorageError):
            reader.restore(target)
        assert tree(target) == {"mine": b"untouched"}


_KILL_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from spotrun import Checkpoint
    from tests.protocol_cases import storage_from_spec

    kill_at = int(sys.argv[1])
    inner = storage_from_spec({spec!r})

    class KillingStorage:
        calls = 0
        uri = inner.uri
        def __getattr__(self, name):
            method = getattr(inner, name)
            def call(*args, **kwargs):
                KillingStorage.calls += 1
                if KillingStorage.calls == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return method(*args, **kwargs)
            return call

    Checkpoint(KillingStorage(), attempt=2).save(Path({source!r}))
    print("completed")
    """
)


def test_a_writer_killed_at_every_step_of_a_commit_leaves_old_or_new_whole(
    make_storage: MakeStorage, storage_spec: dict[str, str], tmp_path: Path
) -> None:
    old = write_tree(tmp_path / "old", {"a": b"old-a", "b/c": b"old-c"})
    new = write_tree(tmp_path / "new", {"a": b"new-a" * 1000, "b/c": b"new-c", "d": b"new-d"})
    script = _KILL_WRITER.format(repo=str(REPO), spec=storage_spec, source=str(new))
    seen = set()
    for kill_at in range(1, 30):
        storage = make_storage()
        for info in Checkpoint(storage, attempt=20).list():
            storage.delete([manifest_key(info.id)])
        Checkpoint(make_storage(), attempt=1).save(old)
        run = subprocess.run(
            [sys.executable, "-c", script, str(kill_at)], capture_output=True, text=True, timeout=120, check=False
        )
        killed = run.returncode == -signal.SIGKILL
        assert killed or (run.returncode == 0 and "completed" in run.stdout), run.stderr
        restored = Checkpoint(make_storage(), attempt=3).restore(empty_dir(tmp_path / f"r{kill_at}"))
        assert restored is not None
        got = tree(restored)
        assert got in (tree(old), tree(new)), f"kill at call {kill_at} left a mix"
        seen.add("new" if got == tree(new) else "old")
        if not killed:
            break  # past the last call: the commit finished
    assert seen == {"old", "new"}  # killed before the manifest (old) and after it (new)


def storage_from_spec(spec: dict[str, str]) -> Storage:
    """Rebuilds a Storage in a subprocess from `storage_spec` (a dict of plain strings)."""
    if spec["kind"] == "local":
        return LocalStorage(Path(spec["root"]))
    return S3Storage(spec["bucket"], spec["prefix"])


_PREEMPTED_TASK = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    import spotrun

    step = 0

    @spotrun.on_preemption
    def final_checkpoint():
        spotrun.current_context().checkpoint.write(str(step).encode(), step=step)
        print("final checkpoint at", step, "with", round(spotrun.seconds_left()), "s left", flush=True)

    @spotrun.task
    def train():
        global step
        while True:
            step += 1
            time.sleep(0.01)
            if step == 20:
                print("running", flush=True)

    train()
    """
)


def test_sigterm_commits_a_final_checkpoint_within_the_grace(storage_env: dict[str, str]) -> None:
    env = {**os.environ, **storage_env, "SPOTRUN_TASKRUN": "t", "SPOTRUN_ATTEMPT": "1", "SPOTRUN_GRACE_SECONDS": "20"}
    script = _PREEMPTED_TASK.format(repo=str(REPO))
    with subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "final checkpoint at" in out
    final_step = int(out.split("final checkpoint at")[1].split()[0])
    reader = Settings.from_env({**storage_env, "SPOTRUN_ATTEMPT": "2"}).checkpoint()
    assert reader.read() == str(final_step).encode()
    latest = reader.latest()
    assert latest is not None
    assert latest.step == final_step >= 20


# ----- bad input, misuse and what a failed commit leaves ----------------------------------------------


def _everything(storage: Storage) -> list[str]:
    return [key for key, _ in storage.list("")]


@pytest.mark.parametrize(
    ("source", "error", "says"),
    [
        (Checkpoint, TypeError, "save\\(\\) takes a path"),
        (42, TypeError, "not int"),
        (b"raw bytes", TypeError, "commit bytes with write\\(\\)"),
        (io.StringIO("text"), TypeError, "open the file with 'rb'"),
        ("/nonexistent/model.pt", ValueError, "it does not exist"),
    ],
)
def test_save_refuses_bad_input_before_touching_storage(
    make_storage: MakeStorage, source: Any, error: type[Exception], says: str
) -> None:
    counter = FailingStorage(make_storage(), fail_at=0)
    cp = Checkpoint(counter, attempt=1)  # type: ignore[arg-type]
    with pytest.raises(error, match=says) as raised:
        cp.save(source)
    assert isinstance(raised.value, CheckpointUsageError)  # a ValueError too, as Flyte's errors
    assert counter.calls == 0
    assert cp.write(b"next").sequence == 1  # no sequence number was used up


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda cp: cp.write("text"), TypeError, "encode it first"),
        (lambda cp: cp.write(b"x", step="3"), TypeError, "step must be an int"),
        (lambda cp: cp.write(b"x", metadata={"at": object()}), TypeError, "JSON values"),
        (lambda cp: cp.write(b"x", metadata=["a"]), TypeError, "metadata must be a dict"),
        (lambda cp: cp.restore(3), TypeError, "restore\\(\\) takes a directory's path"),
    ],
)
def test_write_and_restore_refuse_bad_arguments(make_storage: MakeStorage, call: Any, error: type, says: str) -> None:
    storage = make_storage()
    cp = Checkpoint(storage, attempt=1)
    if "restore" in says:
        cp.write(b"there is one")
    before = _everything(storage)
    with pytest.raises(error, match=says):
        call(cp)
    assert _everything(storage) == before


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"storage": "s3://bucket/prefix"}, "storage must be a Storage"),
        ({"attempt": 0}, "attempt must be 1 or more"),
        ({"attempt": "2"}, "attempt must be an int"),
        ({"keep": 0}, "keep must be 1 or more"),
        ({"concurrency": 0}, "concurrency must be 1 or more"),
        ({"if_corrupt": "ignore"}, "if_corrupt must be one of start-over, raise"),
        ({"resume_from": "/old/run"}, "resume_from must be a Storage"),
    ],
)
def test_the_constructor_names_what_to_pass(make_storage: MakeStorage, options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Checkpoint(**{"storage": make_storage(), **options})


def test_restore_into_a_missing_directory_or_a_file_is_refused_as_flytes(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    Checkpoint(make_storage(), attempt=1).save(write_tree(tmp_path / "src", {"a": b"1"}))
    reader = Checkpoint(make_storage(), attempt=2)
    with pytest.raises(CheckpointUsageError, match="it does not exist; restore into an existing directory"):
        reader.restore(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="it is not a directory"):
        reader.restore(tmp_path / "file")
    assert Checkpoint(make_storage(), attempt=2).restore(empty_dir(tmp_path / "dir")) == tmp_path / "dir"


def test_a_commit_that_fails_midway_leaves_nothing_and_gives_its_sequence_back(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    class Breaks(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if self.sent >= 3 << 20:
                raise OSError("the disk went away")
            buffer[: len(buffer)] = b"x" * len(buffer)
            self.sent += len(buffer)
            return len(buffer)

    storage = make_storage()
    cp = Checkpoint(storage, attempt=1)
    with pytest.raises(OSError, match="the disk went away"):
        cp.save(io.BufferedReader(Breaks()))
    assert _everything(storage) == []
    assert cp.write(b"next").sequence == 1


def test_a_large_file_that_changes_while_it_is_saved_is_refused_and_leaves_nothing(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    class AppendsMidway(FailingStorage):  # the task writes on while its file uploads
        appended = False

        def put_file(self, key: str, source: Path) -> None:
            self.inner.put_file(key, source)
            if not self.appended:
                self.appended = True
                with source.open("ab") as f:
                    f.write(b"more")

    big = tmp_path / "model.bin"
    big.write_bytes(os.urandom(9 << 20))  # over the 8 MiB a file is read whole below
    storage = make_storage()
    cp = Checkpoint(AppendsMidway(storage, fail_at=0), attempt=1)  # type: ignore[arg-type]
    with pytest.raises(CheckpointUsageError, match=r"model\.bin changed while it was being saved"):
        cp.save(big)
    assert _everything(storage) == []
    assert cp.save(big).sequence == 1  # unchanged now: it commits, with its sequence given back
    assert Checkpoint(make_storage(), attempt=2).read() == big.read_bytes()


def test_a_lost_answer_to_the_manifest_put_is_found_committed(make_storage: MakeStorage) -> None:
    class LosesAnswer(FailingStorage):
        def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
            self.inner.put(key, data, create_only=create_only)
            if key.startswith("manifests/"):
                raise TransientStorageError("the answer was lost")

    info = Checkpoint(LosesAnswer(make_storage(), 0), attempt=1).write(b"landed")  # type: ignore[arg-type]
    assert info.sequence == 1
    assert Checkpoint(make_storage(), attempt=2).read() == b"landed"


def test_every_checkpoint_corrupt_is_loud_recorded_and_can_raise(
    make_storage: MakeStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    objects_only(monkeypatch)
    cp = Checkpoint(make_storage(), attempt=1)
    ids = [cp.write(b"one").id, cp.write(b"two").id]
    storage = make_storage()
    for cid in ids:
        storage.delete(_data_keys(storage, cid))
    reader = Checkpoint(make_storage(), attempt=2)
    assert reader.prev_exists()
    with caplog.at_level("ERROR", logger="spotrun.checkpoint"):
        assert reader.restore() is None
    assert reader.corrupt == ids[::-1]
    assert "every committed checkpoint" in caplog.text
    assert "starts from the beginning" in caplog.text
    watcher = Checkpoint(make_storage())  # as the operator reads: latest(), then the record from that listing
    watcher.latest()
    record = watcher.unrestorable()
    assert record is not None
    assert record["attempt"] == 2
    assert record["ids"] == ids[::-1]
    strict = Checkpoint(make_storage(), attempt=2, if_corrupt="raise")
    with pytest.raises(NoIntactCheckpointError, match="failed verification") as raised:
        strict.read()
    assert raised.value.ids == ids[::-1]
    # A later attempt that commits (it restored, or started over) clears the record at its sweep.
    later = Checkpoint(make_storage(), attempt=3)
    later.write(b"fresh start")
    watcher.latest()
    assert watcher.unrestorable() is None


def test_small_checkpoints_cost_a_listing_and_a_put_and_restore_in_two_requests(make_storage: MakeStorage) -> None:
    counter = FailingStorage(make_storage(), fail_at=0)
    cp = Checkpoint(counter, attempt=1, keep=2)  # type: ignore[arg-type]
    steady = []
    for n in range(8):
        before = counter.calls
        cp.write(str(n).encode(), step=n)
        steady.append(counter.calls - before)
    # The listing of this attempt's ids (the id goes above every writer's), the manifest with the
    # bytes in it, and retention's one delete.
    assert steady[3:] == [3] * 5
    assert counter.log[-3:] == ["list", "put", "delete"]
    reader_counter = FailingStorage(make_storage(), fail_at=0)
    assert Checkpoint(reader_counter, attempt=2).read() == b"7"  # type: ignore[arg-type]
    assert reader_counter.calls == 2  # the listing and the manifest: the data is in it


def test_a_large_object_of_another_size_than_its_manifest_says_is_corrupt(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    Checkpoint(make_storage(), attempt=1).write(b"older")
    big = write_tree(tmp_path / "big", {"blob": os.urandom(9 << 20)})
    info = Checkpoint(make_storage(), attempt=1).save(big / "blob")
    storage = make_storage()
    (key,) = _data_keys(storage, info.id)
    storage.put(key, storage.get(key)[: 5 << 20])  # shorter: a ranged GET past its end
    reader = Checkpoint(make_storage(), attempt=2)
    assert reader.read() == b"older"
    assert reader.corrupt == [info.id]
