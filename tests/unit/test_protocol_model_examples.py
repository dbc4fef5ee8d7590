"""Explicit examples of the protocol harness (tests/protocol_model.py): the defects it was built against.

Each is the shrunk program hypothesis printed for a defect of issue 24, as steps of the machine, so
that it runs every time whatever the seed; the machines' own runs are in test_protocol_model.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from spotrun._storage import LocalStorage, Storage

from tests.faults import NO_FAULTS, Fault, Injection, Plan
from tests.gang_model import GangMachine
from tests.harness import Config, machine_for, replay
from tests.hostile import BAD_PATHS, ESCAPES, GARBAGE_KEYS, KINDS, NOT_DICTS, SETUID_MODES, WRONG_TYPES, HostileAct
from tests.protocol_model import ProtocolMachine

Steps = list[tuple[str, dict[str, Any]]]


def local(scratch: Path) -> Storage:
    return LocalStorage(scratch / "store")


PROTOCOL = machine_for(ProtocolMachine, local, Config())
GANG = machine_for(GangMachine, local, Config())


def write(blob: bytes, plan: Plan = NO_FAULTS) -> tuple[str, dict[str, Any]]:
    """The current attempt's task writes `blob`."""
    return ("task_commits", {"kind": "write", "blob": blob, "edits": {}, "plan": plan})


def restore(into: int | str = 0, plan: Plan = NO_FAULTS) -> tuple[str, dict[str, Any]]:
    """A new process restores into workdir `into` (the user's train.py and data/x are there)."""
    return ("restore", {"into": into, "plan": plan, "if_corrupt": "start-over"})


def next_attempt(restore_into: int | None = 0) -> tuple[str, dict[str, Any]]:
    return ("start_attempt", {"restore_into": restore_into, "plan": NO_FAULTS, "zombies": False})


SETUP: Steps = [("setup", {"keep": 2})]


def test_restore_keeps_the_users_own_files() -> None:
    """Defect 1: the second restore into a directory removed everything but the checkpoint's files."""
    replay(PROTOCOL, [*SETUP, write(b"1"), restore(), write(b"2"), restore()], invariant="protocol_holds")


@pytest.mark.parametrize("how", ["same-size", "longer", "shorter", "delete"])
def test_a_rewritten_restored_file_is_restored_again(how: str) -> None:
    """Defect 2: the next attempt's restore took the directory's record for the truth and kept the
    file the task had rewritten in place before it died."""
    rewrite = ("task_rewrites", {"which": 0, "pick": 0, "how": how})
    replay(PROTOCOL, [*SETUP, write(b"weights"), next_attempt(), rewrite, next_attempt()], invariant="protocol_holds")


@pytest.mark.parametrize("with_step", [True, False])
def test_a_gang_saves_again_after_a_rank_failed_to_upload(with_step: bool) -> None:
    """Defect 3: rank 1's data upload failed once; it gave its id back, fell one id behind rank 0,
    and every later collective save waited out the gang timeout (with no step: rank 0 committed rank
    1's stale part of the failed save, a torn gang checkpoint)."""
    steps: Steps = [
        *SETUP,
        (
            "save",
            {
                "blobs": (b"rank 0 at 1", b"rank 1 at 1"),
                "with_step": with_step,
                "fault": (1, Injection(1, Fault.TRANSIENT)),  # rank 1's data put, after listing the ids
            },
        ),
        ("save", {"blobs": (b"rank 0 at 2", b"rank 1 at 2"), "with_step": with_step, "fault": None}),
        ("restart", {"plans": (NO_FAULTS, NO_FAULTS)}),
    ]
    replay(GANG, steps, invariant="retention_keeps_the_newest")


def test_a_gang_saves_again_after_rank_0_failed_before_taking_an_id() -> None:
    """Found by the harness: rank 0's first save failed listing the ids (before it took one), rank 1's
    took id 1; at the next save rank 0 took id 1 again and committed it with rank 1's part of the
    failed save (no step tells them apart): a torn gang checkpoint, and rank 1 waited for id 2."""
    steps: Steps = [
        *SETUP,
        (
            "save",
            {
                "blobs": (b"rank 0 at 1", b"rank 1 at 1"),
                "with_step": False,
                "fault": (0, Injection(0, Fault.TRANSIENT)),  # rank 0's listing of the ids
            },
        ),
        ("save", {"blobs": (b"rank 0 at 2", b"rank 1 at 2"), "with_step": False, "fault": None}),
    ]
    replay(GANG, steps, invariant="retention_keeps_the_newest")


def _forms(kind: str) -> int:
    return {
        "escape": len(ESCAPES),
        "bad-path": len(BAD_PATHS),
        "not-a-dict": len(NOT_DICTS),
        "wrong-type": len(WRONG_TYPES),
        "huge-size": 3,
        "key-outside-data": 4,
        "setuid": len(SETUID_MODES),
        "garbage": len(GARBAGE_KEYS),
        "tamper-data": 2,
        "tamper-manifest": 2,
    }.get(kind, 1)


HOSTILE = [(kind, variant) for kind in KINDS for variant in range(_forms(kind))]


@pytest.mark.parametrize("reader", ["restore", "read"])
@pytest.mark.parametrize(("kind", "variant"), HOSTILE)
def test_a_hostile_manifest_falls_back_to_the_one_before(kind: str, variant: int, reader: str) -> None:
    """Defect 4: a manifest with `..` or absolute paths, setuid modes, duplicate paths, a file and a
    directory at one path, wrong types or keys outside data/ was restored, or raised a raw Python
    error, instead of being skipped for the intact checkpoint before it."""
    act = HostileAct(kind, variant, None, b"evil")
    check = restore() if reader == "restore" else ("probe", {"call": "read", "plan": NO_FAULTS})
    steps: Steps = [*SETUP, write(b"good, and large enough to be an object"), ("hostile_write", {"act": act}), check]
    replay(PROTOCOL, steps, invariant="protocol_holds")


def test_two_writers_of_one_attempt_commit_in_order() -> None:
    """Defect 5: the sidecar's commits (and its retention) freed the ids the task's per-object counter
    held next; the task's newer checkpoint took one and ranked below the sidecar's older ones."""
    sidecar_writes = ("commit", {"pick": 1, "kind": "write", "blob": b"sidecar", "edits": {}, "plan": NO_FAULTS})
    steps: Steps = [
        *SETUP,
        write(b"task 1"),
        ("start_sidecar", {"restore_into": None, "plan": NO_FAULTS}),
        sidecar_writes,
        sidecar_writes,
        sidecar_writes,
        write(b"task 2"),
    ]
    replay(PROTOCOL, steps, invariant="protocol_holds")


def test_a_sidecars_sweep_leaves_the_tasks_upload_in_flight() -> None:
    """Defect 5, its second half: a new sidecar's first commit swept data/ and deleted the task's
    upload in flight (an older id of the same attempt, referenced by no manifest yet); the task's
    manifest then named deleted data."""
    held = Plan((Injection(2, Fault.SLOW),))  # the task's commit, its data uploaded, before its manifest
    model = {"model.bin": b"large enough to be an object, not inline"}
    sidecar = ("start_sidecar", {"restore_into": None, "plan": NO_FAULTS})
    steps: Steps = [
        *SETUP,
        sidecar,
        ("task_commits", {"kind": "dir", "blob": b"", "edits": model, "plan": held}),
        ("commit", {"pick": 0, "kind": "write", "blob": b"sidecar 1", "edits": {}, "plan": NO_FAULTS}),
        sidecar,
        ("commit", {"pick": 1, "kind": "write", "blob": b"sidecar 2", "edits": {}, "plan": NO_FAULTS}),
        ("release", {"pick": 0, "kill": False}),
    ]
    replay(PROTOCOL, steps, invariant="protocol_holds")


def test_a_sweep_leaves_a_zombies_commit_whole() -> None:
    """Found by the harness: attempt 2's first commit swept data/ after listing the manifests; a
    zombie of attempt 1 committed in between, and the sweep deleted its data under its manifest
    (the zombie's checkpoint ranks among the newest `keep`, and is corrupt)."""
    held = Plan((Injection(3, Fault.SLOW),))  # attempt 2's commit, between its listing and list_dirs(data/)
    steps: Steps = [
        *SETUP,
        ("start_attempt", {"restore_into": None, "plan": NO_FAULTS, "zombies": True}),
        ("task_commits", {"kind": "dir", "blob": b"", "edits": {}, "plan": held}),
        ("commit", {"pick": 0, "kind": "stream", "blob": b"the zombie's", "edits": {}, "plan": NO_FAULTS}),
        ("release", {"pick": 0, "kill": False}),
    ]
    replay(PROTOCOL, steps, invariant="protocol_holds")


def test_an_incremental_sync_sees_a_same_size_rewrite_within_one_tick() -> None:
    """Found by the harness: `sync_directory` took a file whose size and mtime had not changed for
    unchanged, and committed its previous object (a rewrite within one tick of a coarse clock)."""
    coarse = machine_for(ProtocolMachine, local, Config(coarse_mtimes=True))

    def sync(data: bytes) -> tuple[str, dict[str, Any]]:
        return ("task_commits", {"kind": "sync", "blob": b"", "edits": {"model.bin": data}, "plan": NO_FAULTS})

    replay(coarse, [*SETUP, sync(b"a" * 30), sync(b"b" * 30), restore("fresh")], invariant="protocol_holds")
