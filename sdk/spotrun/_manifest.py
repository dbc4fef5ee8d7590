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
FORMAT_LINKS = 4  # any of the above that also holds symbolic links (older readers skip it)
FORMATS = (FORMAT, FORMAT_GANG, FORMAT_INLINE, FORMAT_LINKS)
INLINE_MAX = 64 << 10  # a checkpoint of at most this many bytes is committed inside its manifest
MANIFEST_MAX = 64 << 20  # a manifest larger than this is not read (about 300,000 files)
FILE_MAX = 1 << 50  # no object of a checkpoint is larger (S3's limit is 5 TiB)
KINDS = ("bytes", "file", "stream", "directory")
MODE_MASK = 0o777  # restored modes: no setuid, setgid or sticky bit (as tarfile's "data" filter)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
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
    link: str | None = None  # a symbolic link's target (relative, inside the checkpoint); key "", size 0


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
        links = any(f.link is not None for f in self.files)
        if inline and self.ranks > 1:
            raise ValueError("a gang's checkpoint keeps no file in its manifest")
        files = [
            {k: v for k, v in dataclasses.asdict(f).items() if not (k == "rank" and self.ranks == 1) and v is not None}
            for f in self.files
        ]
        # The oldest format that holds what this one needs, so that older readers keep reading it.
        fmt = FORMAT_LINKS if links else FORMAT_GANG if self.ranks > 1 else FORMAT_INLINE if inline else FORMAT
        body = {
            "format": fmt,
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
        """Parses and checks a manifest against its schema; ValueError, saying what is wrong, when
        it is not one this SDK can trust. Anyone who can write to the prefix can write a manifest:
        see the threat model in docs/checkpoints.md. Past this check every path is normalised,
        relative and unique within its rank, no file sits where another entry needs a directory,
        every key is under data/, and a link's target stays inside the checkpoint."""
        if len(data) > MANIFEST_MAX:
            raise ValueError(f"the manifest is {len(data)} bytes, above the {MANIFEST_MAX} this SDK reads")
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"the manifest is not JSON: {err}") from None
        return _schema_checked(cls, body)

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


def _schema_checked(cls: type[Manifest], body: Any) -> Manifest:
    if not isinstance(body, dict):
        raise ValueError(f"a manifest is a JSON object, not {type(body).__name__}")
    fmt = body.get("format")
    if isinstance(fmt, bool) or fmt not in FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}")
    ranks = _int(body.get("ranks", 1), "ranks", 1, 1 << 16)
    if fmt == FORMAT_GANG and ranks < 2:
        raise ValueError(f"a gang's manifest must have 2 ranks or more, not {ranks}")
    if fmt in (FORMAT, FORMAT_INLINE) and ranks != 1:
        raise ValueError(f"a manifest of format {fmt} has one rank, not {ranks}")
    raw_files = body.get("files")
    if not isinstance(raw_files, list):
        raise ValueError("the manifest's files must be a list")
    files = tuple(_file_entry(entry, fmt, ranks) for entry in raw_files)
    step = body.get("step")
    metadata, writer = body.get("metadata") or {}, body.get("writer") or {}
    if not isinstance(metadata, dict) or not isinstance(writer, dict):
        raise ValueError("the manifest's metadata and writer must be JSON objects")
    kind, time = body.get("kind"), body.get("time")
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    if not isinstance(time, str):
        raise ValueError("the manifest's time must be a string")
    try:
        datetime.datetime.fromisoformat(time)
    except ValueError:
        raise ValueError(f"the manifest's time {time[:40]!r} is not an ISO 8601 time") from None
    manifest = cls(
        id=_str(body.get("id"), "id"),
        attempt=_int(body.get("attempt"), "attempt", 1, 999_999),
        sequence=_int(body.get("sequence"), "sequence", 1, 999_999),  # six digits: key order is id order
        kind=kind,
        files=files,
        time=time,
        step=None if step is None else _int(step, "step", -(1 << 63), 1 << 63),
        metadata=metadata,
        writer=writer,
        ranks=ranks,
    )
    if parse_id(manifest.id) != (manifest.attempt, manifest.sequence):
        raise ValueError(f"manifest id {manifest.id[:40]!r} does not match its attempt and sequence")
    if body.get("digest") != manifest.digest:
        raise ValueError("manifest digest does not match its file list")
    for rank in range(ranks):
        _check_tree(manifest.part(rank), _directories(metadata, rank, ranks))
    return manifest


_ENTRY_FIELDS = {f.name for f in dataclasses.fields(FileEntry)}


def _file_entry(entry: Any, fmt: int, ranks: int) -> FileEntry:
    if not isinstance(entry, dict):
        raise ValueError(f"a manifest's file is a JSON object, not {type(entry).__name__}")
    unknown = set(entry) - _ENTRY_FIELDS
    if unknown:
        raise ValueError(f"a manifest's file has unknown fields {sorted(unknown)[:5]}")
    path = checked_path(entry.get("path"), "a file's path")
    key, sha = _str(entry.get("key"), f"the key of {path!r}"), entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ValueError(f"the sha256 of {path!r} is not 64 lowercase hex digits")
    parsed = FileEntry(
        path=path,
        key=key,
        size=_int(entry.get("size"), f"the size of {path!r}", 0, FILE_MAX),
        sha256=sha,
        mode=_int(entry.get("mode", 0o644), f"the mode of {path!r}", 0, 0o7777),
        rank=_int(entry.get("rank", 0), f"the rank of {path!r}", 0, ranks - 1),
        inline=_str(entry["inline"], f"the bytes of {path!r}") if entry.get("inline") is not None else None,
        link=_str(entry["link"], f"the link {path!r}") if entry.get("link") is not None else None,
    )
    if parsed.link is not None:
        if fmt != FORMAT_LINKS or parsed.key or parsed.inline is not None or parsed.size:
            raise ValueError(f"link {path!r} must have no key, no bytes and size 0, in a manifest of format 4")
        check_link(path, parsed.link)
    elif parsed.inline is not None:
        if fmt not in (FORMAT_INLINE, FORMAT_LINKS) or ranks > 1 or parsed.key:
            raise ValueError(f"file {path!r} must have either a key or its bytes inline")
    else:
        checked_path(key, f"the key of {path!r}")
        if not key.startswith(DATA):
            raise ValueError(f"the key of {path!r} is not under {DATA}: {key[:80]!r}")
    return parsed


def checked_path(value: Any, what: str) -> str:
    """`value` if it is a normalised relative path (`a/b`): no empty, `.` or `..` part, no leading
    `/`, no NUL or backslash; else ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > 4096 or "\0" in value or "\\" in value or value.startswith("/"):
        raise ValueError(f"{what} {value[:80]!r} is not a relative path inside the checkpoint")
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError(f"{what} {value[:80]!r} is not a normalised path inside the checkpoint")
    return value


def check_link(path: str, target: str) -> None:
    """A link's target may only climb (`..`) at its start, and no higher than the link's own
    directory's depth: followed from inside the restored tree, every link then lands inside it,
    whatever the other links are (each one does, by the same rule)."""
    if not target or len(target) > 4096 or "\0" in target or target.startswith("/"):
        raise ValueError(f"link {path!r} points at {target[:80]!r}: only relative targets inside the checkpoint")
    parts = target.split("/")
    ups = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
    rest = parts[ups:]
    if ups > path.count("/") or any(part in ("", ".", "..") for part in rest):
        raise ValueError(f"link {path!r} points at {target[:80]!r}, outside the checkpoint or not normalised")


def _directories(metadata: dict[str, Any], rank: int, ranks: int) -> list[str]:
    if ranks == 1:
        raw = metadata.get("directories", [])
    else:
        by_rank = metadata.get("rankDirectories") or {}
        if not isinstance(by_rank, dict):
            raise ValueError("the manifest's rankDirectories must be an object")
        raw = by_rank.get(str(rank), [])
    if not isinstance(raw, list):
        raise ValueError("the manifest's directories must be a list")
    return [checked_path(d, "a directory") for d in raw]


def _check_tree(files: tuple[FileEntry, ...], directories: list[str]) -> None:
    """No two entries at one path, and nothing beneath a file or a link (both would need a directory there)."""
    leaves: set[str] = set()
    for entry in files:
        if entry.path in leaves:
            raise ValueError(f"the manifest lists {entry.path!r} twice")
        leaves.add(entry.path)
    for path in [f.path for f in files] + directories:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in leaves:
                raise ValueError(f"the manifest puts {path!r} beneath {parent!r}, which is a file or a link")
    clash = leaves.intersection(directories)
    if clash:
        raise ValueError(f"the manifest has {sorted(clash)[0]!r} as both a file and a directory")


def _int(value: Any, what: str, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ValueError(f"{what} must be an integer from {least} to {most}, not {str(value)[:40]!r}")
    return int(value)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    return value
