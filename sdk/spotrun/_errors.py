"""Spotrun's exception tree: every error the SDK raises derives from SpotrunError.

SpotrunError
├── ConfigError                 the environment or arguments cannot work (names what to set)
├── RecoverableError            raised by a task: a failure worth retrying (exit code 75 in a pod)
├── CheckpointError             a checkpoint cannot be written or read
│   ├── CorruptCheckpointError  a committed checkpoint failed verification (missing, size, digest)
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


class CheckpointError(SpotrunError):
    """A checkpoint cannot be written or read."""


class CorruptCheckpointError(CheckpointError):
    """A committed checkpoint failed verification; restore falls back to the one before it."""


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
