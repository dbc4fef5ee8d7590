"""Spotrun's in-pod SDK: checkpoints that survive preemption, and tasks that resume from them.

    import spotrun

    @spotrun.task(retries=3)
    def train(epochs: int) -> float:
        cp = spotrun.current_context().checkpoint
        state = cp.read()                       # newest intact checkpoint of any earlier attempt
        ...
        cp.write(new_state, step=epoch)         # atomic: a reader sees all of it or none
        if spotrun.preempted():                 # a notice or SIGTERM: reclaim, eviction, drain
            ...

The exception tree is drawn in `spotrun._errors`; every error derives from `SpotrunError`.
"""

from spotrun._checkpoint import Checkpoint
from spotrun._context import Context, Settings, current_context
from spotrun._errors import (
    CheckpointError,
    CheckpointInputError,
    CheckpointUsageError,
    CommitConflictError,
    ConfigError,
    CorruptCheckpointError,
    NoIntactCheckpointError,
    PermanentStorageError,
    RecoverableError,
    SpotrunError,
    StorageError,
    TaskTimeoutError,
    TransientStorageError,
)
from spotrun._manifest import CheckpointInfo
from spotrun._preemption import Notice, notice, on_preemption, preempted, seconds_left
from spotrun._storage import LocalStorage, S3Storage, Storage, open_storage
from spotrun._task import task, workflow
from spotrun._task_options import IgnoredTaskOptionWarning

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointInputError",
    "CheckpointUsageError",
    "CommitConflictError",
    "ConfigError",
    "Context",
    "CorruptCheckpointError",
    "IgnoredTaskOptionWarning",
    "LocalStorage",
    "NoIntactCheckpointError",
    "Notice",
    "PermanentStorageError",
    "RecoverableError",
    "S3Storage",
    "Settings",
    "SpotrunError",
    "Storage",
    "StorageError",
    "TaskTimeoutError",
    "TransientStorageError",
    "__version__",
    "current_context",
    "notice",
    "on_preemption",
    "open_storage",
    "preempted",
    "seconds_left",
    "task",
    "workflow",
]
