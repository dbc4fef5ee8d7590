"""flytekit's tests/flytekit/unit/core/test_checkpointer.py, against Spotrun (see NOTICE and flyte.py).

Every upstream assertion is here. flytekit's `outputs.listdir()` lists the files a checkpoint put
under its destination; Spotrun's destination holds `manifests/` and `data/`, so the port lists
the newest committed checkpoint's files (`committed_names`) in its place.
"""

import typing
from pathlib import Path

import py.path

from tests.compat.flyte import TMP_DST_PATH, committed_names, sync_checkpoint

CHECKPOINT_FILE = "cp"


def create_folder_write_file(tmpdir: py.path.local) -> typing.Tuple[py.path.local, py.path.local, py.path.local]:
    outputs = tmpdir.mkdir("outputs")

    # Make an input test directory with one file called cp
    inputs = tmpdir.mkdir("inputs")
    input_file = inputs.join(CHECKPOINT_FILE)
    input_file.write_text("Hello!", encoding="utf-8")

    return inputs, input_file, outputs


def test_sync_checkpoint_file(tmpdir: py.path.local):
    inputs, input_file, outputs = create_folder_write_file(tmpdir)
    cp = sync_checkpoint(checkpoint_dest=str(outputs))
    # Lets try to restore - should not work!
    assert not cp.restore("/tmp")
    # Now save
    cp.save(str(input_file))
    # Expect file in tmpdir
    expected_dst = CHECKPOINT_FILE  # flytekit: outputs.join(CHECKPOINT_FILE)
    assert committed_names(outputs) == [expected_dst]


def test_sync_checkpoint_reader(tmpdir: py.path.local):
    inputs, input_file, outputs = create_folder_write_file(tmpdir)
    cp = sync_checkpoint(checkpoint_dest=str(outputs))
    # Lets try to restore - should not work!
    assert not cp.restore("/tmp")
    # Now save
    with input_file.open(mode="rb") as b:
        cp.save(b)
    # Expect file in tmpdir
    expected_dst = TMP_DST_PATH  # flytekit: outputs.join(SyncCheckpoint.TMP_DST_PATH)
    assert committed_names(outputs) == [expected_dst]


def test_sync_checkpoint_folder(tmpdir: py.path.local):
    inputs, input_file, outputs = create_folder_write_file(tmpdir)
    cp = sync_checkpoint(checkpoint_dest=str(outputs))
    # Lets try to restore - should not work!
    assert not cp.restore("/tmp")
    # Now save
    cp.save(Path(str(inputs)))
    # Expect file in tmpdir
    expected_dst = CHECKPOINT_FILE  # flytekit: outputs.join(CHECKPOINT_FILE)
    assert committed_names(outputs) == [expected_dst]


def test_sync_checkpoint_previous(tmpdir: py.path.local):
    inputs, input_file, outputs = create_folder_write_file(tmpdir)
    cp = sync_checkpoint(checkpoint_dest=str(outputs), checkpoint_src=str(inputs))
    scratch = tmpdir.mkdir("user_scratch")
    assert cp.restore(str(scratch)) == scratch
    assert scratch.listdir() == [scratch.join(CHECKPOINT_FILE)]

    # ensure download is not performed again
    assert cp.restore("x") == scratch
