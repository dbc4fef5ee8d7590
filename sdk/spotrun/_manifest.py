"""Checkpoint identity and the manifest: the commit record that makes a checkpoint exist."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from typing import Any

FORMAT = 1  # one writer's checkpoint; a gang's (ranks > 1) is FORMAT_GANG, so older readers skip it
FORMAT_GANG = 2
FORMAT_INLINE = 3  # one writer's, with its small files' bytes in the manifest (older readers skip it)
INLINE_MAX = 64 << 10  # a checkpoint of at most this many bytes is committed inside its manifest
MANIFESTS = "manifests/"
DATA = "data/"
PARTS = "parts/"  # a gang's parts: parts/ID/RANK.json, one per rank, before rank 0 commits ID
_ID = re.compile(r"^(\d{6,})-(\d{6,})$")


def checkpoint_id(attempt: int, sequence: int) -> str:
    """`000003-000017`: zero-padded so that key order is (attempt, sequence) order."""
    return f"{attempt:06d}-{sequence:06d}"


def parse_id(text: str) -> tuple[int, int] | None:
    match = _ID.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def manifest_key(cid: str) -> str:
    return f"{MANIFESTS}{cid}.json"


def id_of_manifest_key(key: str) -> str | None:
    if not key.startswith(MANIFESTS) or not key.endswith(".json"):
        return None
    cid = key[len(MANIFESTS) : -len(".json")]
    return cid if parse_id(cid) else None


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One object of a checkpoint: where it sits in the tree, where it is stored, and its proof."""

    path: str
    key: str
    size: int
    sha256: str
    mode: int = 0o644
    rank: int = 0  # in a gang's checkpoint: the rank whose part it is
    inline: str | None = None  # the bytes themselves, base64, for a file kept in the manifest (key "")


def part_key(cid: str, rank: int) -> str:
    return f"{PARTS}{cid}/{rank}.json"


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint as a task sees it.

    Attributes:
        id: `ATTEMPT-SEQUENCE`, zero-padded; the newest checkpoint is the greatest id.
        attempt: the attempt (SPOTRUN_ATTEMPT) that committed it.
        sequence: its order among that attempt's commits, from 1.
        step: the step the task passed to `save`/`write`, when it passed one.
        time: when it was committed (UTC).
        size: bytes of data, all files together.
        digest: sha256 over the sorted (path, size, sha256) of its files.
        files: how many files it holds.
        kind: "bytes" (from `write`), "file", "stream" or "directory".
        uri: where it is stored.
        metadata: what the task passed as `metadata`.
        ranks: how many ranks wrote it: 1, or a gang's size (each rank restores its own part).
    """

    id: str
    attempt: int
    sequence: int
    step: int | None
    time: datetime.datetime
    size: int
    digest: str
    files: int
    kind: str
    uri: str
    metadata: dict[str, Any]
    ranks: int = 1


@dataclasses.dataclass(frozen=True)
class Manifest:
    id: str
    attempt: int
    sequence: int
    kind: str
    files: tuple[FileEntry, ...]
    time: str
    step: int | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    writer: dict[str, Any] = dataclasses.field(default_factory=dict)
    ranks: int = 1  # a gang's checkpoint holds every rank's part (each file names its rank)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        ordered = sorted(self.files, key=lambda f: (f.rank, f.path))
        if self.ranks == 1:
            lines = "".join(f"{f.path}\0{f.size}\0{f.sha256}\n" for f in ordered)
        else:
            lines = "".join(f"{f.rank}\0{f.path}\0{f.size}\0{f.sha256}\n" for f in ordered)
        return hashlib.sha256(lines.encode()).hexdigest()

    def part(self, rank: int) -> tuple[FileEntry, ...]:
        """The files of one rank (all of them in a single writer's checkpoint)."""
        return self.files if self.ranks == 1 else tuple(f for f in self.files if f.rank == rank)

    def to_json(self) -> bytes:
        inline = any(f.inline is not None for f in self.files)
        if inline and self.ranks > 1:
            raise ValueError("a gang's checkpoint keeps no file in its manifest")
        files = [
            {k: v for k, v in dataclasses.asdict(f).items() if not (k == "rank" and self.ranks == 1) and v is not None}
            for f in self.files
        ]
        body = {
            "format": FORMAT_GANG if self.ranks > 1 else FORMAT_INLINE if inline else FORMAT,
            "id": self.id,
            "attempt": self.attempt,
            "sequence": self.sequence,
            "kind": self.kind,
            "step": self.step,
            "time": self.time,
            "size": self.size,
            "digest": self.digest,
            "files": files,
            "metadata": self.metadata,
            "writer": self.writer,
        }
        if self.ranks > 1:
            body["ranks"] = self.ranks
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parses and checks a manifest; ValueError when it is not one this SDK can trust."""
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("format") not in (FORMAT, FORMAT_GANG, FORMAT_INLINE):
            raise ValueError(f"unknown manifest format {body.get('format') if isinstance(body, dict) else body!r}")
        ranks = int(body.get("ranks", 1)) if body["format"] == FORMAT_GANG else 1
        if body["format"] == FORMAT_GANG and ranks < 2:
            raise ValueError(f"a gang's manifest must have 2 ranks or more, not {ranks}")
        files = tuple(FileEntry(**entry) for entry in body["files"])
        manifest = cls(
            id=str(body["id"]),
            attempt=int(body["attempt"]),
            sequence=int(body["sequence"]),
            kind=str(body["kind"]),
            files=files,
            time=str(body["time"]),
            step=None if body.get("step") is None else int(body["step"]),
            metadata=dict(body.get("metadata") or {}),
            writer=dict(body.get("writer") or {}),
            ranks=ranks,
        )
        if any(not 0 <= f.rank < ranks for f in files):
            raise ValueError(f"manifest {manifest.id} has a file of a rank outside 0..{ranks - 1}")
        if parse_id(manifest.id) != (manifest.attempt, manifest.sequence):
            raise ValueError(f"manifest id {manifest.id!r} does not match its attempt and sequence")
        if body.get("digest") != manifest.digest:
            raise ValueError("manifest digest does not match its file list")
        for entry in files:
            if entry.path.startswith("/") or ".." in entry.path.split("/"):
                raise ValueError(f"manifest path {entry.path!r} escapes the checkpoint directory")
            if (entry.inline is not None) != (body["format"] == FORMAT_INLINE and not entry.key):
                raise ValueError(f"manifest file {entry.path!r} must have either a key or its bytes inline")
        return manifest

    def info(self, uri: str) -> CheckpointInfo:
        return CheckpointInfo(
            id=self.id,
            attempt=self.attempt,
            sequence=self.sequence,
            step=self.step,
            time=datetime.datetime.fromisoformat(self.time),
            size=self.size,
            digest=self.digest,
            files=len(self.files),
            kind=self.kind,
            uri=uri,
            metadata=self.metadata,
            ranks=self.ranks,
        )
