"""`@spotrun.task`: retries with a local checkpoint outside a TaskRun; run-once and report inside it."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

from spotrun import _preemption
from spotrun._checkpoint import Checkpoint
from spotrun._context import Context, Settings, activate
from spotrun._errors import RecoverableError
from spotrun._storage import open_storage

log = logging.getLogger("spotrun.task")

P = ParamSpec("P")
R = TypeVar("R")

RESULT_LIMIT = 4096  # the kubelet keeps at most 4 KiB of a termination message
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("spotrun_task_depth", default=0)


@overload
def task(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def task(*, retries: int = 0) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, *, retries: int = 0) -> Any:
    """Marks a function as a Spotrun task.

    Outside a TaskRun (no SPOTRUN_TASKRUN), calling it runs it up to `retries + 1` times, each
    attempt with `current_context().checkpoint` on a local directory shared by the attempts, so a
    retry resumes from the last checkpoint, as a retried pod does. Every exception is retried, as
    the operator retries every failed pod under the default failurePolicy. The directory is
    SPOTRUN_CHECKPOINT_URI when set (kept), else a temporary one (removed afterwards).

    Inside a TaskRun's pod the function runs once (the operator does the retrying); its return
    value becomes the TaskRun's `result` (JSON on the termination message path), and a
    `spotrun.RecoverableError` exits with code 75.

    Args:
        retries: local retries after the first attempt (in a pod, the TaskRun's `retries` counts).
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            settings = Settings.from_env()
            token = _depth.set(_depth.get() + 1)
            try:
                if settings.in_pod:
                    return _run_in_pod(func, settings, args, kwargs, outermost=_depth.get() == 1)
                return _run_locally(func, retries, settings, args, kwargs)
            finally:
                _depth.reset(token)

        run.spotrun_retries = retries  # type: ignore[attr-defined]
        return run

    return decorate(fn) if fn is not None else decorate


def workflow(fn: Callable[P, R]) -> Callable[P, R]:
    """Flyte-compatibility: a workflow here is a plain function that calls tasks."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return fn(*args, **kwargs)

    return run


def _run_locally(func: Callable[P, R], retries: int, settings: Settings, args: Any, kwargs: Any) -> R:
    _preemption.install()
    owned_dir = None
    uri = settings.checkpoint_uri
    if not uri:
        owned_dir = tempfile.mkdtemp(prefix=f"spotrun-{func.__name__}-")
        uri = owned_dir
    storage = open_storage(uri)
    try:
        for attempt in range(1, retries + 2):
            attempt_settings = Settings(checkpoint_uri=uri, attempt=attempt, keep=settings.keep)
            checkpoint = Checkpoint(storage, attempt=attempt, keep=settings.keep)
            with activate(Context(attempt_settings, checkpoint)):
                try:
                    return func(*args, **kwargs)
                except Exception as err:
                    if attempt > retries:
                        log.error("Task %s failed on attempt %d of %d: %s", func.__name__, attempt, retries + 1, err)
                        raise
                    log.warning(
                        "Task %s failed on attempt %d of %d, retrying from its checkpoint: %s",
                        func.__name__,
                        attempt,
                        retries + 1,
                        err,
                    )
        raise AssertionError("unreachable: the last attempt returns or raises")
    finally:
        if owned_dir:
            shutil.rmtree(owned_dir, ignore_errors=True)


def _run_in_pod(func: Callable[P, R], settings: Settings, args: Any, kwargs: Any, *, outermost: bool) -> R:
    _preemption.install()
    with activate(Context(settings)):
        try:
            result = func(*args, **kwargs)
        except RecoverableError:
            traceback.print_exc()
            print(f"spotrun: recoverable failure, exiting with code {RecoverableError.exit_code}", file=sys.stderr)
            raise SystemExit(RecoverableError.exit_code) from None
    if outermost:
        report_result(result)
    return result


def report_result(result: object) -> None:
    """Writes the result as JSON where the kubelet reads the termination message."""
    path = Path(os.environ.get("SPOTRUN_RESULT_PATH", "/dev/termination-log"))
    text = json.dumps({"result": result}, default=str)
    if len(text.encode()) > RESULT_LIMIT:
        log.warning(
            "Result is %d bytes, over the %d-byte termination message limit; not reported", len(text), RESULT_LIMIT
        )
        text = json.dumps({"truncated": True, "size": len(text.encode())})
    try:
        path.write_text(text)
    except OSError as err:
        log.warning("Could not write the result to %s: %s", path, err)
