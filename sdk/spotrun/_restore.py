"""Puts a verified checkpoint into a directory that may hold the task's own files, and proves a skip.

A restore downloads and verifies the whole checkpoint in a staging directory first; only then does
`place` move it into the target. The target may hold the task's own files (`train.py`, `data/`):
restore replaces only the checkpoint's own paths and what the previous restore put there, never
anything else, and never writes or deletes through a symbolic link it did not create.

What a restore put into a directory is recorded on the directory itself (an extended attribute,
so nothing of Spotrun's sits among the user's files): the checkpoint, its paths, the directories it
created, and each path's identity (inode, size, mtime and ctime, as lstat gives them) as restore
left it. Restoring the same checkpoint again is skipped only while every identity holds: a file
rewritten in place, even to the same size and mtime, has another ctime. A file of the last restore
that the next checkpoint lacks is removed only while its identity holds, too: rewritten, it is
the task's. Restore returns only once the filesystem's timestamp tick has passed, so that a rewrite
right after it cannot keep the identity restore recorded.
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
    stamps: tuple[str, ...]  # each path's identity as restore left it (see `stamp`), in `paths` order

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "id": self.id,
            "paths": list(self.paths),
            "dirs": list(self.dirs),
            "stamps": list(self.stamps),
        }

    def placed(self) -> dict[str, str]:
        return dict(zip(self.paths, self.stamps, strict=True))


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
            stamps=tuple(str(d) for d in body["stamps"]),
        )
        if len(record.stamps) == len(record.paths) and all(_normal(p) for p in (*record.paths, *record.dirs)):
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


def stamp(target: Path, rel: str) -> str:
    """A path's identity under `target` as lstat sees it (mode, device, inode, size, mtime, ctime),
    as 16 hex digits; "" when it is missing or lies beneath anything but plain directories."""
    if not _under_plain_dirs(target, rel):
        return ""
    try:
        info = os.lstat(target / rel)
    except OSError:
        return ""
    fields = (info.st_mode, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


def holds(target: Path, record: Record | None, uri: str, cid: str, paths: Iterable[str]) -> bool:
    """Whether `target` provably still holds checkpoint `cid` of `uri` as restore left it: every path
    of it with the identity restore recorded."""
    if record is None or (record.uri, record.id) != (uri, cid) or set(record.paths) != set(paths):
        return False
    return all(recorded and stamp(target, rel) == recorded for rel, recorded in record.placed().items())


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
    have, if it is still as restore left it (a path the task rewrote since is the task's now).
    Nothing is moved until every path is known to be placeable: a user's file or directory in the
    way raises CheckpointError, naming it, with the target unchanged."""
    paths, directories = sorted(paths), sorted(directories)
    placed = previous.placed() if previous else {}
    ours_dirs = set(previous.dirs) if previous else set()
    removable = {rel for rel, recorded in placed.items() if rel not in paths and stamp(target, rel) == recorded}
    ours = set(placed)
    needed = {"/".join(p.split("/")[:i]) for p in [*paths, *directories] for i in range(1, p.count("/") + 1)}
    needed.update(directories)
    for rel in paths:
        _check_placeable(target, rel, ours, removable, ours_dirs, leaf=True)
    for rel in sorted(needed):
        _check_placeable(target, rel, ours, removable, ours_dirs, leaf=False)
    _remove_legacy_marker(target)
    for rel in sorted(removable, reverse=True):  # the last restore's, unchanged, and not in this checkpoint
        with contextlib.suppress(FileNotFoundError):
            (target / rel).unlink()
    created = {d for d in ours_dirs if _is_plain_dir(target / d)}
    for rel in sorted(created - needed, key=lambda d: -d.count("/")):  # the last restore's, now unneeded
        with contextlib.suppress(OSError):
            (target / rel).rmdir()  # only when empty: a user's file there keeps it
    created = {d for d in created if _is_plain_dir(target / d)}
    for rel in sorted(needed):
        path = target / rel
        if not _is_plain_dir(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # ours (checked above): a file or link of the last restore
            path.mkdir()
            created.add(rel)
    for rel in paths:
        path = target / rel
        if _is_plain_dir(path):
            path.rmdir()  # empty by now (checked above)
        os.replace(staging / rel, path)
    stamps = tuple(stamp(target, rel) for rel in paths)
    return Record(uri=uri, id=cid, paths=tuple(paths), dirs=tuple(sorted(created)), stamps=stamps)


def _remove_legacy_marker(target: Path) -> None:
    """The record file earlier versions wrote among the user's files: removed when it is one."""
    marker = target / LEGACY_MARKER
    with contextlib.suppress(OSError, ValueError):
        body = json.loads(marker.read_bytes()) if marker.is_file() and not marker.is_symlink() else None
        if isinstance(body, dict) and {"uri", "id"} <= set(body):
            marker.unlink()


def _check_placeable(
    target: Path, rel: str, ours: set[str], removable: set[str], ours_dirs: set[str], *, leaf: bool
) -> None:
    """Raises CheckpointError when `rel` cannot be placed without touching what is not ours."""
    if not _under_plain_dirs(target, rel, ours):
        raise CheckpointError(
            f"cannot restore into {target}: a parent of {rel} is a file or a link that the last restore did not "
            "put there; move it away, or restore into another directory"
        )
    path = target / rel
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # missing, or beneath a file of ours, which goes first
        return
    if stat.S_ISDIR(info.st_mode):
        if leaf and any(path.iterdir()) and not _holds_only(target, rel, removable, ours_dirs):
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


def _holds_only(target: Path, rel: str, removable: set[str], ours_dirs: set[str]) -> bool:
    """Whether the directory `rel` holds nothing but what the last restore made and this one removes."""
    for dirpath, dirnames, filenames in os.walk(target / rel):
        here = Path(dirpath).relative_to(target).as_posix()
        if here != rel and here not in ours_dirs:
            return False
        if any(f"{here}/{name}" not in removable for name in filenames):
            return False
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        if any(f"{here}/{name}" not in removable for name in links):
            return False
    return rel in ours_dirs


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
