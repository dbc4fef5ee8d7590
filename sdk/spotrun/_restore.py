"""Puts a verified checkpoint into a directory that may hold the task's own files, and proves a skip.

A restore downloads and verifies the whole checkpoint in a staging directory first; only then does
`place` move it into the target. The target may hold the task's own files (`train.py`, `data/`):
restore replaces only the checkpoint's own paths and what the previous restore put there, never
anything else, and never writes or deletes through a symbolic link it did not create.

What a restore put into a directory is recorded on the directory itself (an extended attribute,
so nothing of Spotrun's sits among the user's files): the checkpoint, its paths, the directories it
created, and a proof, a digest of each path's identity (inode, size, mtime and ctime, as lstat gives
them) as restore left it. Restoring the same checkpoint again is skipped only while the proof holds:
a file rewritten in place, even to the same size and mtime, has another ctime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spotrun._errors import CheckpointError

log = logging.getLogger("spotrun.checkpoint")

RECORD_XATTR = "user.spotrun.checkpoint"
LEGACY_MARKER = ".spotrun-checkpoint.json"  # the file earlier versions wrote there: removed on restore
_RECORD_VERSION = b"\x02"  # then zlib'd JSON; a record of earlier versions (plain JSON) proves nothing


@dataclasses.dataclass(frozen=True)
class Record:
    """What one restore put into a directory."""

    uri: str
    id: str
    paths: tuple[str, ...]  # the checkpoint's files and links, as restore placed them
    dirs: tuple[str, ...]  # directories restore created (it removes them again once empty and unneeded)
    proof: str  # see `proof`

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "id": self.id, "paths": list(self.paths), "dirs": list(self.dirs), "proof": self.proof}


def read_record(target: Path) -> Record | None:
    """The record of the last restore into `target`, from any process; None when there is none."""
    if not hasattr(os, "getxattr"):
        return None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, zlib.error):
        raw = os.getxattr(target, RECORD_XATTR)
        if not raw.startswith(_RECORD_VERSION):
            return None
        body = json.loads(zlib.decompress(raw[1:]))
        record = Record(
            uri=str(body["uri"]),
            id=str(body["id"]),
            paths=tuple(str(p) for p in body["paths"]),
            dirs=tuple(str(d) for d in body["dirs"]),
            proof=str(body["proof"]),
        )
        if all(_normal(p) for p in (*record.paths, *record.dirs)):
            return record
    return None


def write_record(target: Path, record: Record | None) -> None:
    """Records `record` on `target` (None removes it). Where the filesystem has no user xattrs, or
    the record is too large for one, only the Checkpoint object in memory remembers."""
    if not hasattr(os, "setxattr"):
        return
    try:
        if record is None:
            with contextlib.suppress(OSError):
                os.removexattr(target, RECORD_XATTR)
            return
        os.setxattr(target, RECORD_XATTR, _RECORD_VERSION + zlib.compress(json.dumps(record.to_dict()).encode()))
    except OSError as err:  # ENOTSUP, or E2BIG/ENOSPC for a record of very many paths
        log.debug(
            "Could not record the restore on %s (%s); a restore from another process downloads again", target, err
        )
        with contextlib.suppress(OSError):
            os.removexattr(target, RECORD_XATTR)  # a stale record must not outlive this restore


def proof(target: Path, paths: Iterable[str]) -> str | None:
    """A digest of each path's identity under `target` as lstat sees it; None when one is missing
    or lies beneath something other than a plain directory."""
    digest = hashlib.sha256()
    for rel in sorted(paths):
        if not _under_plain_dirs(target, rel):
            return None
        try:
            info = os.lstat(target / rel)
        except OSError:
            return None
        fields = (info.st_mode, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        digest.update(f"{rel}\0{fields}\n".encode())
    return digest.hexdigest()


def holds(target: Path, record: Record | None, uri: str, cid: str, paths: Iterable[str]) -> bool:
    """Whether `target` provably still holds checkpoint `cid` of `uri` as restore left it."""
    wanted = tuple(sorted(paths))
    return (
        record is not None
        and (record.uri, record.id) == (uri, cid)
        and tuple(sorted(record.paths)) == wanted
        and proof(target, wanted) == record.proof
    )


def place(
    staging: Path,
    target: Path,
    paths: Iterable[str],
    directories: Iterable[str],
    previous: Record | None,
    uri: str,
    cid: str,
) -> Record:
    """Moves the verified entries at `paths` (files and links) from `staging` into `target`,
    creates `directories`, and removes what `previous` put there that this checkpoint does not
    have. Nothing is moved until every path is known to be placeable: a user's file or directory
    in the way raises CheckpointError, naming it, with the target unchanged."""
    paths, directories = sorted(paths), sorted(directories)
    ours = set(previous.paths) if previous else set()
    ours_dirs = set(previous.dirs) if previous else set()
    needed = {"/".join(p.split("/")[:i]) for p in [*paths, *directories] for i in range(1, p.count("/") + 1)}
    needed.update(directories)
    for rel in paths:
        _check_placeable(target, rel, ours, leaf=True)
    for rel in sorted(needed):
        _check_placeable(target, rel, ours, leaf=False)
    with contextlib.suppress(FileNotFoundError):
        (target / LEGACY_MARKER).unlink()
    for rel in sorted(ours - set(paths), reverse=True):  # what the last restore left and this one has not
        if rel not in needed and _under_plain_dirs(target, rel):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                if not stat.S_ISDIR(os.lstat(target / rel).st_mode):
                    (target / rel).unlink()
    created = {d for d in ours_dirs if _is_plain_dir(target / d)}
    for rel in sorted(needed):
        path = target / rel
        if not _is_plain_dir(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # ours (checked above): a file or link of the last restore
            path.mkdir()
            created.add(rel)
    for rel in paths:
        path = target / rel
        with contextlib.suppress(FileNotFoundError):
            if _is_plain_dir(path):
                path.rmdir()  # empty (checked above)
        os.replace(staging / rel, path)
    for rel in sorted(created - needed, key=lambda d: -d.count("/")):  # the last restore's, now unneeded
        with contextlib.suppress(OSError):
            (target / rel).rmdir()  # only when empty: a user's file there keeps it
    kept = tuple(sorted(d for d in created if _is_plain_dir(target / d)))
    return Record(uri=uri, id=cid, paths=tuple(paths), dirs=kept, proof=proof(target, paths) or "")


def _check_placeable(target: Path, rel: str, ours: set[str], *, leaf: bool) -> None:
    """Raises CheckpointError when `rel` cannot be placed without touching what is not ours."""
    if not _under_plain_dirs(target, rel, ours):
        raise CheckpointError(
            f"cannot restore into {target}: a parent of {rel} is a file or a link that the last restore did not "
            "put there; move it away, or restore into another directory"
        )
    path = target / rel
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:  # beneath a file of ours, which goes first
        return
    if stat.S_ISDIR(info.st_mode):
        if leaf and any(path.iterdir()):
            raise CheckpointError(
                f"cannot restore {rel} into {target}: a directory is there, and not empty; move it away, or "
                "restore into another directory"
            )
        return
    if not leaf and rel not in ours:
        raise CheckpointError(
            f"cannot restore into {target}: the checkpoint needs a directory at {rel}, and a file or link is "
            "there that the last restore did not put there; move it away, or restore into another directory"
        )


def _under_plain_dirs(target: Path, rel: str, ours: set[str] | None = None) -> bool:
    """Whether every parent of `rel` under `target` is a plain directory (not a link), or missing,
    or (with `ours`) a file or link the last restore put there, which a restore may replace."""
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        try:
            info = os.lstat(target / parent)
        except (FileNotFoundError, NotADirectoryError):
            return True
        if not stat.S_ISDIR(info.st_mode):
            return ours is not None and parent in ours
    return True


def _is_plain_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _normal(rel: str) -> bool:
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in rel.split("/"))
