"""flytekit's tests/flytekit/unit/core/test_checkpoint.py, against Spotrun (see NOTICE and flyte.py).

Every upstream assertion is here. Changed: how the object is built (`sync_checkpoint`), and
where a test looks for a committed file: flytekit's lie straight under the destination, Spotrun's
under `data/ID.NONCE/` behind a manifest, or inside it when small (`committed`).
"""

import os
from pathlib import Path

import pytest
import spotrun
from spotrun import NoIntactCheckpointError as FlyteDataNotFoundException

from tests.compat.flyte import TMP_DST_PATH, committed, lose_data, sync_checkpoint


def test_sync_checkpoint_write(tmpdir):
    td_path = Path(tmpdir)
    cp = sync_checkpoint(checkpoint_dest=tmpdir)
    assert cp.read() is None
    assert cp.restore() is None
    # flytekit: dst_path = td_path / SyncCheckpoint.TMP_DST_PATH; assert not dst_path.exists()
    assert TMP_DST_PATH not in committed(td_path)
    cp.write(b"bytes")
    assert committed(td_path)[TMP_DST_PATH] == b"bytes"  # flytekit: assert dst_path.exists()


def test_sync_checkpoint_save_file(tmpdir):
    td_path = Path(tmpdir)
    cp = sync_checkpoint(checkpoint_dest=tmpdir)
    assert TMP_DST_PATH not in committed(td_path)  # flytekit: assert not dst_path.exists()
    inp = td_path / "test"
    with inp.open("wb") as f:
        f.write(b"blah")
    with inp.open("rb") as f:
        cp.save(f)
    assert committed(td_path)[TMP_DST_PATH] == b"blah"  # flytekit: assert dst_path.exists()

    with pytest.raises(ValueError):
        # Unsupported object
        cp.save(spotrun.Checkpoint)  # noqa


def test_sync_checkpoint_save_filepath(tmpdir):
    src_path = Path(os.path.join(tmpdir, "src"))
    src_path.mkdir(parents=True, exist_ok=True)
    chkpnt_path = Path(os.path.join(tmpdir, "dest"))
    chkpnt_path.mkdir()
    cp = sync_checkpoint(checkpoint_dest=str(chkpnt_path))
    assert "test" not in committed(chkpnt_path)  # flytekit: dst_path = chkpnt_path / "test"; not exists
    inp = src_path / "test"
    with inp.open("wb") as f:
        f.write(b"blah")
    cp.save(inp)
    assert committed(chkpnt_path)["test"] == b"blah"  # flytekit: assert dst_path.exists()


def test_sync_checkpoint_restore(tmpdir):
    td_path = Path(tmpdir)
    dest = td_path / "dest"
    dest.mkdir()
    src = td_path / "src"
    src.mkdir()
    prev = src / "prev"
    p = b"prev-bytes"
    with prev.open("wb") as f:
        f.write(p)
    cp = sync_checkpoint(checkpoint_dest=str(dest), checkpoint_src=str(src))
    user_dest = td_path / "user_dest"

    with pytest.raises(ValueError):
        cp.restore(user_dest)

    user_dest.mkdir()
    assert cp.restore(user_dest) == user_dest
    assert cp.restore("other_path") == user_dest


def test_sync_checkpoint_restore_corrupt(tmpdir):
    td_path = Path(tmpdir)
    dest = td_path / "dest"
    dest.mkdir()
    src = td_path / "src"
    src.mkdir()
    prev = src / "prev"
    p = b"prev-bytes"
    with prev.open("wb") as f:
        f.write(p)
    cp = sync_checkpoint(checkpoint_dest=str(dest), checkpoint_src=str(src))
    user_dest = td_path / "user_dest"
    user_dest.mkdir()

    # Simulate a failed upload of the checkpoint e.g. due to preemption
    prev.unlink()
    src.rmdir()
    lose_data(dest)  # Spotrun: the bytes attempt 1 committed are gone

    with pytest.raises(FlyteDataNotFoundException):
        cp.restore(user_dest)

    with pytest.raises(FlyteDataNotFoundException):
        cp.restore(user_dest)


def test_sync_checkpoint_restore_default_path(tmpdir):
    td_path = Path(tmpdir)
    dest = td_path / "dest"
    dest.mkdir()
    src = td_path / "src"
    src.mkdir()
    prev = src / "prev"
    p = b"prev-bytes"
    with prev.open("wb") as f:
        f.write(p)
    cp = sync_checkpoint(checkpoint_dest=str(dest), checkpoint_src=str(src))
    assert cp.read() == p
    # flytekit's read() downloads into a private directory and keeps its path; Spotrun's reads a
    # single file in memory, so that path is set by the first restore() and returned by the next.
    assert cp.restore() == cp.restored_path
    assert cp.restored_path is not None
    assert cp.restore() == cp.restored_path


def test_sync_checkpoint_read_empty_dir(tmpdir):
    td_path = Path(tmpdir)
    dest = td_path / "dest"
    dest.mkdir()
    src = td_path / "src"
    src.mkdir()
    cp = sync_checkpoint(checkpoint_dest=str(dest), checkpoint_src=str(src))
    assert cp.read() is None


def test_sync_checkpoint_read_multiple_files(tmpdir):
    """
    Read can only work with one file.
    """
    td_path = Path(tmpdir)
    dest = td_path / "dest"
    dest.mkdir()
    src = td_path / "src"
    src.mkdir()
    prev = src / "prev"
    prev2 = src / "prev2"
    p = b"prev-bytes"
    with prev.open("wb") as f:
        f.write(p)
    with prev2.open("wb") as f:
        f.write(p)
    cp = sync_checkpoint(checkpoint_dest=str(dest), checkpoint_src=str(src))

    with pytest.raises(ValueError, match="Expected exactly one checkpoint - found 2"):
        cp.read()


@spotrun.task
def t1(n: int) -> int:
    ctx = spotrun.current_context()
    cp = ctx.checkpoint
    cp.write(bytes(n + 1))
    return n + 1


def test_checkpoint_task(monkeypatch, tmp_path):
    monkeypatch.delenv("SPOTRUN_TASKRUN", raising=False)  # run locally, as flytekit's test does
    monkeypatch.setenv("SPOTRUN_CHECKPOINT_URI", str(tmp_path / "checkpoints"))
    assert t1(n=5) == 6
