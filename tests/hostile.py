"""What a hostile or broken writer leaves in a checkpoint prefix: malformed manifests, garbage, tampering.

Each `HostileAct` writes straight to the storage (no fault injection), journaled as the process
`HOSTILE`, so that the model knows which objects are no checkpoint's. A manifest it makes is well
formed but for the one thing its kind breaks (its digest and id match, its objects exist with the
sizes and digests it states), so that the SDK's checks meet that one thing and not an earlier one.
A restore must treat every such manifest as a corrupt checkpoint: skip it for the one before.

The kinds (`KINDS`):
    escape            a file path that leaves the target: `../x`, `a/../../x`, an absolute path
    bad-path          a file path that names no file: "", ".", one with a NUL byte
    duplicate         two entries of one path, with different bytes
    file-and-dir      `a` and `a/b` in one checkpoint
    not-a-dict        JSON that is no object, or not JSON at all
    wrong-type        one field of the wrong type (a path that is an int, a size that is a string...)
    huge-size         a size far beyond the object's
    key-outside-data  an object outside `data/`: another checkpoint's manifest, `../x`, `/etc/...`
    garbage           bytes under keys no SDK writes, or a garbled manifest at a valid id
    setuid            a committed checkpoint's manifest rewritten with modes 0o4755 and kin; its
                      digest covers no mode, so it stays valid: a restore may use it, masking the mode
    tamper-data       an object of a committed checkpoint overwritten: that checkpoint is corrupt
    tamper-manifest   a committed checkpoint's manifest garbled: that checkpoint is corrupt
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from spotrun._manifest import manifest_key, parse_id
from spotrun._storage import AlreadyExistsError, NotFoundError, Storage

from tests.faults import Effect, Journal

HOSTILE = "hostile"

KINDS = (
    "escape",
    "bad-path",
    "duplicate",
    "file-and-dir",
    "not-a-dict",
    "wrong-type",
    "huge-size",
    "key-outside-data",
    "garbage",
    "setuid",
    "tamper-data",
    "tamper-manifest",
)
ESCAPES = ("../escape-1", "../../escape-2", "../../../escape-3", "a/../../escape-4", "ABSOLUTE")
BAD_PATHS = ("", ".", "a/\x00b")
NOT_DICTS = (b"[]", b'"manifest"', b"42", b"null", b"[{}]", b"{}", b"\xff\xfe", b"", b'{"format": 1}')
# (where, field, value): "entry" changes the manifest's one file, "body" the manifest itself.
WRONG_TYPES: tuple[tuple[str, str, Any], ...] = (
    ("entry", "path", 5),
    ("entry", "path", ["a"]),
    ("entry", "size", "5"),
    ("entry", "size", None),
    ("entry", "mode", "0o644"),
    ("entry", "mode", None),
    ("entry", "mode", -1),
    ("entry", "sha256", None),
    ("entry", "key", 7),
    ("entry", "inline", 7),
    ("entry", "rank", "0"),
    ("entry", "extra", 1),
    ("body", "files", "x"),
    ("body", "files", [1]),
    ("body", "files", None),
    ("body", "metadata", [1]),
    ("body", "step", "x"),
    ("body", "attempt", "one"),
    ("body", "id", 7),
)
SETUID_MODES = (0o4755, 0o2755, 0o1777, 0o6777)
GARBAGE_KEYS = (
    "data/{id}.junk/x",
    "data/junk",
    "manifests/README",
    "manifests/{id}.json.tmp",
    "manifests/{id}.json",  # a garbled manifest at a valid id
    "parts/{id}/0.json",
    "unrelated",
)


@dataclasses.dataclass(frozen=True)
class HostileAct:
    """One hostile write. `at` is the (attempt, sequence) of a new manifest, None for just above the
    newest; `variant` picks the form of the kind (and the committed checkpoint it aims at)."""

    kind: str
    variant: int
    at: tuple[int, int] | None
    blob: bytes

    def __repr__(self) -> str:
        return f"HostileAct({self.kind!r}, variant={self.variant}, at={self.at}, blob={self.blob!r})"


def hostile_acts(max_attempt: int) -> st.SearchStrategy[HostileAct]:
    at = st.none() | st.tuples(st.integers(1, max_attempt), st.integers(1, 12))
    return st.builds(
        HostileAct,
        kind=st.sampled_from(KINDS),
        variant=st.integers(0, 30),
        at=at,
        blob=st.binary(min_size=1, max_size=12),
    )


@dataclasses.dataclass(frozen=True)
class Target:
    """A committed checkpoint a hostile act can aim at: its id and manifest as committed."""

    id: str
    manifest: bytes


class Hostile:
    """Performs hostile acts on `inner`, journaled. `sandbox` is where absolute escapes point, so
    that an SDK that follows one writes inside the test's sandbox, where the test sees it."""

    def __init__(self, inner: Storage, journal: Journal, sandbox: Path) -> None:
        self.inner = inner
        self.journal = journal
        self.sandbox = sandbox
        self._serial = 0
        self._uploaded: dict[str, bytes] = {}  # key -> bytes of the objects its manifests name
        self.made: dict[str, tuple[str, dict[str, bytes]]] = {}  # id -> (what, path -> bytes) of its manifests

    def act(self, act: HostileAct, targets: list[Target], newest: tuple[int, int]) -> tuple[str, Target | None]:
        """Does `act`; returns what it did and, for `setuid`, the committed checkpoint with its
        new manifest (the test's model takes it as that checkpoint's, still intact)."""
        self._serial += 1
        attempt, sequence = act.at or (newest[0], newest[1] + 1)
        cid = f"{attempt:06d}-{sequence:06d}"
        aimed = targets[act.variant % len(targets)] if targets else None
        if act.kind == "setuid":
            return self._setuid(act, aimed)
        if act.kind == "tamper-data":
            return self._tamper_data(act, aimed), None
        if act.kind == "tamper-manifest":
            return self._tamper_manifest(act, aimed), None
        if act.kind == "garbage":
            key = GARBAGE_KEYS[act.variant % len(GARBAGE_KEYS)].format(id=cid)
            self._put(key, act.blob)
            return f"garbage at {key}", None
        if act.kind == "not-a-dict":
            raw = NOT_DICTS[act.variant % len(NOT_DICTS)]
            return self._create_manifest(cid, raw, f"manifest {cid} holds {raw!r}"), None
        entries, what = self._entries(act, cid, aimed)
        if entries is None:
            return what, None
        body = _manifest_body(cid, attempt, sequence, entries)
        if act.kind == "wrong-type":
            where, field, value = WRONG_TYPES[act.variant % len(WRONG_TYPES)]
            if where == "entry":
                entries[0][field] = value
                body["digest"] = _digest(entries)
            else:
                body[field] = value
            what = f"{what}, with {where} {field}={value!r}"
        done = self._create_manifest(cid, json.dumps(body).encode(), f"manifest {cid}: {what}")
        if not done.startswith("nothing"):
            self.made[cid] = (what, self._files(entries))
        return done, None

    def _files(self, entries: list[dict[str, Any]]) -> dict[str, bytes]:
        """The files a restore that trusted these entries would write: path -> bytes."""
        files = {}
        for entry in entries:
            path, inline, key = entry.get("path"), entry.get("inline"), entry.get("key")
            if not isinstance(path, str):
                continue
            if isinstance(inline, str):
                files[path] = base64.b64decode(inline)
            elif isinstance(key, str) and key in self._uploaded:
                files[path] = self._uploaded[key]
        return files

    # ----- manifests of one malformation ------------------------------------------------------------

    def _entries(self, act: HostileAct, cid: str, aimed: Target | None) -> tuple[list[dict[str, Any]] | None, str]:
        blob = b"HOSTILE:" + act.blob
        kind = act.kind
        if kind == "escape":
            path = ESCAPES[act.variant % len(ESCAPES)]
            if path == "ABSOLUTE":
                path = str(self.sandbox / "abs-escape")
            return [_inline(path, blob)], f"a file at {path!r}"
        if kind == "bad-path":
            path = BAD_PATHS[act.variant % len(BAD_PATHS)]
            return [_inline(path, blob)], f"a file at {path!r}"
        if kind == "duplicate":
            return [_inline("twin", blob), _inline("twin", blob + b"-other")], "two files at 'twin'"
        if kind == "file-and-dir":
            return [_inline("both", blob), _inline("both/inner", blob)], "a file 'both' and a file 'both/inner'"
        if kind == "wrong-type":
            if act.variant % 2:
                return [self._object(cid, "model.bin", blob)], "an object entry"
            return [_inline("model.bin", blob)], "an inline entry"
        if kind == "huge-size":
            entry = self._object(cid, "model.bin", blob)
            entry["size"] = [2**62, 2**64 + 1, 10**30][act.variant % 3]
            return [entry], f"an object entry of size {entry['size']}"
        if kind == "key-outside-data":
            return self._outside_data(act, aimed)
        raise AssertionError(f"unknown hostile kind {kind}")

    def _outside_data(self, act: HostileAct, aimed: Target | None) -> tuple[list[dict[str, Any]] | None, str]:
        choice = act.variant % 4
        if choice == 0:
            if aimed is None:
                return None, "nothing (no committed checkpoint to point at)"
            key = manifest_key(aimed.id)
            try:
                data = self.inner.get(key)
            except NotFoundError:
                return None, f"nothing ({key} is gone)"
            self._uploaded[key] = data
        else:
            key = ("../outside", "/etc/hostname", "restores/000001.json")[choice - 1]
            data = b"HOSTILE:outside"
            if choice == 3:
                self._put(key, data)
        entry = {
            "path": "model.bin",
            "key": key,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "mode": 0o644,
        }
        return [entry], f"an object at {key!r}"

    def _object(self, cid: str, path: str, data: bytes) -> dict[str, Any]:
        key = f"data/{cid}.hostile{self._serial}/{path}"
        self._put(key, data)
        return {"path": path, "key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": 0o644}

    def _create_manifest(self, cid: str, body: bytes, what: str) -> str:
        key = manifest_key(cid)
        try:
            self.inner.put(key, body, create_only=True)
        except AlreadyExistsError:
            return f"nothing ({key} exists)"
        self.journal.add(Effect(HOSTILE, "put", (key,), body))
        return what

    # ----- committed checkpoints -----------------------------------------------------------------------

    def _setuid(self, act: HostileAct, aimed: Target | None) -> tuple[str, Target | None]:
        if aimed is None:
            return "nothing (no committed checkpoint)", None
        body = json.loads(aimed.manifest)
        if not body["files"]:
            return f"nothing ({aimed.id} has no file)", None
        mode = SETUID_MODES[act.variant % len(SETUID_MODES)]
        for entry in body["files"]:
            entry["mode"] = mode
        new = json.dumps(body, indent=1, sort_keys=True).encode()
        self._put(manifest_key(aimed.id), new)
        return f"manifest {aimed.id} with every mode {mode:#o}", Target(aimed.id, new)

    def _tamper_data(self, act: HostileAct, aimed: Target | None) -> str:
        if aimed is None:
            return "nothing (no committed checkpoint)"
        keys = [f["key"] for f in json.loads(aimed.manifest)["files"] if f.get("key")]
        if not keys:
            return f"nothing ({aimed.id} keeps its files in its manifest)"
        key = keys[act.variant % len(keys)]
        try:
            old = self.inner.get(key)
        except NotFoundError:
            return f"nothing ({key} is gone)"
        new = bytes(b ^ 0xFF for b in old) if act.variant % 2 and old else old + act.blob
        self._put(key, new)
        return f"{key} of {aimed.id} overwritten ({len(old)} -> {len(new)} bytes)"

    def _tamper_manifest(self, act: HostileAct, aimed: Target | None) -> str:
        if aimed is None:
            return "nothing (no committed checkpoint)"
        body = aimed.manifest
        garbled = body[: len(body) // 2] if act.variant % 2 else body.replace(b'"sha256": "', b'"sha256": "0', 1)
        if garbled == body:
            garbled = body + b"x"
        self._put(manifest_key(aimed.id), garbled)
        return f"manifest {aimed.id} garbled"

    def _put(self, key: str, data: bytes) -> None:
        self._uploaded[key] = data
        self.inner.put(key, data)
        self.journal.add(Effect(HOSTILE, "put", (key,), data))


def _inline(path: str, data: bytes, mode: int = 0o644) -> dict[str, Any]:
    return {
        "path": path,
        "key": "",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mode": mode,
        "inline": base64.b64encode(data).decode(),
    }


def _digest(entries: list[dict[str, Any]]) -> str:
    """As the SDK computes it: sha256 over the sorted (path, size, sha256) lines."""
    ordered = sorted(entries, key=lambda f: str(f.get("path")))
    lines = "".join(f"{f.get('path')}\0{f.get('size')}\0{f.get('sha256')}\n" for f in ordered)
    return hashlib.sha256(lines.encode()).hexdigest()


def _manifest_body(cid: str, attempt: int, sequence: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
    inline = any("inline" in e for e in entries)
    return {
        "format": 3 if inline else 1,
        "id": cid,
        "attempt": attempt,
        "sequence": sequence,
        "kind": "directory",
        "step": None,
        "time": "2026-01-01T00:00:00+00:00",
        "size": sum(e["size"] for e in entries),
        "digest": _digest(entries),
        "files": entries,
        "metadata": {},
        "writer": {"host": HOSTILE},
    }


def newest_of(ids: list[str], current_attempt: int) -> tuple[int, int]:
    """Where a manifest just above the newest goes: the newest id, or (attempt, 0) when there is none."""
    parsed = [p for p in (parse_id(i) for i in ids) if p]
    return max(parsed, default=(current_attempt, 0))
