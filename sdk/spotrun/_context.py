"""Where a task runs: settings from the operator's environment, and the active task context."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator, Mapping

from spotrun import _preemption
from spotrun._checkpoint import IF_CORRUPT, Checkpoint
from spotrun._errors import ConfigError
from spotrun._storage import open_storage


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the operator tells a task container through its environment.

    Attributes:
        checkpoint_uri: SPOTRUN_CHECKPOINT_URI, `s3://bucket/prefix`, `file:///dir` or a path.
        attempt: SPOTRUN_ATTEMPT, 1-based and strictly increasing across the TaskRun's pods.
        resume_from: SPOTRUN_RESUME_FROM, another run's checkpoints, read while this run has none.
        keep: SPOTRUN_CHECKPOINT_KEEP, committed checkpoints retained (default 3).
        taskrun: SPOTRUN_TASKRUN, the TaskRun's name; set only inside a TaskRun's pod.
        namespace: SPOTRUN_NAMESPACE.
        capacity: SPOTRUN_CAPACITY, "spot" or "on-demand".
        rank: SPOTRUN_RANK, this pod's rank in a gang (`replicas: N`), from 0.
        world_size: SPOTRUN_WORLD_SIZE, the gang's size (1 for a single pod).
        if_corrupt: SPOTRUN_CHECKPOINT_IF_CORRUPT, what restore and read do when checkpoints exist
            and none is intact: "start-over" (return None; the default) or "raise". Yours to set
            in the pod template's env.
    """

    checkpoint_uri: str
    attempt: int = 1
    resume_from: str = ""
    keep: int = 3
    taskrun: str = ""
    namespace: str = ""
    capacity: str = ""
    rank: int = 0
    world_size: int = 1
    if_corrupt: str = "start-over"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            checkpoint_uri=env.get("SPOTRUN_CHECKPOINT_URI", ""),
            attempt=_positive_int(env, "SPOTRUN_ATTEMPT", 1),
            resume_from=env.get("SPOTRUN_RESUME_FROM", ""),
            keep=_positive_int(env, "SPOTRUN_CHECKPOINT_KEEP", 3),
            taskrun=env.get("SPOTRUN_TASKRUN", ""),
            namespace=env.get("SPOTRUN_NAMESPACE", ""),
            capacity=env.get("SPOTRUN_CAPACITY", ""),
            rank=_whole(env, "SPOTRUN_RANK", 0, 0),
            world_size=_whole(env, "SPOTRUN_WORLD_SIZE", 1, 1),
            if_corrupt=_choice(env, "SPOTRUN_CHECKPOINT_IF_CORRUPT", IF_CORRUPT),
        )

    @property
    def in_pod(self) -> bool:
        return bool(self.taskrun)

    def checkpoint(self) -> Checkpoint:
        storage = open_storage(self.checkpoint_uri)
        resume = open_storage(self.resume_from, read_only=True) if self.resume_from else None
        return Checkpoint(
            storage,
            attempt=self.attempt,
            resume_from=resume,
            keep=self.keep,
            rank=self.rank,
            ranks=self.world_size,
            if_corrupt=self.if_corrupt,
        )


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole(env, name, default, 1)


def _whole(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < least:
        raise ConfigError(f"{name}={raw!r} must be {least} or more")
    return value


class Context:
    """The running task: its TaskRun, attempt and checkpoints (`current_context().checkpoint`)."""

    def __init__(self, settings: Settings, checkpoint: Checkpoint | None = None) -> None:
        self.settings = settings
        self._checkpoint = checkpoint

    @property
    def checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            self._checkpoint = self.settings.checkpoint()
        return self._checkpoint

    @property
    def attempt(self) -> int:
        return self.settings.attempt

    @property
    def taskrun(self) -> str:
        return self.settings.taskrun

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def in_pod(self) -> bool:
        return self.settings.in_pod

    @property
    def rank(self) -> int:
        """This pod's rank in its gang (0 for a single pod)."""
        return self.settings.rank

    @property
    def world_size(self) -> int:
        """How many pods the gang has (1 for a single pod)."""
        return self.settings.world_size


_active: contextvars.ContextVar[Context | None] = contextvars.ContextVar("spotrun_context", default=None)
_from_env: Context | None = None


def current_context() -> Context:
    """The active task's context: the one `@spotrun.task` set up, else one from the environment
    the operator gives a pod (SPOTRUN_CHECKPOINT_URI and friends). The first call that builds one
    from the environment installs Spotrun's SIGTERM handler, chained to the application's (in the
    main thread only; docs/sdk.md, Signals)."""
    global _from_env
    active = _active.get()
    if active is not None:
        return active
    if _from_env is None:
        settings = Settings.from_env()
        if not settings.checkpoint_uri:
            raise ConfigError(
                "no task context: call current_context() inside a @spotrun.task function, or set "
                "SPOTRUN_CHECKPOINT_URI (s3://BUCKET/PREFIX or a directory) to use checkpoints directly"
            )
        _preemption.install()
        _from_env = Context(settings)
    return _from_env


@contextlib.contextmanager
def activate(context: Context) -> Iterator[Context]:
    token = _active.set(context)
    try:
        yield context
    finally:
        _active.reset(token)
