"""How flytekit's checkpointer tests build their object, in Spotrun's terms; and its layout.

flytekit's `SyncCheckpoint(checkpoint_dest, checkpoint_src)` is a task attempt that writes its
checkpoints to `checkpoint_dest` after an earlier attempt wrote the files of `checkpoint_src`.
Here `checkpoint_dest` is the run's checkpoint prefix (a directory: LocalStorage), and when
`checkpoint_src` is given, attempt 1 commits its files there first and the object returned is
attempt 2. flytekit raises when the previous checkpoint cannot be downloaded, so the object is
built with `if_corrupt="raise"`.

flytekit writes a checkpoint's files straight under `checkpoint_dest`; Spotrun commits each one
under `data/ID.NONCE/` and makes it exist with `manifests/ID.json` (docs/checkpoints.md, "The
layout"), or, when they are small, inside that manifest. Where an upstream test looks under
`checkpoint_dest`, the port looks at the newest committed checkpoint's files instead, through
these helpers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

from spotrun import Checkpoint, LocalStorage
from spotrun._checkpoint import BYTES_NAME

# flytekit's SyncCheckpoint.TMP_DST_PATH: the name a checkpoint of bytes or a stream is stored as.
TMP_DST_PATH = BYTES_NAME


def sync_checkpoint(checkpoint_dest: str | os.PathLike[str], checkpoint_src: str | None = None) -> Checkpoint:
    storage = LocalStorage(Path(checkpoint_dest))
    if checkpoint_src is None:
        return Checkpoint(storage, attempt=1, if_corrupt="raise")
    Checkpoint(storage, attempt=1).save(Path(checkpoint_src))
    return Checkpoint(storage, attempt=2, if_corrupt="raise")


def committed(checkpoint_dest: str | os.PathLike[str]) -> dict[str, bytes]:
    """The newest committed checkpoint under the prefix: each file's name and bytes, wherever they are
    stored (an object under data/, or inside the manifest for a small checkpoint)."""
    root = Path(checkpoint_dest)
    manifests = sorted((root / "manifests").glob("[0-9]*.json")) if (root / "manifests").is_dir() else []
    if not manifests:
        return {}
    manifest = json.loads(manifests[-1].read_text())
    return {
        Path(entry["path"]).name: (
            base64.b64decode(entry["inline"]) if "inline" in entry else (root / entry["key"]).read_bytes()
        )
        for entry in manifest["files"]
    }


def committed_names(checkpoint_dest: str | os.PathLike[str]) -> list[str]:
    """flytekit's `outputs.listdir()`: the names of the newest checkpoint's files."""
    return sorted(committed(checkpoint_dest))


def lose_data(checkpoint_dest: str | os.PathLike[str]) -> None:
    """A checkpoint whose data is gone (flytekit's test deletes the source): its objects removed, and
    the bytes of a small checkpoint, kept in its manifest, emptied."""
    root = Path(checkpoint_dest)
    shutil.rmtree(root / "data", ignore_errors=True)
    for path in (root / "manifests").glob("[0-9]*.json"):
        manifest = json.loads(path.read_text())
        for entry in manifest["files"]:
            if "inline" in entry:
                entry["inline"] = ""
        path.write_text(json.dumps(manifest))
