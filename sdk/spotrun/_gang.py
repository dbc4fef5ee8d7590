"""A gang's checkpoints: one commit for all ranks or for none, and one agreed checkpoint to restore.

The ranks of a gang (a TaskRun with `replicas: N`) commit together, as they call a collective:

1. Every rank uploads its data (under its own nonce) and creates its part, `parts/ID/RANK.json`
   (create-only): the manifest of its own files.
2. Rank 0 waits until all N parts are there, checks that they are parts of one checkpoint (same
   step), and creates `manifests/ID.json` (create-only) listing every rank's files. The checkpoint
   exists from this moment, for every rank at once; a reader never sees a checkpoint with a
   missing part, because there is no manifest until every part is in.
3. The other ranks wait for that manifest, so that `save()` returning means committed on every rank.

Parts of different steps are refused: rank 0 writes `parts/ID/refused.json` and every rank's
`save()` raises; nothing becomes visible. A rank whose upload fails writes the same refusal, so that
no rank waits out its timeout. Every collective call takes one id on every rank, committed or not:
the ranks' ids never drift apart. Fencing is the single writer's: ids begin with the
attempt, so a zombie rank of an older attempt adds only parts of older ids.

Restore: ranks that list at different moments may see different newest checkpoints (a zombie of an
older attempt may commit meanwhile). So while its own attempt has committed nothing, the gang
restores what rank 0 chose: rank 0 writes `restores/ATTEMPT.json` (create-only: a restarted rank 0
keeps the first choice) and the others read it. docs/checkpoints.md describes the protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence

from spotrun import _preemption
from spotrun._errors import CheckpointError, CommitConflictError, ConfigError, StorageError
from spotrun._manifest import PARTS, Manifest, manifest_key, part_key
from spotrun._storage import AlreadyExistsError, NotFoundError, Storage

AGREEMENTS = "restores/"
REFUSED = "refused.json"
POLL_SECONDS = (0.05, 1.0)  # first wait and cap, growing by half each time


@dataclasses.dataclass(frozen=True)
class Gang:
    """This process's place in a gang: its rank, how many ranks, and how long it waits for the others."""

    rank: int
    ranks: int
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.ranks < 2:
            raise ConfigError(f"a gang has 2 ranks or more, not {self.ranks}")
        if not 0 <= self.rank < self.ranks:
            raise ConfigError(f"rank {self.rank} is outside the gang's ranks 0..{self.ranks - 1}")
        if self.timeout <= 0:
            raise ConfigError(f"the gang's timeout must be above 0 seconds, not {self.timeout}")


def agreement_key(attempt: int) -> str:
    return f"{AGREEMENTS}{attempt:06d}.json"


def _waits(timeout: float) -> Callable[[], bool]:
    """A poll loop's pacing: sleeps a growing interval; False once `timeout` has passed, or the
    pod's grace period has (after SIGTERM or a notice)."""
    deadline = time.monotonic() + timeout
    grace = _preemption.deadline()
    if grace is not None:
        deadline = min(deadline, grace)
    interval = POLL_SECONDS[0]

    def again() -> bool:
        nonlocal interval
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))
        interval = min(POLL_SECONDS[1], interval * 1.5)
        return True

    return again


def commit(storage: Storage, gang: Gang, part: Manifest) -> Manifest:
    """Commits this rank's `part` (a manifest of its own files, every file of its rank) collectively;
    returns the gang's manifest once it is committed. Raises CheckpointError when the gang cannot
    commit: parts of different steps, a duplicate writer, or the others not there in time."""
    cid = part.id
    if not _create(storage, part_key(cid, gang.rank), part.to_json()):
        raise CheckpointError(
            f"rank {gang.rank}'s part of checkpoint {cid} in {storage.uri} was already written: two processes run "
            "as this rank of this attempt, or the ranks did not call save() the same number of times"
        )
    if gang.rank == 0:
        return _commit_as_leader(storage, gang, part)
    return _wait_for_commit(storage, gang, cid)


def _commit_as_leader(storage: Storage, gang: Gang, own: Manifest) -> Manifest:
    cid = own.id
    again = _waits(gang.timeout)
    while True:
        found = {key for key, _ in storage.list(f"{PARTS}{cid}/")}
        if f"{PARTS}{cid}/{REFUSED}" in found:
            raise CheckpointError(f"checkpoint {cid} in {storage.uri} was not committed: {_refusal(storage, cid)}")
        missing = [r for r in range(gang.ranks) if part_key(cid, r) not in found]
        if not missing:
            break
        if not again():
            raise CheckpointError(
                f"checkpoint {cid} in {storage.uri} was not committed: ranks {_ranges(missing)} wrote no part "
                f"within {gang.timeout:.0f}s (every rank must call save() for each checkpoint)"
            )
    parts, reason = _gather(storage, gang, own)
    if reason:
        # Said where the other ranks look while they wait, so that none waits out its timeout.
        storage.put(f"{PARTS}{cid}/{REFUSED}", json.dumps({"reason": reason}).encode())
        raise CheckpointError(f"checkpoint {cid} in {storage.uri} was not committed: {reason}")
    # Each rank's empty directories, by rank (parts[r] is rank r's).
    directories = {str(r): p.metadata["directories"] for r, p in enumerate(parts) if p.metadata.get("directories")}
    metadata = {k: v for k, v in own.metadata.items() if k != "directories"}
    if directories:
        metadata["rankDirectories"] = directories
    manifest = dataclasses.replace(
        own,
        files=tuple(sorted((f for p in parts for f in p.files), key=lambda f: (f.rank, f.path))),
        metadata=metadata,
    )
    if not _create(storage, manifest_key(cid), manifest.to_json()):
        raise CommitConflictError(
            f"checkpoint {cid} in {storage.uri} was committed by another process: two processes run as rank 0"
        )
    return manifest


def _create(storage: Storage, key: str, body: bytes) -> bool:
    """Creates `key` (create-only); True also when it holds `body` already: a PUT that succeeded but
    whose answer was lost is retried by botocore, and the retry finds its own object."""
    try:
        storage.put(key, body, create_only=True)
    except AlreadyExistsError:
        try:
            return storage.get(key) == body
        except NotFoundError:
            return False
    return True


def _gather(storage: Storage, gang: Gang, own: Manifest) -> tuple[list[Manifest], str]:
    """Every rank's part (parts[r] is rank r's), or why they are not one checkpoint."""
    cid, parts = own.id, [own]
    for rank in range(1, gang.ranks):
        try:
            part = Manifest.from_json(storage.get(part_key(cid, rank)))
        except (NotFoundError, ValueError, KeyError, TypeError) as err:
            return parts, f"rank {rank}'s part is unreadable ({err})"
        if part.id != cid or part.ranks != gang.ranks or any(f.rank != rank for f in part.files):
            return parts, (
                f"rank {rank}'s part does not belong to it (id {part.id}, {part.ranks} ranks): "
                "the gang's ranks disagree on their number"
            )
        parts.append(part)
    steps = sorted({p.step for p in parts}, key=lambda s: -1 if s is None else s)
    if len(steps) > 1:
        return parts, (
            f"the ranks saved different steps ({', '.join(str(s) for s in steps)}) as checkpoint {cid}: "
            "every rank must call save() for the same step, in the same order"
        )
    return parts, ""


def _wait_for_commit(storage: Storage, gang: Gang, cid: str) -> Manifest:
    again = _waits(gang.timeout)
    while True:
        try:
            manifest = Manifest.from_json(storage.get(manifest_key(cid)))
        except NotFoundError:
            pass
        else:
            return manifest
        try:
            storage.get(f"{PARTS}{cid}/{REFUSED}")
        except NotFoundError:
            pass
        else:
            raise CheckpointError(f"checkpoint {cid} in {storage.uri} was not committed: {_refusal(storage, cid)}")
        if not again():
            raise CheckpointError(
                f"checkpoint {cid} in {storage.uri} was not committed: rank 0 did not commit it within "
                f"{gang.timeout:.0f}s of this rank's part (is every rank calling save()?)"
            )


def refuse(storage: Storage, cid: str, reason: str) -> None:
    """Tells the gang that checkpoint `cid` will not be committed, and why; best effort (the others
    then wait out their timeout, as they would for a rank that died)."""
    with contextlib.suppress(StorageError):
        _create(storage, f"{PARTS}{cid}/{REFUSED}", json.dumps({"reason": reason[:2000]}).encode())


def _refusal(storage: Storage, cid: str) -> str:
    try:
        body = json.loads(storage.get(f"{PARTS}{cid}/{REFUSED}"))
        return str(body.get("reason")) if isinstance(body, dict) else "refused"
    except (StorageError, ValueError):
        return "refused"


def agree(
    storage: Storage, gang: Gang, attempt: int, choose: Callable[[], tuple[str, str] | None]
) -> tuple[str, str] | None:
    """The (uri, id) that every rank of `attempt` restores, or None: rank 0's `choose()`, recorded once."""
    key = agreement_key(attempt)
    if gang.rank == 0:
        choice = choose()
        body = json.dumps({"uri": choice[0], "id": choice[1]} if choice else {"uri": None, "id": None}).encode()
        try:
            storage.put(key, body, create_only=True)
            return choice
        except AlreadyExistsError:
            pass  # a restarted rank 0: the gang already restores what it chose first
    again = _waits(gang.timeout)
    while True:
        try:
            chosen = json.loads(storage.get(key))
        except NotFoundError:
            if not again():
                raise CheckpointError(
                    f"rank 0 did not say within {gang.timeout:.0f}s which checkpoint of {storage.uri} the gang "
                    "restores; is rank 0 running?"
                ) from None
            continue
        return (str(chosen["uri"]), str(chosen["id"])) if chosen.get("id") else None


def _ranges(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:8])
    return shown + (f" and {len(numbers) - 8} more" if len(numbers) > 8 else "")
