"""The model the protocol harness checks the SDK against: what was committed, and what storage holds.

`Model` reads the `tests.faults.Journal` of every storage call that took effect: a manifest that a
process of the task created is a committed checkpoint, with the files that process's call saved;
a delete records who made it. `View` is the storage at one moment: which committed checkpoints are
there as committed (`sound`), and which with every object too (`intact`). The harness's machines
(`tests.protocol_model`, `tests.gang_model`) check the SDK's answers against both.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from spotrun._manifest import id_of_manifest_key, manifest_key, parse_id
from spotrun._storage import Storage

from tests.faults import Journal
from tests.hostile import HOSTILE


@dataclasses.dataclass(frozen=True)
class Tree:
    """A checkpoint's content as the model knows it: files (path -> bytes) and empty directories."""

    files: Mapping[str, bytes]
    dirs: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        shown = ", ".join(f"{p}={b[:12]!r}{'...' if len(b) > 12 else ''}" for p, b in sorted(self.files.items()))
        dirs = f" dirs={sorted(self.dirs)}" if self.dirs else ""
        return f"Tree({shown}{dirs})"


def read_tree(root: Path) -> Tree:
    """The files and empty directories under `root`, as `save(root)` commits them."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in filenames:
            files[(here / name).relative_to(root).as_posix()] = (here / name).read_bytes()
        if not dirnames and not filenames and here != root:
            dirs.add(here.relative_to(root).as_posix())
    return Tree(files, frozenset(dirs))


def files_with_modes(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` (Spotrun's staging directories left out): bytes and permission bits."""
    found: dict[str, tuple[bytes, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".spotrun-")]
        for name in filenames:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = (path.read_bytes(), stat.S_IMODE(path.lstat().st_mode))
    return found


def holds_tree(now: dict[str, tuple[bytes, int]], tree: Tree, root: Path) -> bool:
    return all(rel in now and now[rel][0] == data for rel, data in tree.files.items()) and all(
        (root / d).is_dir() for d in tree.dirs
    )


def tree_diff(tree: Tree, now: dict[str, tuple[bytes, int]]) -> str:
    parts = []
    for rel, data in sorted(tree.files.items()):
        if rel not in now:
            parts.append(f"{rel} missing")
        elif now[rel][0] != data:
            parts.append(f"{rel} is {now[rel][0][:20]!r}, not {data[:20]!r}")
    return "; ".join(parts) or "empty directories missing"


def diff(before: Mapping[str, tuple[bytes, int]], after: Mapping[str, tuple[bytes, int]]) -> str:
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"gone {gone}, new {new}, changed {changed}"


def read_result(tree: Tree) -> bytes | str | None:
    """What read() gives for a checkpoint of `tree`: its one file's bytes, None, or "usage-error"."""
    if not tree.files:
        return None
    if len(tree.files) > 1:
        return "usage-error"
    return next(iter(tree.files.values()))


class Violation(AssertionError):
    """An invariant of the protocol does not hold; the message says which and what happened."""

    NAMES: ClassVar[dict[int, str]] = {
        1: "a restore or read returns the newest intact checkpoint, whole",
        2: "nothing outside the target, no user file and no mode beyond 0o777 is touched",
        3: "retention never deletes a checkpoint among the newest `keep`",
        4: "every failure is a SpotrunError",
        5: "a commit's id is above its attempt's earlier commits; a fault-free collective save commits",
    }

    def __init__(self, number: int, message: str, trace: list[str] | None = None) -> None:
        recent = "\n  ".join((trace or [])[-25:])
        super().__init__(
            f"invariant {number} ({self.NAMES[number]}) violated: {message}"
            + (f"\nwhat happened (latest last):\n  {recent}" if recent else "")
        )
        self.number = number


def order(cid: str) -> tuple[int, int]:
    parsed = parse_id(cid)
    assert parsed is not None, cid
    return parsed


@dataclasses.dataclass
class Committed:
    """A checkpoint whose manifest a process of the task created: its files per rank as that
    process's call gave them, and the manifest's bytes (a hostile `setuid` rewrite replaces them)."""

    id: str
    parts: tuple[Tree, ...]
    manifest: bytes
    by: str
    step: int  # the machine step in which its manifest landed
    landed: int  # its manifest's place in the journal

    @property
    def attempt(self) -> int:
        return order(self.id)[0]

    def objects(self) -> dict[str, str]:
        """key -> sha256 of every object its manifest names (none for files kept in the manifest)."""
        return dict(_objects_of(self.manifest))


@functools.lru_cache(maxsize=4096)
def _objects_of(manifest: bytes) -> tuple[tuple[str, str], ...]:
    return tuple((f["key"], f["sha256"]) for f in json.loads(manifest)["files"] if f.get("key"))


@dataclasses.dataclass(frozen=True)
class Deletion:
    """The last delete of a key: by which process (of which attempt, when it is the task's), at which
    step, at which place in the journal, and whether from outside the SDK (a fault, the hostile writer)."""

    process: str
    attempt: int | None
    outside: bool
    step: int
    seq: int


@dataclasses.dataclass(frozen=True)
class View:
    """The storage at one moment: its keys, the ids of its manifests, and which committed
    checkpoints are intact there (manifest and every object as committed)."""

    keys: frozenset[str]
    manifests: frozenset[str]
    intact: frozenset[str]
    sound: frozenset[str]  # committed ids whose manifest is there as committed (their objects aside)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Model:
    """What was committed, read from the journal of every storage call that took effect."""

    def __init__(self, inner: Storage, journal: Journal) -> None:
        self.inner = inner
        self.journal = journal
        self.committed: dict[str, Committed] = {}
        self.objects: dict[str, str] = {}  # key -> sha256 of the bytes last put there
        self.deleted: dict[str, Deletion] = {}  # key -> its last delete
        self.ghosts: set[str] = set()  # ids whose manifest an outside delete removed: the SDK may still count them
        self.contents: dict[str, tuple[Tree, ...]] = {}  # process -> what its call in flight commits
        self.landed: dict[str, list[str]] = {}  # process -> ids whose manifests it created in its call in flight
        self.attempts: dict[str, int] = {}  # process -> its attempt (the machines register their processes)
        self.step = 0
        self._seq = 0
        self._view: tuple[int, View] | None = None  # the last view, and the journal's place it was taken at

    def absorb(self) -> None:
        for effect in self.journal.new():
            self._seq += 1
            outside = effect.external or effect.process == HOSTILE
            if effect.method == "put":
                key = effect.keys[0]
                self.objects[key] = effect.sha256
                self.deleted.pop(key, None)
                cid = id_of_manifest_key(key)
                if cid and not outside and effect.process in self.contents and effect.body is not None:
                    self.committed[cid] = Committed(
                        cid, self.contents[effect.process], effect.body, effect.process, self.step, self._seq
                    )
                    self.landed.setdefault(effect.process, []).append(cid)
                continue
            for key in effect.keys:
                self.objects.pop(key, None)
                attempt = self.attempts.get(effect.process)
                self.deleted[key] = Deletion(effect.process, attempt, outside, self.step, self._seq)
                cid = id_of_manifest_key(key)
                if cid and outside:
                    self.ghosts.add(cid)

    def invalidate(self) -> None:
        """The next `look` lists the storage again (the model changed with no call: a rewritten manifest)."""
        self._view = None

    def look(self) -> View:
        """The storage now. Only journaled calls change it, so a view stands until the next one."""
        self.absorb()
        if self._view is not None and self._view[0] == self._seq:
            return self._view[1]
        keys = frozenset(key for key, _ in self.inner.list(""))
        manifests = frozenset(cid for key in keys if (cid := id_of_manifest_key(key)))
        sound = frozenset(c.id for c in self.committed.values() if self._sound(c, keys))
        intact = frozenset(
            cid
            for cid in sound
            if all(k in keys and self.objects.get(k) == sha for k, sha in self.committed[cid].objects().items())
        )
        view = View(keys, manifests, intact, sound)
        self._view = (self._seq, view)
        return view

    def _sound(self, c: Committed, keys: frozenset[str]) -> bool:
        key = manifest_key(c.id)
        return key in keys and self.objects.get(key) == sha256(c.manifest)

    def allowed(self, before: View, after: View) -> tuple[list[Committed], Committed | None]:
        """The checkpoints a restore between `before` and `after` may return, newest first, and
        the newest intact throughout (none may be skipped for an older one)."""
        stable = [self.committed[c] for c in before.intact & after.intact if c in self.committed]
        floor = max(stable, key=lambda c: order(c.id), default=None)
        allowed = [
            self.committed[c]
            for c in before.intact | after.intact
            if c in self.committed and (floor is None or order(c) >= order(floor.id))
        ]
        return sorted(allowed, key=lambda c: order(c.id), reverse=True), floor

    def retention_violations(self, view: View, keep: int) -> list[str]:
        """Invariant 3: what is gone of a committed checkpoint among the newest `keep`.

        Exempt: what an outside hand deleted (or garbled), and an upload of an earlier attempt
        that a later attempt's sweep deleted before its manifest landed. The SDK takes an earlier
        attempt's unreferenced data for abandoned (the operator starts an attempt once the one
        before has ended); a zombie that commits onto it commits a corrupt checkpoint, which ranks
        below every checkpoint of the sweeping attempt. Data deleted once its manifest was there,
        or a same-attempt writer's upload in flight (a sidecar's), is a violation."""
        ranked = sorted(view.manifests | self.ghosts, key=order, reverse=True)[:keep]
        problems = []
        for cid in ranked:
            c = self.committed.get(cid)
            if c is None or cid in self.ghosts:  # not committed, or gone by an outside hand: its data is garbage
                continue
            if manifest_key(cid) in view.keys and cid not in view.sound:  # its manifest tampered with: corrupt
                continue
            for key in [manifest_key(cid), *c.objects()]:
                if key in view.keys:
                    continue
                deletion = self.deleted.get(key)
                if deletion is None:
                    problems.append(f"checkpoint {cid} (committed by {c.by}) names {key}, which was never there")
                    continue
                if deletion.outside:
                    continue
                in_flight = deletion.seq < c.landed
                if in_flight and deletion.attempt is not None and deletion.attempt > c.attempt:
                    continue
                when = "before its manifest landed (an upload in flight)" if in_flight else "after it was committed"
                problems.append(
                    f"checkpoint {cid} (committed by {c.by} at step {c.step}) ranks among the newest {keep} "
                    f"({', '.join(ranked)}), and its {key} is gone: deleted by {deletion.process} at step "
                    f"{deletion.step}, {when}"
                )
        return problems
