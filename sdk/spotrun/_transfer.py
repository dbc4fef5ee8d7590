"""Moves files between disk and storage, computing each file's size and sha256 on the way."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TypeVar

from spotrun._errors import CheckpointUsageError, CorruptCheckpointError
from spotrun._manifest import MODE_MASK, FileEntry
from spotrun._storage import NotFoundError, Storage

J = TypeVar("J")
R = TypeVar("R")

SMALL_FILE = 8 << 20  # below this a file is one request, read whole; above it, streamed
CHUNK = 1 << 20


class FileChangedError(CheckpointUsageError):
    """A file changed while it was being saved: its hash might not be its upload's."""


class HashingReader(io.RawIOBase):
    """Reads a file front to back, hashing and counting what passes.

    It says it cannot seek, so s3transfer reads it once in order (its non-seekable path), which is
    what lets the digest be computed in the same pass as the upload, with memory bounded by
    s3transfer's in-flight chunks rather than the file's size.
    """

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.size += n
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


def upload_bytes(storage: Storage, key: str, path: str, data: bytes, mode: int = 0o644) -> FileEntry:
    storage.put(key, data)
    return FileEntry(path=path, key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(), mode=mode)


def inline_bytes(path: str, data: bytes, mode: int = 0o644) -> FileEntry:
    """A file kept in the manifest itself: no request of its own, committed with the manifest."""
    return FileEntry(
        path=path,
        key="",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mode=mode,
        inline=base64.b64encode(data).decode(),
    )


def inline_file(path: str, source: Path, mode: int | None = None) -> FileEntry:
    data = source.read_bytes()
    return inline_bytes(path, data, stat.S_IMODE(source.stat().st_mode if mode is None else mode))


def link_entry(path: str, target: str) -> FileEntry:
    """A symbolic link, kept as one: its target (checked to stay inside) is its content."""
    return FileEntry(
        path=path, key="", size=0, sha256=hashlib.sha256(target.encode()).hexdigest(), mode=0o777, link=target
    )


def _inline_data(entry: FileEntry, where: str) -> bytes:
    assert entry.inline is not None
    try:
        return base64.b64decode(entry.inline, validate=True)
    except ValueError as err:
        raise CorruptCheckpointError(f"{where}: the bytes of {entry.path} in the manifest are not base64") from err


def upload_stream(storage: Storage, key: str, path: str, source: IO[bytes], mode: int = 0o644) -> FileEntry:
    reader = HashingReader(source)
    storage.put_stream(key, reader)  # type: ignore[arg-type]
    return FileEntry(path=path, key=key, size=reader.size, sha256=reader.sha256.hexdigest(), mode=mode)


def upload_file(storage: Storage, key: str, path: str, source: Path) -> FileEntry:
    """A small file in one request; a large one read from disk by the upload (in parallel parts,
    nothing held whole) while a thread hashes it from the page cache. A file that changed on the
    way (size, mtime or inode not as at the start) is refused: its hash might not be its upload's."""
    info = source.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_size < SMALL_FILE:
        return upload_bytes(storage, key, path, source.read_bytes(), mode)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spotrun-hash") as pool:
        hashed = pool.submit(_hash_file, source)
        storage.put_file(key, source)
        size, digest = hashed.result()
    after = source.stat()
    if (after.st_ino, after.st_size, after.st_mtime_ns) != (info.st_ino, info.st_size, info.st_mtime_ns) or (
        size != info.st_size
    ):
        raise FileChangedError(
            f"{source} changed while it was being saved ({info.st_size} bytes at the start, {after.st_size} "
            "at the end); save it once it is written and closed"
        )
    return FileEntry(path=path, key=key, size=size, sha256=digest, mode=mode)


def _hash_file(source: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with source.open("rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


def upload_files(storage: Storage, jobs: Iterable[tuple[str, str, Path]], concurrency: int) -> list[FileEntry]:
    """Uploads (key, path-in-checkpoint, source) jobs: small files in parallel, large ones streamed."""
    small: list[tuple[str, str, Path]] = []
    large: list[tuple[str, str, Path]] = []
    for job in jobs:
        (small if job[2].stat().st_size < SMALL_FILE else large).append(job)
    return _run_parallel(lambda job: upload_file(storage, *job), small, large, concurrency)


def verify(entry: FileEntry, size: int, digest: str, where: str) -> None:
    if size != entry.size:
        raise CorruptCheckpointError(f"{where}: {entry.path} is {size} bytes, the manifest says {entry.size}")
    if digest != entry.sha256:
        raise CorruptCheckpointError(f"{where}: {entry.path} does not match its sha256 in the manifest")


def fetch_bytes(storage: Storage, entry: FileEntry, where: str) -> bytes:
    for attempt in (1, 2):  # as in download_file: a bad transfer is not a corrupt checkpoint
        try:
            if entry.inline is not None:
                data = _inline_data(entry, where)
            elif entry.size < SMALL_FILE:
                data = storage.get(entry.key)
            else:
                buffer = io.BytesIO()
                storage.get_stream(entry.key, buffer)
                data = buffer.getvalue()
        except NotFoundError as err:
            raise CorruptCheckpointError(f"{where}: object {entry.key} of {entry.path} is missing") from err
        try:
            verify(entry, len(data), hashlib.sha256(data).hexdigest(), where)
            return data
        except CorruptCheckpointError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def download_file(storage: Storage, entry: FileEntry, target: Path, where: str) -> None:
    """Writes `entry` at `target` (in a private staging directory: nothing there is the user's),
    verified, with its mode masked to MODE_MASK; a link is made as a link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.link is not None:
        if hashlib.sha256(entry.link.encode()).hexdigest() != entry.sha256:
            raise CorruptCheckpointError(f"{where}: the link {entry.path} does not match its sha256 in the manifest")
        os.symlink(entry.link, target)
        return
    # A mismatch is checked twice before the checkpoint is called corrupt: a transfer that went
    # wrong must not make a restore skip a good checkpoint.
    for attempt in (1, 2):
        try:
            if entry.inline is not None or entry.size < SMALL_FILE:
                data = _inline_data(entry, where) if entry.inline is not None else storage.get(entry.key)
                size, digest = len(data), hashlib.sha256(data).hexdigest()
                if size == entry.size and digest == entry.sha256:
                    target.write_bytes(data)
            else:
                size, digest = storage.get_file(entry.key, target, entry.size)
        except NotFoundError as err:
            raise CorruptCheckpointError(f"{where}: object {entry.key} of {entry.path} is missing") from err
        try:
            verify(entry, size, digest, where)
            break
        except CorruptCheckpointError:
            if attempt == 2:
                raise
    os.chmod(target, entry.mode & MODE_MASK)


def download_files(storage: Storage, entries: Iterable[FileEntry], root: Path, where: str, concurrency: int) -> None:
    entries = list(entries)
    small = [e for e in entries if e.size < SMALL_FILE]
    large = [e for e in entries if e.size >= SMALL_FILE]
    _run_parallel(lambda e: download_file(storage, e, root / e.path, where), small, large, concurrency)


def _run_parallel(work: Callable[[J], R], small: list[J], large: list[J], concurrency: int) -> list[R]:
    """Small jobs on a thread pool while large ones run here, one at a time (each is already
    parallel inside s3transfer). The first failure cancels what has not started and is raised."""
    results: list[R] = []
    if not small:
        return [work(job) for job in large]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(work, job) for job in small]
        try:
            results.extend(work(job) for job in large)
            for future in concurrent.futures.as_completed(futures):
                results.append(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
