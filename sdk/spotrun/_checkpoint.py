"""The checkpoint commit protocol: atomic, fenced by attempt, verified on restore, with retention.

docs/checkpoints.md describes the protocol; this module is its only implementation.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from spotrun import _gang, _preemption, _restore, _snapshot, _transfer
from spotrun._errors import (
    CheckpointError,
    CheckpointInputError,
    CheckpointUsageError,
    CommitConflictError,
    CorruptCheckpointError,
    NoIntactCheckpointError,
    StorageError,
)
from spotrun._manifest import (
    DATA,
    INLINE_MAX,
    MANIFEST_MAX,
    MANIFESTS,
    PARTS,
    CheckpointInfo,
    FileEntry,
    Manifest,
    checkpoint_id,
    id_of_manifest_key,
    manifest_key,
    parse_id,
    part_key,
)
from spotrun._storage import AlreadyExistsError, NotFoundError, Storage, new_nonce

log = logging.getLogger("spotrun.checkpoint")

# A gang's checkpoint set aside (a rank found its part corrupt): this record beside its manifest
# makes every reader skip it; the manifest and data stay, to be looked at, until retention ages
# them out. In manifests/, so that the one listing readers take anyway shows it.
REJECTED = "rejected-"
# A restore that found checkpoints and none intact leaves this record in manifests/ (one listing
# with the manifests, so the operator sees it at no extra request); older readers skip it.
UNRESTORABLE = "unrestorable-"
IF_CORRUPT = ("start-over", "raise")
BYTES_NAME = "checkpoint.bin"
COMMIT_TRIES = 20
SNAPSHOT_TRIES = 3  # scans of a directory that keeps changing while it is saved, before giving up
SWEEP_EVERY = 20  # commits between sweeps for data that no manifest references
# An earlier attempt's data is swept only once untouched this long: a zombie of that attempt (a pod on
# a partitioned node) may still be uploading it, and then commit; an upload stalled longer than this
# between its last object and its manifest is one whose writer is gone. Its checkpoint would rank below
# this attempt's anyway; the wait keeps it whole.
ABANDONED_AFTER = 3600.0


class Checkpoint:
    """Checkpoints of one task, Flyte-compatible (`read`, `write`, `save`, `restore`, `prev_exists`).

    Every commit is atomic: the data is uploaded first, then a manifest listing each object's
    size and sha256 is created (create-only). A checkpoint exists once its manifest does, so a
    reader sees a whole checkpoint or none. Ids are `ATTEMPT-SEQUENCE`: a pod of an older attempt
    that still runs can only ever add older checkpoints. Restore takes the newest manifest of any
    attempt whose data verifies, falling back to older ones.

    Args:
        storage: where this task's checkpoints live (the TaskRun's prefix).
        attempt: this attempt's number, from 1; it orders and fences commits. By default
            SPOTRUN_ATTEMPT (set in every TaskRun pod), else 1.
        resume_from: another run's checkpoints, read while `storage` has none; never written.
        keep: how many committed checkpoints retention keeps (at least 1).
        concurrency: parallel transfers for directories of many small files.
        rank: this process's rank in a gang (SPOTRUN_RANK), from 0.
        ranks: the gang's size (SPOTRUN_WORLD_SIZE). With 2 or more, every commit is collective:
            all ranks call it, each saves its own part, and the checkpoint exists only once every
            part is in; every rank restores its own part of the same checkpoint (see `_gang`).
        gang_timeout: how long a rank waits for the others in a collective commit or restore.
        if_corrupt: when checkpoints exist and every one fails verification, "start-over" (the
            default) logs an error, records it for the operator (the TaskRun's CheckpointsCorrupt
            condition) and returns None from `restore`/`read`, so the task starts from the
            beginning; "raise" raises NoIntactCheckpointError instead. Either way `corrupt` lists
            the ids that failed.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        attempt: int | None = None,
        resume_from: Storage | None = None,
        keep: int = 3,
        concurrency: int = 10,
        rank: int = 0,
        ranks: int = 1,
        gang_timeout: float = 600.0,
        if_corrupt: str = "start-over",
    ) -> None:
        if attempt is None:
            attempt = _attempt_from_env()
        _check_arguments(storage, attempt, keep, concurrency, if_corrupt, resume_from)
        self.gang = _gang.Gang(rank, ranks, gang_timeout) if ranks != 1 or rank != 0 else None
        self.storage = storage
        self.attempt = attempt
        self.resume_from = resume_from
        self.keep = keep
        self.concurrency = concurrency
        self.if_corrupt = if_corrupt
        self.corrupt: builtins.list[str] = []  # ids the last restore or read found corrupt, newest first
        # Reentrant: an on_preemption callback may commit while the main thread is inside a commit.
        self._lock = threading.RLock()
        self._in_flight = 0  # commits under way in this process (one may run inside another)
        self._base: int | None = None  # a gang's highest committed id of this attempt when it started
        self._calls = 0  # a gang's collective commit calls so far: each takes an id (see `_gang_sequence`)
        self._highest = 0  # the highest sequence of this attempt this object has seen committed
        self._writer = new_nonce()[:8]  # names this object's uploads: a sweep deletes only its own in this attempt
        self._manifests: dict[tuple[str, str], Manifest] = {}  # manifests are immutable: cached by (uri, id)
        self._restored_from: str | None = None
        self._restored: tuple[tuple[str, str], Path] | None = None  # ((uri, id), directory) of the last restore
        self._records: dict[str, _restore.Record] = {}  # directory -> what this object restored into it
        self._unrestorable: dict[str, builtins.list[str]] = {}  # uri -> record keys seen in its last listing
        self._rejected: dict[str, set[str]] = {}  # uri -> ids set aside, as of its last listing
        self._known: set[str] | None = None  # ids committed in `storage`: its last listing and own commits since
        self._last_commit: Manifest | None = None
        self._commits = 0
        self._default_dir: Path | None = None
        self._stamps: dict[str, _snapshot.Stamp] = {}  # path -> its identity at the last sync
        self._sizes: dict[tuple[str, str], int] = {}  # (uri, manifest key) -> size, from the last listing
        self._agreed: tuple[str, str] | bool | None = False  # a gang's agreed restore (uri, id); False: not yet

    @property
    def rank(self) -> int:
        return self.gang.rank if self.gang else 0

    @property
    def ranks(self) -> int:
        return self.gang.ranks if self.gang else 1

    # ----- Flyte-compatible API ----------------------------------------------------------------

    def prev_exists(self) -> bool:
        """Whether a committed checkpoint exists to resume from (this run's, or resumeFrom's). In a
        gang: whether the gang restores one (every rank gets the same answer)."""
        if self.gang:
            return next(self._gang_candidates(), None) is not None
        return next(self._candidates(), None) is not None

    def read(self) -> bytes | None:
        """The newest checkpoint's bytes (a single-file checkpoint, as `write` makes), or None when
        there is none or it holds no file (a checkpoint of an empty directory). A checkpoint of
        several files raises CheckpointUsageError, a ValueError: use `restore` for those."""

        def fetch(storage: Storage, manifest: Manifest) -> bytes | None:
            self._check_ranks(storage, manifest)
            files = manifest.part(self.rank)
            if not files:
                return None
            if len(files) == 1 and files[0].link is not None:
                raise CheckpointUsageError(
                    f"read() needs a file, and {manifest.id} in {storage.uri} holds a link ({files[0].path}); "
                    "use restore()"
                )
            if len(files) > 1:
                raise CheckpointUsageError(
                    f"Expected exactly one checkpoint - found {len(files)}: read() needs a single-file checkpoint, "
                    f"and {manifest.id} in {storage.uri} has {len(files)} files{self._of_rank()}; use restore()"
                )
            return _transfer.fetch_bytes(storage, files[0], f"checkpoint {manifest.id} in {storage.uri}")

        data: bytes | None = self._first_intact(fetch)
        return data

    def write(self, data: bytes, *, step: int | None = None, metadata: dict[str, Any] | None = None) -> CheckpointInfo:
        """Commits `data` as a new checkpoint; `read()` returns it until a newer one is committed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CheckpointInputError(
                f"write() takes bytes, not {type(data).__name__}: encode it first (e.g. text.encode())"
            )
        _check_commit_arguments(step, metadata)

        def upload(prefix: str) -> builtins.list[FileEntry]:
            if self._inlines(len(data)):
                return [_transfer.inline_bytes(BYTES_NAME, bytes(data))]
            return [_transfer.upload_bytes(self.storage, prefix + BYTES_NAME, BYTES_NAME, bytes(data))]

        return self._commit("bytes", upload, step, metadata)

    def save(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        step: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Commits a file, a directory (tree and file modes kept) or a binary stream open for
        reading. Anything else raises CheckpointInputError (a TypeError and a ValueError) and a
        path that does not exist CheckpointUsageError, before storage is touched; a commit that
        fails on the way removes what it uploaded."""
        _check_commit_arguments(step, metadata)
        if not isinstance(source, str | os.PathLike):
            stream: IO[bytes] = _readable_binary(source)

            def upload_stream(prefix: str) -> builtins.list[FileEntry]:
                return [_transfer.upload_stream(self.storage, prefix + BYTES_NAME, BYTES_NAME, stream)]

            return self._commit("stream", upload_stream, step, metadata)
        path = Path(source)
        if path.is_dir():
            return self._save_directory(path, step, metadata, incremental=False)
        if not path.is_file():
            what = "it does not exist" if not path.exists() else "it is neither a file nor a directory"
            raise CheckpointUsageError(f"cannot save {path}: {what}; pass a file, a directory or a binary stream")

        def upload_file(prefix: str) -> builtins.list[FileEntry]:
            if self._inlines(path.stat().st_size):
                return [_transfer.inline_file(path.name, path)]
            return [_transfer.upload_file(self.storage, prefix + path.name, path.name, path)]

        return self._commit("file", upload_file, step, metadata)

    def restore(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Downloads the newest intact checkpoint into `path`, an existing directory (a private
        temporary one by default), and returns it, or None when there is none.

        As in Flyte, a checkpoint is downloaded once: while the newest is the one this object
        restored, restore returns that directory again, whatever `path` says. Restoring the same
        checkpoint into the same directory again, from another process too, downloads nothing as
        long as every restored file is provably as restore left it (same inode, size, mtime and
        ctime); a file changed since is restored again. The directory may hold the task's own
        files: restore replaces only the checkpoint's paths and what its previous restore put
        there, and gets nothing else of Spotrun's. A `path` that is not an existing directory
        raises CheckpointUsageError (a ValueError, as Flyte's)."""

        def download(storage: Storage, manifest: Manifest) -> Path:
            key = (storage.uri, manifest.id)
            target = self._restored[1] if self._restored is not None and self._restored[0] == key else None
            if target is None or not target.is_dir():
                target = self._target(path)
            paths = [f.path for f in manifest.part(self.rank)]
            if not _restore.holds(target, self._record(target), storage.uri, manifest.id, paths):
                self._restore_into(storage, manifest, target)
            self._restored = (key, target)
            return target

        restored: Path | None = self._first_intact(download)
        return restored

    @property
    def restored_path(self) -> Path | None:
        """The directory of this object's last restore (flytekit's `_prev_download_path`), or None."""
        return self._restored[1] if self._restored else None

    # ----- richer API --------------------------------------------------------------------------

    def latest(self) -> CheckpointInfo | None:
        """The newest committed checkpoint's info (not verified: `restore` does that), or None."""
        for storage, manifest in self._candidates(fallback=False):
            return manifest.info(storage.uri)
        return None

    def list(self) -> builtins.list[CheckpointInfo]:
        """Every committed checkpoint of this run, newest first (resumeFrom's when this run has none)."""
        return [manifest.info(storage.uri) for storage, manifest in self._candidates(fallback=False)]

    @contextlib.contextmanager
    def directory(self, *, step: int | None = None, metadata: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yields an empty directory; when the block ends without an exception it is committed.

        with cp.directory(step=epoch) as d:
            model.save_pretrained(d)
        """
        workdir = Path(tempfile.mkdtemp(prefix="spotrun-save-"))
        try:
            yield workdir
            self._save_directory(workdir, step, metadata, incremental=False)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def sync_directory(self, path: Path, *, step: int | None = None) -> CheckpointInfo:
        """Commits `path`, uploading only files changed since this process's previous commit."""
        return self._save_directory(path, step, None, incremental=True)

    # ----- commit --------------------------------------------------------------------------------

    def _gang_sequence(self) -> int:
        """A gang's next id: this attempt's highest committed id when the rank started (listed once)
        plus the number of collective calls so far. Every call takes one on every rank, committed or
        not, and even when the listing fails, so that the ranks' ids never drift apart."""
        with self._lock:
            self._calls += 1
            calls = self._calls
        if self._base is None:
            # Committed ids only: a rank's first id is taken before it writes its part, so the gang
            # cannot commit that id before every rank has taken it.
            own = [p for p in (parse_id(i) for i in self._ids(self.storage)) if p and p[0] == self.attempt]
            self._base = max((s for _, s in own), default=0)
        return self._base + calls

    def _claim(self) -> int:
        """The sequence for a manifest about to be created: above every one of this attempt committed
        so far, by any writer (a sidecar beside the task commits too), so that a checkpoint committed
        later always ranks higher. One listing of this attempt's manifests."""
        listed = self.storage.list(f"{MANIFESTS}{self.attempt:06d}-")
        ids = [cid for key, _ in listed if (cid := id_of_manifest_key(key))]
        with self._lock:
            for cid in ids:
                parsed = parse_id(cid)
                if parsed and parsed[0] == self.attempt:
                    self._highest = max(self._highest, parsed[1])
            if self._known is not None:
                self._known.update(ids)
            if self._highest >= 999_999:
                raise CheckpointError(
                    f"attempt {self.attempt} has committed 999999 checkpoints to {self.storage.uri}, as many as an id "
                    "holds; commit less often"
                )
            return self._highest + 1

    def _data_prefix(self) -> str:
        """Where one commit's data goes: `data/ATTEMPT.WRITER.NONCE/`. The attempt and writer say
        whose it is, so that a sweep can tell abandoned uploads (see `_abandoned`)."""
        return f"{DATA}{self.attempt:06d}.{self._writer}.{new_nonce()}/"

    def _abandon(self, prefix: str) -> None:
        """A commit failed before its manifest was sent: removes what it uploaded. What cannot be
        removed now is swept later."""
        try:
            uploaded = [key for key, _ in self.storage.list(prefix)]
            if uploaded:
                self.storage.delete(uploaded)
        except Exception as err:  # the commit's own error is the one to raise
            log.warning("Removing the data of a failed commit from %s failed; swept later: %s", self.storage.uri, err)

    def _commit(
        self,
        kind: str,
        upload: Any,
        step: int | None,
        metadata: dict[str, Any] | None,
        directories: tuple[str, ...] = (),
    ) -> CheckpointInfo:
        # A commit may run inside another one: an on_preemption callback, run by a signal handler
        # in the main thread at a notice, while the task's own commit uploads. The inner one must
        # not sweep the outer one's data, which no manifest references yet. In a gang it cannot
        # be: each rank would number the two commits in the order it met them, and the ranks meet
        # a notice at different points.
        if self.gang and self._in_flight:
            raise CheckpointError(
                "a gang's commit cannot run inside another (an on_preemption callback during a save): the ranks "
                "must save together; decide to stop collectively (preempted() and an all-reduce), then save"
            )
        self._in_flight += 1
        try:
            if self.gang:
                return self._commit_gang(kind, upload, step, metadata, directories)
            return self._commit_once(kind, upload, step, metadata, directories)
        finally:
            self._in_flight -= 1

    def _manifest_of(
        self,
        sequence: int,
        kind: str,
        files: builtins.list[FileEntry],
        step: int | None,
        metadata: dict[str, Any] | None,
        directories: tuple[str, ...],
    ) -> Manifest:
        return Manifest(
            id=checkpoint_id(self.attempt, sequence),
            attempt=self.attempt,
            sequence=sequence,
            kind=kind,
            files=tuple(sorted((dataclasses.replace(f, rank=self.rank) for f in files), key=lambda f: f.path)),
            time=_now(),
            step=step,
            metadata={**(metadata or {}), **({"directories": list(directories)} if directories else {})},
            writer=_writer(),
            ranks=self.ranks,
        )

    def _commit_gang(
        self,
        kind: str,
        upload: Any,
        step: int | None,
        metadata: dict[str, Any] | None,
        directories: tuple[str, ...],
    ) -> CheckpointInfo:
        assert self.gang is not None
        sequence = self._gang_sequence()
        cid = checkpoint_id(self.attempt, sequence)
        prefix = self._data_prefix()
        try:
            files: builtins.list[FileEntry] = upload(prefix)
        except BaseException as err:
            self._abandon(prefix)
            # Said where the others look while they wait, so that none waits out its timeout.
            _gang.refuse(self.storage, cid, f"rank {self.rank}'s upload failed: {err}")
            raise
        manifest = _gang.commit(
            self.storage, self.gang, self._manifest_of(sequence, kind, files, step, metadata, directories)
        )
        return self._committed(manifest)

    def _commit_once(
        self,
        kind: str,
        upload: Any,
        step: int | None,
        metadata: dict[str, Any] | None,
        directories: tuple[str, ...],
    ) -> CheckpointInfo:
        prefix = self._data_prefix()
        try:
            files: builtins.list[FileEntry] = upload(prefix)
        except BaseException:
            self._abandon(prefix)
            raise
        for tries in range(COMMIT_TRIES):
            if tries:
                _check_grace(f"committing a checkpoint to {self.storage.uri}")
            try:
                sequence = self._claim()
            except BaseException:
                self._abandon(prefix)
                raise
            manifest = self._manifest_of(sequence, kind, files, step, metadata, directories)
            if self._publish(manifest):
                break
            # Another writer of this attempt took the id meanwhile: the next claim lists again.
            log.warning("Checkpoint id %s was taken by another writer; retrying above it", manifest.id)
        else:
            raise CommitConflictError(
                f"could not commit a checkpoint to {self.storage.uri}: other writers of attempt {self.attempt} took "
                f"every id it claimed, {COMMIT_TRIES} times"
            )
        return self._committed(manifest)

    def _publish(self, manifest: Manifest) -> bool:
        """Creates the manifest: True once it is in, False when another writer holds its id. A PUT
        whose answer was lost may have landed, so before a failure is raised storage is asked:
        finding these very bytes there means committed. Otherwise the data stays: the PUT may still
        land, and a later sweep removes the data only once it is provably abandoned."""
        key, body = manifest_key(manifest.id), manifest.to_json()
        try:
            self.storage.put(key, body, create_only=True)
            return True
        except AlreadyExistsError:
            if self._holds(key, body) is True:
                return True
            with self._lock:
                self._highest = max(self._highest, manifest.sequence)
            return False
        except StorageError:
            if self._holds(key, body) is True:
                return True
            raise

    def _holds(self, key: str, body: bytes) -> bool | None:
        """Whether `key` holds exactly `body`; None when storage cannot say."""
        try:
            return self.storage.get(key) == body
        except NotFoundError:
            return False
        except StorageError:
            return None

    def _inlines(self, size: int) -> bool:
        """Whether a checkpoint of `size` bytes goes inside its manifest: one request to commit, and
        none beyond the manifest's to restore. A gang's parts are merged by rank 0, so they never do."""
        return self.gang is None and size <= INLINE_MAX

    def _committed(self, manifest: Manifest) -> CheckpointInfo:
        self._manifests[(self.storage.uri, manifest.id)] = manifest
        with self._lock:
            self._highest = max(self._highest, manifest.sequence)
        if self._known is not None:
            self._known.add(manifest.id)
        self._last_commit = manifest
        self._commits += 1
        log.info(
            "Committed checkpoint %s (%d files, %d bytes) to %s",
            manifest.id,
            len(manifest.files),
            manifest.size,
            self.storage.uri,
        )
        if self.rank != 0:
            return manifest.info(self.storage.uri)  # rank 0 keeps a gang's storage tidy
        try:
            self._retain(manifest)
        except StorageError as err:  # retention is housekeeping: the commit stands
            log.warning("Retention after checkpoint %s failed, will retry next commit: %s", manifest.id, err)
        return manifest.info(self.storage.uri)

    def _save_directory(
        self, root: Path, step: int | None, metadata: dict[str, Any] | None, *, incremental: bool
    ) -> CheckpointInfo:
        """Commits `root` as one snapshot: when an entry changes between the scan and the end of
        its upload (a file rewritten or renamed over while it is saved), the commit is abandoned
        and taken again, SNAPSHOT_TRIES times; then CheckpointUsageError names what kept changing."""
        changed: builtins.list[str] = []
        # A gang's rank does not try again alone: its failed try took one id on every rank, and the
        # others' saves were refused with it. The next collective save is the next try.
        for _ in range(1 if self.gang else SNAPSHOT_TRIES):
            try:
                snapshot = _snapshot.scan(root)
                return self._commit_snapshot(snapshot, step, metadata, incremental)
            except _snapshot.ChangedError as err:
                changed = [str(err)]
                log.info("Took the snapshot of %s again: it changed while it was saved (%s)", root, err)
        raise CheckpointUsageError(
            f"{root} kept changing while it was saved ({'; '.join(changed)[:300]}), {SNAPSHOT_TRIES} times; save it "
            "between writes (spotrun sync tries again at its next tick)"
        )

    def _commit_snapshot(
        self, snapshot: _snapshot.Snapshot, step: int | None, metadata: dict[str, Any] | None, incremental: bool
    ) -> CheckpointInfo:
        last = self._last_commit
        previous = {f.path: f for f in last.part(self.rank)} if incremental and last else {}  # this rank's own
        stamps: dict[str, _snapshot.Stamp] = {}

        def upload(prefix: str) -> builtins.list[FileEntry]:
            entries = [_transfer.link_entry(rel, target) for rel, target, _ in snapshot.links]
            try:
                if self._inlines(snapshot.size):
                    entries.extend(_transfer.inline_file(rel, path, stamp[4]) for rel, path, stamp in snapshot.files)
                else:
                    jobs = []
                    for rel, path, stamp in snapshot.files:
                        # Unchanged since this object's previous commit: point at the object it uploaded.
                        if rel in previous and self._stamps.get(rel) == stamp:
                            entries.append(previous[rel])
                        else:
                            jobs.append((prefix + rel, rel, path))
                    entries.extend(_transfer.upload_files(self.storage, jobs, self.concurrency))
            except (FileNotFoundError, NotADirectoryError, _transfer.FileChangedError) as err:
                raise _snapshot.ChangedError(str(err)) from err
            moved = snapshot.changed()
            if moved:
                raise _snapshot.ChangedError(f"{', '.join(moved[:5])} changed during the upload")
            stamps.update((rel, stamp) for rel, _, stamp in snapshot.files if snapshot.trusted(stamp))
            return entries

        try:
            info = self._commit("directory", upload, step, metadata, snapshot.empty_dirs)
        except PermissionError as err:
            raise CheckpointUsageError(f"cannot save {snapshot.root}: {err}; make it readable to this process") from err
        self._stamps = stamps
        return info

    # ----- retention -------------------------------------------------------------------------------

    def _retain(self, newest: Manifest) -> None:
        """Keeps the newest `keep` checkpoints; deletes older ones, manifest first, then their data
        (so no manifest ever points at deleted data). Checkpoints of later attempts are never
        touched: only their own attempt or a later one may remove them.

        The ids come from the last listing plus this object's own commits since; the listing is
        taken again at each sweep. Between two, a checkpoint another writer committed is unknown
        here: one of a later attempt would only make this keep more, one of an earlier attempt (a
        zombie's) waits for the next sweep. So a steady commit costs its own requests and the
        deletes, and never removes a checkpoint it should keep."""
        if self.gang:  # committed: its parts have served (their files are in the manifest)
            self.storage.delete([part_key(newest.id, r) for r in range(self.ranks)])
        sweep = (self._commits == 1 or self._commits % SWEEP_EVERY == 0) and self._in_flight == 1
        known = self._ids(self.storage) if sweep or self._known is None else self._known | {newest.id}
        rejected = self._rejected.get(self.storage.uri, set())
        ids = sorted(set(known) - rejected, reverse=True)
        kept, surplus = ids[: self.keep], ids[self.keep :]
        # A rejected checkpoint stays to be looked at until it is older than every one kept.
        surplus += [i for i in rejected if i in known and (not kept or i < kept[-1])]
        doomed = sorted(i for i in surplus if (parse_id(i) or (0, 0))[0] <= self.attempt)
        if not doomed and not sweep:
            return
        # Data that any manifest still names stays: kept ones, rejected ones, other writers' and later
        # attempts'. When one cannot be read at all, what it names is unknown, and no data is deleted.
        referenced = self._referenced(set(known) - set(doomed))
        if doomed:
            manifests = [self._manifest(self.storage, cid) for cid in doomed]
            self.storage.delete([manifest_key(cid) for cid in doomed])  # first: no manifest without its data
            records = [f"{MANIFESTS}{REJECTED}{cid}.json" for cid in doomed if cid in rejected]
            if records:
                self.storage.delete(records)
            if self._known is not None:
                self._known.difference_update(doomed)
            unreferenced = [
                f.key
                for m in manifests
                if m and referenced is not None
                for f in m.files
                if f.key and _data_dir(f.key) not in referenced and self._retirable(_data_dir(f.key))
            ]
            if unreferenced:
                self.storage.delete(unreferenced)
            log.info(
                "Deleted checkpoint(s) %s from %s (keeping the newest %d)",
                ", ".join(doomed),
                self.storage.uri,
                self.keep,
            )
        if sweep and referenced is not None:
            self._sweep(referenced, newest)

    def _referenced(self, ids: set[str]) -> set[str] | None:
        """The data groups that the manifests of `ids` name; None when one of them is not even JSON
        with a list of files (then nobody can tell what it names). One that fails the schema still
        names its keys: a manifest this SDK cannot trust is no reason to delete data."""
        groups: set[str] = set()
        for cid in ids:
            found = self._manifest_or_why(self.storage, cid)
            if isinstance(found, Manifest):
                groups.update(_data_dir(f.key) for f in found.files if f.key)
            elif isinstance(found, str):
                keys = _keys_named(self.storage, cid)
                if keys is None:
                    log.warning("Swept no data in %s: manifest %s names what no one can tell", self.storage.uri, cid)
                    return None
                groups.update(_data_dir(key) for key in keys)
        return groups

    def _sweep(self, referenced: set[str], newest: Manifest) -> None:
        """Deletes data that no manifest references and whose writer has provably abandoned it
        (see `_abandoned`), and the incomplete multipart uploads under it: uploads of writers that
        died before committing. Another live writer's upload in flight is never touched."""
        newest_order = (newest.attempt, newest.sequence)
        # An earlier attempt's record that it found nothing intact: this attempt has committed since.
        mine = f"{MANIFESTS}{UNRESTORABLE}{self.attempt:06d}.json"
        stale = [key for key in self._unrestorable.get(self.storage.uri, []) if key < mine]
        if stale:
            self.storage.delete(stale)
        swept: dict[str, bool] = {}

        def abandoned(group: str) -> bool:
            if group not in swept:
                swept[group] = group not in referenced and self._abandoned(group)
            return swept[group]

        for group in self.storage.list_dirs(DATA):
            if abandoned(group):
                self.storage.delete([key for key, _ in self.storage.list(group)])
                log.info("Deleted uncommitted data %s from %s", group, self.storage.uri)
        for key, upload in self.storage.list_uploads(DATA):
            if abandoned(_data_dir(key)):
                self.storage.abort_upload(key, upload)
                log.info("Aborted the incomplete upload of %s in %s", key, self.storage.uri)
        if not self.gang:
            return
        for group in self.storage.list_dirs(PARTS):  # parts of commits that never came (a rank died)
            order = parse_id(group[len(PARTS) :].rstrip("/"))
            if order is not None and order < newest_order and order[0] <= self.attempt:
                self.storage.delete([key for key, _ in self.storage.list(group)])
        done = [key for key, _ in self.storage.list(_gang.AGREEMENTS) if key < _gang.agreement_key(self.attempt)]
        if done:
            self.storage.delete(done)

    def _owner(self, group: str) -> tuple[int, str | None] | None:
        """(attempt, writer) of a data group `data/ATTEMPT.WRITER.NONCE/`; writer None for the groups
        of earlier SDK versions (`data/ATTEMPT-SEQUENCE.NONCE/`); None when it is neither."""
        name = group[len(DATA) :].rstrip("/")
        if len(name) < 6 or not name[:6].isdigit():
            return None
        parts = name.split(".")
        return int(name[:6]), (parts[1] if len(parts) == 3 and name[6:7] == "." else None)

    def _retirable(self, group: str) -> bool:
        """Whether retention may delete a doomed checkpoint's data in `group`: an earlier attempt's, or
        this writer's own. Another writer of this attempt (a sidecar) may still point its next
        incremental commit at its objects: they wait for the next attempt's sweep. In a gang, rank 0
        retires every rank's."""
        owner = self._owner(group)
        if owner is None or owner[0] > self.attempt:
            return False
        # A gang's commits are collective: no rank's last commit is ever doomed while it can reuse it.
        return owner[0] < self.attempt or self.gang is not None or owner[1] == self._writer

    def _abandoned(self, group: str) -> bool:
        """Whether the unreferenced data under `group` is provably abandoned: this writer's own while
        none of its commits is in flight, or an earlier attempt's untouched for ABANDONED_AFTER (the
        operator starts an attempt once the one before has ended, but a zombie of it on a partitioned
        node may still commit). Another writer's of this attempt (a sidecar's) may be an upload in
        flight: it waits for the next attempt's sweep."""
        owner = self._owner(group)
        if owner is None:
            return False
        if owner == (self.attempt, self._writer):
            return self._in_flight <= 1
        if owner[0] >= self.attempt:
            return False
        written = self.storage.newest(group)
        return written is None or time.time() - written > ABANDONED_AFTER

    # ----- reading ----------------------------------------------------------------------------------

    def _ids(self, storage: Storage) -> builtins.list[str]:
        """The committed ids in `storage`, from one listing that also shows the records beside the
        manifests (unrestorable-, rejected-) and each manifest's size."""
        listed = storage.list(MANIFESTS)
        keys = [key for key, _ in listed]
        self._sizes.update(((storage.uri, key), size) for key, size in listed)
        self._unrestorable[storage.uri] = [k for k in keys if k.startswith(MANIFESTS + UNRESTORABLE)]
        rejected = MANIFESTS + REJECTED
        self._rejected[storage.uri] = {k[len(rejected) : -len(".json")] for k in keys if k.startswith(rejected)}
        ids = [cid for key in keys if (cid := id_of_manifest_key(key))]
        if storage is self.storage:
            self._known = set(ids)
        return ids

    def _manifest(self, storage: Storage, cid: str) -> Manifest | None:
        """The checked manifest of `cid`, or None when it is gone or cannot be trusted (logged)."""
        found = self._manifest_or_why(storage, cid)
        return found if isinstance(found, Manifest) else None

    def _manifest_or_why(self, storage: Storage, cid: str) -> Manifest | str | None:
        """The checked manifest of `cid`; why it cannot be trusted; or None when it is gone."""
        cached = self._manifests.get((storage.uri, cid))
        if cached is not None:
            return cached
        key = manifest_key(cid)
        size = self._sizes.get((storage.uri, key), 0)
        try:
            if size > MANIFEST_MAX:
                raise ValueError(f"it is {size} bytes, above the {MANIFEST_MAX} this SDK reads")
            manifest = Manifest.from_json(storage.get(key))
            if manifest.id != cid:
                raise ValueError(f"it names {manifest.id}")
        except NotFoundError:
            return None
        except ValueError as err:
            log.warning("Skipped checkpoint %s in %s: unreadable manifest: %s", cid, storage.uri, err)
            return f"unreadable manifest: {err}"
        self._manifests[(storage.uri, cid)] = manifest
        return manifest

    def _candidates(self, *, fallback: bool = True) -> Iterator[tuple[Storage, Manifest]]:
        """Committed manifests, newest first: this run's, then resumeFrom's. Without `fallback`,
        resumeFrom's only when this run has none."""
        found = False
        for storage in (self.storage, self.resume_from):
            if storage is None or (found and not fallback):
                continue
            for cid in self._listed(storage):
                manifest = self._manifest(storage, cid)
                if manifest is not None:
                    found = True
                    yield storage, manifest

    def _listed(self, storage: Storage) -> builtins.list[str]:
        """Committed ids newest first, less those set aside (rejected)."""
        ids = self._ids(storage)
        rejected = self._rejected.get(storage.uri, set())
        return sorted((cid for cid in ids if cid not in rejected), reverse=True)

    def _first_intact(self, use: Any) -> Any:
        """Calls `use(storage, manifest)` on the newest checkpoint until one verifies. When every
        one fails, the listing is taken again (a concurrent retention may have replaced them).
        A gang's rank uses only the gang's one checkpoint (see `_gang_candidates`)."""
        if self.gang:
            for storage, manifest in self._gang_candidates():
                try:
                    result = use(storage, manifest)
                except CorruptCheckpointError as err:
                    raise self._reject(storage, manifest, err) from err
                except OSError as err:
                    raise CheckpointError(f"restoring checkpoint {manifest.id} of {storage.uri} failed: {err}") from err
                self._restored_from = manifest.id
                return result
            return None
        tried: set[tuple[str, str]] = set()
        corrupt: builtins.list[str] = []
        for _ in range(3):
            fresh = False
            for source in (self.storage, self.resume_from):
                if source is None:
                    continue
                for cid in self._listed(source):
                    if (source.uri, cid) in tried:
                        continue
                    fresh = True
                    tried.add((source.uri, cid))
                    found = self._manifest_or_why(source, cid)
                    if found is None:
                        continue  # gone since the listing (retention)
                    try:
                        if isinstance(found, str):
                            raise CorruptCheckpointError(found)
                        result = use(source, found)
                    except CorruptCheckpointError as err:
                        log.warning("Skipped corrupt checkpoint %s in %s: %s", cid, source.uri, err)
                        corrupt.append(cid)
                        continue
                    except OSError as err:
                        raise CheckpointError(f"restoring checkpoint {cid} of {source.uri} failed: {err}") from err
                    self._restored_from = cid
                    self.corrupt = corrupt
                    return result
            if not fresh:
                break
        self.corrupt = corrupt
        if corrupt:
            self._none_intact(corrupt)
        return None

    def _none_intact(self, ids: builtins.list[str]) -> None:
        """Checkpoints exist and not one verified: never a quiet start from the beginning."""
        where = self.storage.uri + (f" (and resumeFrom {self.resume_from.uri})" if self.resume_from else "")
        message = f"every committed checkpoint in {where} failed verification ({len(ids)}: {', '.join(ids)}); " + (
            "nothing was restored"
            if self.if_corrupt == "raise"
            else "the task starts from the beginning (if_corrupt='raise' makes this an error)"
        )
        log.error("Found no intact checkpoint: %s", message)
        if not getattr(self.storage, "read_only", False):
            record = {"attempt": self.attempt, "ids": ids, "message": message, "time": _now()}
            try:
                self.storage.put(f"{MANIFESTS}{UNRESTORABLE}{self.attempt:06d}.json", json.dumps(record).encode())
            except StorageError as err:
                log.warning("Recording that no checkpoint was intact in %s failed: %s", self.storage.uri, err)
        if self.if_corrupt == "raise":
            raise NoIntactCheckpointError(message, ids)

    def unrestorable(self) -> dict[str, Any] | None:
        """The newest record of an attempt that found checkpoints and none intact, as of this run's
        last listing (`latest()` takes one): {attempt, ids, message, time}, or None."""
        keys = self._unrestorable.get(self.storage.uri) or []
        for key in sorted(keys, reverse=True):
            with contextlib.suppress(NotFoundError, ValueError):
                record = json.loads(self.storage.get(key))
                if isinstance(record, dict):
                    return record
        return None

    def _gang_candidates(self) -> Iterator[tuple[Storage, Manifest]]:
        """A gang's one checkpoint to restore, the same on every rank: its own attempt's newest (only
        this gang writes those, and each rank's save returns once it is committed), else the one rank
        0 chose for this attempt. Listing alone could differ between ranks: an older attempt's zombie
        may commit while they list."""
        assert self.gang is not None
        for storage, manifest in self._candidates(fallback=False):
            if storage is self.storage and manifest.attempt == self.attempt:
                yield storage, manifest
                return
            break
        if getattr(self.storage, "read_only", False):  # a reader of one rank's part, not a gang's member
            newest = self._newest_of_this_size()
            if newest is not None:
                yield newest
            return
        if self._agreed is False:
            self._agreed = _gang.agree(self.storage, self.gang, self.attempt, self._choose)
        if not isinstance(self._agreed, tuple):
            return
        uri, cid = self._agreed
        source = next((s for s in (self.storage, self.resume_from) if s is not None and s.uri == uri), None)
        chosen = self._manifest(source, cid) if source is not None else None
        if source is None or chosen is None:
            raise CheckpointError(f"checkpoint {cid} of {uri}, which rank 0 chose for the gang to restore, is gone")
        yield source, chosen

    def _choose(self) -> tuple[str, str] | None:
        """Rank 0's choice for its gang, as (uri, id)."""
        newest = self._newest_of_this_size()
        return None if newest is None else (newest[0].uri, newest[1].id)

    def _newest_of_this_size(self) -> tuple[Storage, Manifest] | None:
        """The newest committed checkpoint, which must be of this gang's size."""
        for storage, manifest in self._candidates():
            if manifest.ranks != self.ranks:
                raise CheckpointError(
                    f"checkpoint {manifest.id} in {storage.uri} was written by {manifest.ranks} rank(s), and this "
                    f"gang has {self.ranks}: a gang restores only checkpoints of its own size"
                )
            return storage, manifest
        return None

    def _reject(self, storage: Storage, manifest: Manifest, err: CorruptCheckpointError) -> CheckpointError:
        """A rank's part of the gang's checkpoint is corrupt. Falling back alone would restore ranks
        from different checkpoints, so the checkpoint is set aside (under rejected/, for every later
        reader) and this attempt fails: the next one's gang agrees on the one before."""
        cid = manifest.id
        where = f"rank {self.rank}'s part of checkpoint {cid} in {storage.uri} is corrupt ({err})"
        if storage is not self.storage or getattr(self.storage, "read_only", False):
            return CheckpointError(f"{where}; it cannot be set aside here: the storage is read-only")
        record = {"id": cid, "rank": self.rank, "reason": str(err)[:2000], "time": _now()}
        self.storage.put(f"{MANIFESTS}{REJECTED}{cid}.json", json.dumps(record).encode())
        self._rejected.setdefault(storage.uri, set()).add(cid)
        log.error(
            "%s: set it aside (%s%s%s.json; its manifest and data are kept); the next attempt restores the one before",
            where,
            MANIFESTS,
            REJECTED,
            cid,
        )
        return CheckpointError(f"{where}: it was set aside, and the next attempt's ranks restore the one before")

    def _of_rank(self) -> str:
        return f" for rank {self.rank}" if self.gang else ""

    def _check_ranks(self, storage: Storage, manifest: Manifest) -> None:
        if manifest.ranks != self.ranks:
            raise CheckpointError(
                f"checkpoint {manifest.id} in {storage.uri} was written by a gang of {manifest.ranks} ranks; restore "
                f"it with Checkpoint(..., rank=R, ranks={manifest.ranks}) to get rank R's part"
                if self.ranks == 1
                else f"checkpoint {manifest.id} in {storage.uri} has {manifest.ranks} rank(s), not {self.ranks}"
            )

    def _target(self, path: str | os.PathLike[str] | None) -> Path:
        if path is None:
            return self._private_dir()
        if not isinstance(path, str | os.PathLike):
            raise CheckpointInputError(
                f"restore() takes a directory's path (str or os.PathLike), not {type(path).__name__}"
            )
        target = Path(path)
        if not target.is_dir():
            what = "does not exist" if not target.exists() else "is not a directory"
            raise CheckpointUsageError(
                f"cannot restore into {target}: it {what}; restore into an existing directory (create it first)"
            )
        return target

    def _record(self, target: Path) -> _restore.Record | None:
        """What the last restore put into `target`: this object's record, else the directory's."""
        return self._records.get(str(target.resolve())) or _restore.read_record(target)

    def _restore_into(self, storage: Storage, manifest: Manifest, target: Path) -> None:
        """Downloads and verifies the checkpoint in a staging directory inside `target`, then puts
        it in place (see `_restore.place`)."""
        self._check_ranks(storage, manifest)
        files = manifest.part(self.rank)
        where = f"checkpoint {manifest.id} in {storage.uri}{self._of_rank()}"
        self._check_room(storage, manifest, target, where)
        directories = manifest.metadata.get("directories", [])
        if manifest.ranks > 1:
            directories = (manifest.metadata.get("rankDirectories") or {}).get(str(self.rank), [])
        for stale in target.glob(".spotrun-restore-*"):  # of a restore killed midway
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".spotrun-restore-", dir=target))
        try:
            _transfer.download_files(storage, files, staging, where, self.concurrency)
            previous = self._record(target)
            _restore.write_record(target, None)  # until `place` is done, the directory proves nothing
            record = _restore.place(
                staging, target, [f.path for f in files], directories, previous, storage.uri, manifest.id
            )
            self._records[str(target.resolve())] = record
            _restore.write_record(target, record)
            # A rewrite within the filesystem's timestamp tick of the placing could keep the identity
            # just recorded: the task gets the files only once the tick is over.
            time.sleep(_snapshot.RACY_NS / 1e9)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _check_room(self, storage: Storage, manifest: Manifest, target: Path, where: str) -> None:
        """Refuses a restore that cannot fit the target's disk (counting what the last restore put
        there as freed). A manifest that claims more than its objects hold is corrupt; one whose
        objects are that large raises CheckpointError: falling back would resume from older work,
        and let retention delete the newer checkpoints later."""
        files = manifest.part(self.rank)
        needed = sum(f.size for f in files if f.inline is None)
        previous = self._record(target)
        freed = 0
        for rel in previous.paths if previous else ():
            with contextlib.suppress(OSError):
                freed += os.lstat(target / rel).st_size
        free = shutil.disk_usage(target).free
        if needed - freed <= free:
            return
        stored = {
            key: size for group in {_data_dir(f.key) for f in files if f.key} for key, size in storage.list(group)
        }
        if any(f.key and stored.get(f.key) != f.size for f in files):
            raise CorruptCheckpointError(f"{where}: its manifest claims sizes that its objects do not have")
        raise CheckpointError(
            f"{where} needs {needed - freed} bytes more on {target}, which has {free} free; give the pod more "
            "disk (ephemeral-storage, or a larger volume), or restore into a directory on a larger one"
        )

    def _private_dir(self) -> Path:
        if self._default_dir is None:
            self._default_dir = Path(tempfile.mkdtemp(prefix="spotrun-restore-"))
            weakref.finalize(self, shutil.rmtree, str(self._default_dir), True)
        return self._default_dir


def _keys_named(storage: Storage, cid: str) -> builtins.list[str] | None:
    """The keys a manifest that failed the schema names, read leniently; None when it is not JSON
    with a list of files."""
    try:
        body = json.loads(storage.get(manifest_key(cid)))
    except NotFoundError:
        return []
    except (ValueError, RecursionError, StorageError):
        return None
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, builtins.list):
        return None
    return [f["key"] for f in files if isinstance(f, dict) and isinstance(f.get("key"), str) and f["key"]]


def _data_dir(key: str) -> str:
    """`data/ID.NONCE/a/b.bin` -> `data/ID.NONCE/`."""
    parts = key.split("/", 2)
    return f"{parts[0]}/{parts[1]}/" if len(parts) > 2 else key


def restore_record(target: Path) -> dict[str, Any] | None:
    """What the last restore into `target` recorded on it, from any process: {uri, id, paths, dirs, proof}."""
    record = _restore.read_record(target)
    return None if record is None else record.to_dict()


def _attempt_from_env() -> int:
    """SPOTRUN_ATTEMPT, as every TaskRun pod has it; 1 outside one."""
    raw = os.environ.get("SPOTRUN_ATTEMPT", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise CheckpointUsageError(f"SPOTRUN_ATTEMPT={raw!r} must be a whole number from 1; unset it outside a TaskRun")
    return int(raw)


def _check_grace(what: str) -> None:
    """Raises CheckpointError once the pod's grace period after SIGTERM has run out: retrying past
    it only loses the commit to SIGKILL in the middle, and hides why."""
    deadline = _preemption.deadline()
    if deadline is not None and time.monotonic() >= deadline:
        raise CheckpointError(f"gave up {what}: the pod's grace period ran out")


def _check_arguments(
    storage: Any, attempt: Any, keep: Any, concurrency: Any, if_corrupt: Any, resume_from: Any
) -> None:
    """Refuses arguments that cannot work, naming what to pass instead."""
    for name, value in (("storage", storage), ("resume_from", resume_from)):
        if value is not None and not all(hasattr(value, m) for m in ("put", "get", "list", "delete", "uri")):
            raise CheckpointInputError(
                f"{name} must be a Storage (spotrun.open_storage(uri), LocalStorage or S3Storage), "
                f"not {type(value).__name__}"
            )
    if storage is None:
        raise CheckpointInputError("storage is required: pass spotrun.open_storage('s3://BUCKET/PREFIX') or a path")
    for name, value, least in (("attempt", attempt, 1), ("keep", keep, 1), ("concurrency", concurrency, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointInputError(f"{name} must be an int, not {type(value).__name__}")
        if value < least:
            raise CheckpointUsageError(f"{name} must be {least} or more, not {value}")
    if if_corrupt not in IF_CORRUPT:
        raise CheckpointUsageError(f"if_corrupt must be one of {', '.join(IF_CORRUPT)}, not {if_corrupt!r}")


RESERVED_METADATA = ("directories", "rankDirectories")  # the SDK's own, in every manifest's metadata


def _check_commit_arguments(step: Any, metadata: Any) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise CheckpointInputError(f"step must be an int or None, not {type(step).__name__}")
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise CheckpointInputError(f"metadata must be a dict of JSON values, not {type(metadata).__name__}")
    reserved = [key for key in RESERVED_METADATA if key in metadata]
    if reserved:
        raise CheckpointUsageError(
            f"metadata key {reserved[0]!r} is the SDK's own (it lists a directory checkpoint's empty "
            "directories); name yours otherwise"
        )
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise CheckpointInputError(
            f"metadata must hold only JSON values (str, int, float, bool, None, list, dict): {err}"
        ) from None


def _readable_binary(source: Any) -> IO[bytes]:
    """`source` if it is a binary stream open for reading; else a CheckpointInputError saying what to pass."""
    expected = "save() takes a path (str or os.PathLike), or a binary file open for reading (open(path, 'rb'))"
    if isinstance(source, bytes | bytearray | memoryview):
        raise CheckpointInputError(f"{expected}, not {type(source).__name__}: commit bytes with write()")
    if isinstance(source, io.TextIOBase):
        raise CheckpointInputError(f"{expected}, not a text stream: open the file with 'rb'")
    if isinstance(source, type) or not callable(getattr(source, "read", None)):
        raise CheckpointInputError(f"{expected}, not {type(source).__name__}")
    if getattr(source, "closed", False):
        raise CheckpointInputError(f"{expected}: this stream is closed")
    readable = getattr(source, "readable", None)
    if callable(readable) and not readable():
        raise CheckpointInputError(f"{expected}: this stream is not open for reading")
    return source  # type: ignore[no-any-return]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _writer() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pod": os.environ.get("HOSTNAME", ""),
        "taskrun": os.environ.get("SPOTRUN_TASKRUN", ""),
    }
