"""The checkpoint commit protocol: atomic, fenced by attempt, verified on restore, with retention.

docs/checkpoints.md describes the protocol; this module is its only implementation.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from spotrun import _gang, _transfer
from spotrun._errors import CheckpointError, CorruptCheckpointError, StorageError
from spotrun._manifest import (
    DATA,
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

REJECTED = "rejected/"  # a gang's checkpoint set aside: a rank found its part corrupt
MARKER = ".spotrun-checkpoint.json"  # written into a restored directory: which checkpoint it holds
BYTES_NAME = "checkpoint.bin"
COMMIT_TRIES = 20
SWEEP_EVERY = 20  # commits between sweeps for data that no manifest references


class Checkpoint:
    """Checkpoints of one task, Flyte-compatible (`read`, `write`, `save`, `restore`, `prev_exists`).

    Every commit is atomic: the data is uploaded first, then a manifest listing each object's
    size and sha256 is created (create-only). A checkpoint exists once its manifest does, so a
    reader sees a whole checkpoint or none. Ids are `ATTEMPT-SEQUENCE`: a pod of an older attempt
    that still runs can only ever add older checkpoints. Restore takes the newest manifest of any
    attempt whose data verifies, falling back to older ones.

    Args:
        storage: where this task's checkpoints live (the TaskRun's prefix).
        attempt: this attempt's number, from 1 (SPOTRUN_ATTEMPT); it orders and fences commits.
        resume_from: another run's checkpoints, read while `storage` has none; never written.
        keep: how many committed checkpoints retention keeps (at least 1).
        concurrency: parallel transfers for directories of many small files.
        rank: this process's rank in a gang (SPOTRUN_RANK), from 0.
        ranks: the gang's size (SPOTRUN_WORLD_SIZE). With 2 or more, every commit is collective:
            all ranks call it, each saves its own part, and the checkpoint exists only once every
            part is in; every rank restores its own part of the same checkpoint (see `_gang`).
        gang_timeout: how long a rank waits for the others in a collective commit or restore.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        attempt: int = 1,
        resume_from: Storage | None = None,
        keep: int = 3,
        concurrency: int = 10,
        rank: int = 0,
        ranks: int = 1,
        gang_timeout: float = 600.0,
    ) -> None:
        self.gang = _gang.Gang(rank, ranks, gang_timeout) if ranks != 1 or rank != 0 else None
        if attempt < 1:
            raise ValueError(f"attempt must be 1 or more, not {attempt}")
        if keep < 1:
            raise ValueError(f"keep must be 1 or more, not {keep}")
        self.storage = storage
        self.attempt = attempt
        self.resume_from = resume_from
        self.keep = keep
        self.concurrency = concurrency
        # Reentrant: an on_preemption callback may commit while the main thread is inside a commit.
        self._lock = threading.RLock()
        self._in_flight = 0  # commits under way in this process (one may run inside another)
        self._sequence: Iterator[int] | None = None
        self._manifests: dict[tuple[str, str], Manifest] = {}  # manifests are immutable: cached by (uri, id)
        self._restored_from: str | None = None
        self._last_commit: Manifest | None = None
        self._commits = 0
        self._default_dir: Path | None = None
        self._stamps: dict[str, tuple[int, int, int]] = {}  # path -> (size, mtime, mode) at the last sync
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
        return bool(self._ids(self.storage)) or bool(self.resume_from and self._ids(self.resume_from))

    def read(self) -> bytes | None:
        """The newest checkpoint's bytes (a single-file checkpoint, as `write` makes), or None."""

        def fetch(storage: Storage, manifest: Manifest) -> bytes:
            self._check_ranks(storage, manifest)
            files = manifest.part(self.rank)
            if len(files) != 1:
                raise CheckpointError(
                    f"read() needs a single-file checkpoint, but {manifest.id} in {storage.uri} has "
                    f"{len(files)} files{self._of_rank()}; use restore() for directories"
                )
            return _transfer.fetch_bytes(storage, files[0], f"checkpoint {manifest.id} in {storage.uri}")

        data: bytes | None = self._first_intact(fetch)
        return data

    def write(self, data: bytes, *, step: int | None = None, metadata: dict[str, Any] | None = None) -> CheckpointInfo:
        """Commits `data` as a new checkpoint; `read()` returns it until a newer one is committed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}; encode it first")

        def upload(prefix: str) -> builtins.list[FileEntry]:
            return [_transfer.upload_bytes(self.storage, prefix + BYTES_NAME, BYTES_NAME, bytes(data))]

        return self._commit("bytes", upload, step, metadata)

    def save(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        step: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Commits a file, a directory (tree and file modes kept) or a readable binary stream."""
        if hasattr(source, "read"):
            stream: IO[bytes] = source  # type: ignore[assignment]

            def upload_stream(prefix: str) -> builtins.list[FileEntry]:
                return [_transfer.upload_stream(self.storage, prefix + BYTES_NAME, BYTES_NAME, stream)]

            return self._commit("stream", upload_stream, step, metadata)
        path = Path(source)
        if path.is_dir():
            return self._save_directory(path, step, metadata, incremental=False)
        if not path.is_file():
            raise CheckpointError(f"cannot save {path}: it is neither a file nor a directory")

        def upload_file(prefix: str) -> builtins.list[FileEntry]:
            return [_transfer.upload_file(self.storage, prefix + path.name, path.name, path)]

        return self._commit("file", upload_file, step, metadata)

    def restore(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Downloads the newest intact checkpoint into `path` (a directory; a private temporary
        one by default) and returns it, or None when there is none. Restoring the same
        checkpoint into the same directory again does nothing: restore is idempotent."""
        target = Path(path) if path is not None else self._private_dir()

        def download(storage: Storage, manifest: Manifest) -> Path:
            if _marker_id(target) != (storage.uri, manifest.id):
                self._restore_into(storage, manifest, target)
            return target

        restored: Path | None = self._first_intact(download)
        return restored

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

    def _next_sequence(self) -> int:
        with self._lock:
            if self._sequence is None:
                # Committed ids only, in a gang too: a rank's first id is taken before it writes its
                # part, so the gang cannot commit that id before every rank has taken it.
                own = [p for p in (parse_id(i) for i in self._ids(self.storage)) if p and p[0] == self.attempt]
                self._sequence = itertools.count(max((s for _, s in own), default=0) + 1)
            return next(self._sequence)

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
            return self._commit_once(kind, upload, step, metadata, directories)
        finally:
            self._in_flight -= 1

    def _commit_once(
        self,
        kind: str,
        upload: Any,
        step: int | None,
        metadata: dict[str, Any] | None,
        directories: tuple[str, ...],
    ) -> CheckpointInfo:
        sequence = self._next_sequence()
        prefix = f"{DATA}{checkpoint_id(self.attempt, sequence)}.{new_nonce()}/"
        files: builtins.list[FileEntry] = upload(prefix)
        if self.gang:
            manifest = _gang.commit(
                self.storage,
                self.gang,
                Manifest(
                    id=checkpoint_id(self.attempt, sequence),
                    attempt=self.attempt,
                    sequence=sequence,
                    kind=kind,
                    files=tuple(sorted((dataclasses.replace(f, rank=self.rank) for f in files), key=lambda f: f.path)),
                    time=datetime.datetime.now(datetime.UTC).isoformat(),
                    step=step,
                    metadata={**(metadata or {}), **({"directories": list(directories)} if directories else {})},
                    writer=_writer(),
                    ranks=self.ranks,
                ),
            )
            return self._committed(manifest)
        for _ in range(COMMIT_TRIES):
            manifest = Manifest(
                id=checkpoint_id(self.attempt, sequence),
                attempt=self.attempt,
                sequence=sequence,
                kind=kind,
                files=tuple(sorted(files, key=lambda f: f.path)),
                time=datetime.datetime.now(datetime.UTC).isoformat(),
                step=step,
                metadata={**(metadata or {}), **({"directories": list(directories)} if directories else {})},
                writer=_writer(),
            )
            try:
                self.storage.put(manifest_key(manifest.id), manifest.to_json(), create_only=True)
                break
            except AlreadyExistsError:
                # Another writer of this attempt took the id. Its data sits under its own nonce,
                # so this commit only needs the next id.
                log.warning("Checkpoint id %s was taken by another writer; retrying with the next", manifest.id)
                sequence = self._next_sequence()
        else:
            raise CheckpointError(f"could not commit a checkpoint to {self.storage.uri} after {COMMIT_TRIES} tries")
        return self._committed(manifest)

    def _committed(self, manifest: Manifest) -> CheckpointInfo:
        self._manifests[(self.storage.uri, manifest.id)] = manifest
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
        sources: builtins.list[tuple[str, Path]] = []
        empty_dirs: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".spotrun-"))
            names = sorted(n for n in filenames if n != MARKER)
            if not names and not dirnames and here != root:
                empty_dirs.append(here.relative_to(root).as_posix())
            sources.extend((here.joinpath(n).relative_to(root).as_posix(), here / n) for n in names)
        last = self._last_commit
        previous = {f.path: f for f in last.part(self.rank)} if incremental and last else {}  # this rank's own
        stamps = dict(self._stamps)

        def upload(prefix: str) -> builtins.list[FileEntry]:
            entries: builtins.list[FileEntry] = []
            jobs = []
            for rel, path in sources:
                info = path.stat()
                stamp = (info.st_size, info.st_mtime_ns, info.st_mode)
                # Unchanged since this process's previous commit: point at the object it uploaded.
                if rel in previous and stamps.get(rel) == stamp:
                    entries.append(previous[rel])
                else:
                    jobs.append((prefix + rel, rel, path))
                stamps[rel] = stamp
            entries.extend(_transfer.upload_files(self.storage, jobs, self.concurrency))
            return entries

        info = self._commit("directory", upload, step, metadata, tuple(empty_dirs))
        self._stamps = stamps
        return info

    # ----- retention -------------------------------------------------------------------------------

    def _retain(self, newest: Manifest) -> None:
        """Keeps the newest `keep` checkpoints; deletes older ones, manifest first, then their data
        (so no manifest ever points at deleted data). Checkpoints of later attempts are never
        touched: only their own attempt or a later one may remove them."""
        if self.gang:  # committed: its parts have served (their files are in the manifest)
            self.storage.delete([part_key(newest.id, r) for r in range(self.ranks)])
        ids = sorted(self._ids(self.storage), reverse=True)
        kept, surplus = ids[: self.keep], ids[self.keep :]
        doomed = [i for i in surplus if (parse_id(i) or (0, 0))[0] <= self.attempt]
        sweep = (self._commits == 1 or self._commits % SWEEP_EVERY == 0) and self._in_flight == 1
        if not doomed and not sweep:
            return
        referenced: set[str] = set()
        for cid in kept:
            manifest = self._manifest(self.storage, cid)
            if manifest is not None:
                referenced.update(_data_dir(f.key) for f in manifest.files)
        for cid in doomed:
            manifest = self._manifest(self.storage, cid)
            self.storage.delete([manifest_key(cid)])
            if manifest is not None:
                self.storage.delete([f.key for f in manifest.files if _data_dir(f.key) not in referenced])
            log.info("Deleted checkpoint %s from %s (keeping the newest %d)", cid, self.storage.uri, self.keep)
        if sweep:
            self._sweep(set(ids) - set(doomed), referenced, newest)

    def _sweep(self, live_ids: set[str], referenced: set[str], newest: Manifest) -> None:
        """Deletes data that no manifest references and that is older than this commit: uploads
        of writers that died before committing. Newer data may be an upload in flight."""
        for cid in live_ids:
            manifest = self._manifest(self.storage, cid)
            if manifest is not None:
                referenced.update(_data_dir(f.key) for f in manifest.files)
        newest_order = (newest.attempt, newest.sequence)
        for group in self.storage.list_dirs(DATA):
            name = group[len(DATA) :].rstrip("/")
            order = parse_id(name.split(".", 1)[0])
            if group in referenced or order is None or order >= newest_order or order[0] > self.attempt:
                continue
            self.storage.delete([key for key, _ in self.storage.list(group)])
            log.info("Deleted uncommitted data %s from %s", group, self.storage.uri)
        if not self.gang:
            return
        for group in self.storage.list_dirs(PARTS):  # parts of commits that never came (a rank died)
            order = parse_id(group[len(PARTS) :].rstrip("/"))
            if order is not None and order < newest_order and order[0] <= self.attempt:
                self.storage.delete([key for key, _ in self.storage.list(group)])
        done = [key for key, _ in self.storage.list(_gang.AGREEMENTS) if key < _gang.agreement_key(self.attempt)]
        if done:
            self.storage.delete(done)

    # ----- reading ----------------------------------------------------------------------------------

    def _ids(self, storage: Storage) -> builtins.list[str]:
        return [cid for key, _ in storage.list(MANIFESTS) if (cid := id_of_manifest_key(key))]

    def _manifest(self, storage: Storage, cid: str) -> Manifest | None:
        cached = self._manifests.get((storage.uri, cid))
        if cached is not None:
            return cached
        try:
            manifest = Manifest.from_json(storage.get(manifest_key(cid)))
        except NotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Skipped checkpoint %s in %s: unreadable manifest: %s", cid, storage.uri, err)
            return None
        if manifest.id != cid:
            log.warning("Skipped checkpoint %s in %s: its manifest names %s", cid, storage.uri, manifest.id)
            return None
        self._manifests[(storage.uri, cid)] = manifest
        return manifest

    def _candidates(self, *, fallback: bool = True) -> Iterator[tuple[Storage, Manifest]]:
        """Committed manifests, newest first: this run's, then resumeFrom's. Without `fallback`,
        resumeFrom's only when this run has none."""
        found = False
        for storage in (self.storage, self.resume_from):
            if storage is None or (found and not fallback):
                continue
            for cid in sorted(self._ids(storage), reverse=True):
                manifest = self._manifest(storage, cid)
                if manifest is not None:
                    found = True
                    yield storage, manifest

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
                self._restored_from = manifest.id
                return result
            return None
        tried: set[tuple[str, str]] = set()
        for _ in range(3):
            fresh = False
            for storage, manifest in self._candidates():
                if (storage.uri, manifest.id) in tried:
                    continue
                fresh = True
                tried.add((storage.uri, manifest.id))
                try:
                    result = use(storage, manifest)
                except CorruptCheckpointError as err:
                    log.warning("Skipped corrupt checkpoint %s in %s: %s", manifest.id, storage.uri, err)
                    continue
                self._restored_from = manifest.id
                return result
            if not fresh:
                break
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
        self.storage.put(f"{REJECTED}{manifest.id}.json", manifest.to_json())
        self.storage.delete([manifest_key(manifest.id)])
        self._manifests.pop((storage.uri, manifest.id), None)
        log.error(
            "%s: set it aside as %s%s.json; the next attempt restores the one before", where, REJECTED, manifest.id
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

    def _restore_into(self, storage: Storage, manifest: Manifest, target: Path) -> None:
        self._check_ranks(storage, manifest)
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".spotrun-restore-", dir=target))
        try:
            where = f"checkpoint {manifest.id} in {storage.uri}{self._of_rank()}"
            _transfer.download_files(storage, manifest.part(self.rank), staging, where, self.concurrency)
            directories = manifest.metadata.get("directories", [])
            if manifest.ranks > 1:
                directories = (manifest.metadata.get("rankDirectories") or {}).get(str(self.rank), [])
            for rel in directories:
                (staging / rel).mkdir(parents=True, exist_ok=True)
            # Verified in full: now replace what an earlier restore left, entry by entry.
            previous = _marker_entries(target)
            for name in previous | {p.name for p in staging.iterdir()}:
                existing = target / name
                if existing.is_dir() and not existing.is_symlink():
                    shutil.rmtree(existing)
                else:
                    existing.unlink(missing_ok=True)
            for entry in staging.iterdir():
                entry.rename(target / entry.name)
            entries = sorted(
                p.name for p in target.iterdir() if p.name != MARKER and not p.name.startswith(".spotrun-")
            )
            (target / MARKER).write_text(json.dumps({"uri": storage.uri, "id": manifest.id, "entries": entries}))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _private_dir(self) -> Path:
        if self._default_dir is None:
            self._default_dir = Path(tempfile.mkdtemp(prefix="spotrun-restore-"))
            weakref.finalize(self, shutil.rmtree, str(self._default_dir), True)
        return self._default_dir


def _data_dir(key: str) -> str:
    """`data/ID.NONCE/a/b.bin` -> `data/ID.NONCE/`."""
    parts = key.split("/", 2)
    return f"{parts[0]}/{parts[1]}/" if len(parts) > 2 else key


def _marker_id(target: Path) -> tuple[str, str] | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        marker = json.loads((target / MARKER).read_text())
        return str(marker["uri"]), str(marker["id"])
    return None


def _marker_entries(target: Path) -> set[str]:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return set(json.loads((target / MARKER).read_text())["entries"])
    return set()


def _writer() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pod": os.environ.get("HOSTNAME", ""),
        "taskrun": os.environ.get("SPOTRUN_TASKRUN", ""),
    }
