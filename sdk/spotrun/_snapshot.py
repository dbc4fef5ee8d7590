"""A directory as one commit sees it: its files, links and empty directories, taken at one moment.

A directory being written while it is saved (`spotrun sync` beside a training loop) changes under
the scan: files appear, vanish, are renamed over (the usual write-temp-then-rename save) or grow.
`scan` takes each entry's identity with lstat, never following a link; `changed` tells, after the
upload, which entries are no longer what the scan saw. A commit whose entries all held still from
the scan to the end of the upload is a snapshot of one moment; one whose did not is taken again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from pathlib import Path

from spotrun._manifest import check_link
from spotrun._restore import LEGACY_MARKER

log = logging.getLogger("spotrun.checkpoint")

# A file's identity: size, mtime, ctime, inode, mode. A rewrite in place changes the ctime, a
# replacement the inode, even when the size and mtime come out the same.
Stamp = tuple[int, int, int, int, int]
# Timestamps are as coarse as the kernel's tick: a file changed within this of a scan may change
# again with the same stamp, so it is not trusted as unchanged next time ("racy git").
RACY_NS = 20_000_000
SKIPPED_NAMES = frozenset({LEGACY_MARKER})  # the restore marker of earlier versions: never saved


class ChangedError(Exception):
    """The directory changed under the scan or the upload: take the snapshot again."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    root: Path
    files: tuple[tuple[str, Path, Stamp], ...]  # (path in the checkpoint, path on disk, identity)
    links: tuple[tuple[str, str, Stamp], ...]  # (path in the checkpoint, target, identity)
    empty_dirs: tuple[str, ...]
    started_ns: int  # wall clock at the scan's start, for `trusted`

    @property
    def size(self) -> int:
        return sum(stamp[0] for _, _, stamp in self.files)

    def changed(self) -> list[str]:
        """The entries whose identity is no longer the scan's (vanished ones too)."""
        moved = []
        for rel, path, stamp in self.files:
            if stamp_of(path) != stamp:
                moved.append(rel)
        for rel, _target, stamp in self.links:
            if stamp_of(self.root / rel) != stamp:
                moved.append(rel)
        return moved

    def trusted(self, stamp: Stamp) -> bool:
        """Whether a later scan finding `stamp` again may take the file as unchanged."""
        return self.started_ns - max(stamp[1], stamp[2]) > RACY_NS


def stamp_of(path: Path) -> Stamp | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_mode)


def scan(root: Path) -> Snapshot:
    """Everything under `root` as lstat sees it, in path order. Links are kept as links (never
    followed); one whose target leaves `root` is left out with a warning (restoring it could point
    anywhere), as are sockets, FIFOs and devices. A name that vanishes mid-scan raises ChangedError."""
    started = time.time_ns()
    files: list[tuple[str, Path, Stamp]] = []
    links: list[tuple[str, str, Stamp]] = []
    empty: list[str] = []

    def vanished(err: OSError) -> None:
        raise ChangedError(f"{err.filename} vanished during the scan") from err

    for dirpath, dirnames, filenames in os.walk(root, onerror=vanished, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        names = sorted(n for n in filenames if n not in SKIPPED_NAMES)
        # os.walk lists a link to a directory among the directories, and does not descend into it.
        link_dirs = [d for d in dirnames if (here / d).is_symlink()]
        # A restore's staging directory (at the top) is Spotrun's; the user's `.spotrun-*` deeper down are theirs.
        dirnames[:] = [d for d in dirnames if d not in link_dirs and not (here == root and d.startswith(".spotrun-"))]
        kept = 0
        for name in sorted(names + link_dirs):
            path = here / name
            rel = path.relative_to(root).as_posix()
            stamp = stamp_of(path)
            if stamp is None:
                raise ChangedError(f"{path} vanished during the scan")
            mode = stamp[4]
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink(path)
                    check_link(rel, target)
                except FileNotFoundError as err:
                    raise ChangedError(f"{path} vanished during the scan") from err
                except ValueError:
                    log.warning("Left out the link %s -> %s: it points outside %s", rel, os.readlink(path), root)
                    continue
                links.append((rel, target, stamp))
            elif stat.S_ISREG(mode):
                files.append((rel, path, stamp))
            else:
                log.warning("Left out %s: neither a file, a directory nor a link", path)
                continue
            kept += 1
        if not kept and not dirnames and here != root:
            empty.append(here.relative_to(root).as_posix())
    return Snapshot(root, tuple(files), tuple(links), tuple(empty), started)
