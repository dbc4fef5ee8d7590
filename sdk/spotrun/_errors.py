"""Spotrun's exception tree: every error the SDK raises derives from SpotrunError.

SpotrunError
├── ConfigError                 the environment or arguments cannot work (names what to set)
├── RecoverableError            raised by a task: a failure worth retrying (exit code 75 in a pod)
├── TaskTimeoutError            a task ran past its `timeout` (also a TimeoutError)
├── CheckpointError             a checkpoint cannot be written or read
│   ├── CheckpointUsageError    a call that cannot work, also a ValueError (as Flyte raises)
│   │   └── CheckpointInputError  an argument of the wrong type, also a TypeError
│   ├── CorruptCheckpointError  a committed checkpoint failed verification (missing, size, digest)
│   │   └── NoIntactCheckpointError  every committed checkpoint did (with if_corrupt="raise")
│   └── CommitConflictError     another writer committed the same checkpoint id first
└── StorageError                the checkpoint store failed
    ├── PermanentStorageError   retrying cannot help: no such bucket, access denied, bad credentials
    └── TransientStorageError   the store kept failing after every retry (5xx, throttling, resets)
"""

from __future__ import annotations

RECOVERABLE_EXIT_CODE = 75  # EX_TEMPFAIL from sysexits.h: "try again later"


class SpotrunError(Exception):
    """The root of every exception the SDK raises."""


class ConfigError(SpotrunError):
    """The configuration cannot work; the message says which setting to fix."""


class RecoverableError(SpotrunError):
    """Raise from a task for a failure worth retrying; inside a pod the process exits with code 75."""

    exit_code = RECOVERABLE_EXIT_CODE


class TaskTimeoutError(SpotrunError, TimeoutError):
    """Raised inside a task that ran longer than `@spotrun.task(timeout=...)`; the attempt fails
    and is retried as any failure is. `seconds` is the limit."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class CheckpointError(SpotrunError):
    """A checkpoint cannot be written or read."""


class CheckpointUsageError(CheckpointError, ValueError):
    """A checkpoint method was called in a way that cannot work: `read()` of a checkpoint of several
    files, `restore()` into a path that is not a directory, `save()` of a path that does not exist.
    It is a ValueError, as flytekit's errors for the same calls are. Nothing was written."""


class CheckpointInputError(CheckpointUsageError, TypeError):
    """`save()` or `write()` got an object of a type it cannot commit; refused before storage is touched."""


class CorruptCheckpointError(CheckpointError):
    """A committed checkpoint failed verification; restore falls back to the one before it."""


class NoIntactCheckpointError(CorruptCheckpointError):
    """Checkpoints exist, and every one failed verification. Raised by `restore()` and `read()` with
    `if_corrupt="raise"` (SPOTRUN_CHECKPOINT_IF_CORRUPT=raise) instead of returning None. `ids` names them."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class CommitConflictError(CheckpointError):
    """Another writer committed a checkpoint under the same id first; the commit picks the next id."""


class StorageError(SpotrunError):
    """The checkpoint store failed. `bucket` and `key` say where, when known."""

    def __init__(self, message: str, *, bucket: str = "", key: str = "") -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key


class PermanentStorageError(StorageError):
    """Retrying cannot help: the message says what to fix (bucket name, credentials, permissions)."""


class TransientStorageError(StorageError):
    """The store kept failing after every retry; a later attempt may succeed."""
