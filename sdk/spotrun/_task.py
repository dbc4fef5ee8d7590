"""`@spotrun.task`: retries with a local checkpoint outside a TaskRun; run-once and report inside it."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import functools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar, overload

from spotrun import _preemption, _task_options
from spotrun._checkpoint import Checkpoint
from spotrun._context import Context, Settings, activate
from spotrun._errors import RecoverableError, TaskTimeoutError
from spotrun._storage import open_storage

log = logging.getLogger("spotrun.task")

P = ParamSpec("P")
R = TypeVar("R")

RESULT_LIMIT = 4096  # the kubelet keeps at most 4 KiB of a termination message
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("spotrun_task_depth", default=0)


@overload
def task(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def task(
    *,
    retries: int = 0,
    timeout: int | float | datetime.timedelta = 0,
    interruptible: bool | None = None,
    **flytekit_options: Any,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    retries: int = 0,
    timeout: int | float | datetime.timedelta = 0,
    interruptible: bool | None = None,
    **flytekit_options: Any,
) -> Any:
    """Marks a function as a Spotrun task.

    Outside a TaskRun (no SPOTRUN_TASKRUN), calling it runs it up to `retries + 1` times, each
    attempt with `current_context().checkpoint` on a local directory shared by the attempts, so a
    retry resumes from the last checkpoint, as a retried pod does. Every exception is retried, as
    the operator retries every failed pod under the default failurePolicy. The directory is
    SPOTRUN_CHECKPOINT_URI when set (kept), else a temporary one (removed afterwards).

    Inside a TaskRun's pod the function runs once (the operator does the retrying); its return
    value becomes the TaskRun's `result` (JSON on the termination message path), and a
    `spotrun.RecoverableError` exits with code 75.

    flytekit's keywords work as they do there, so Flyte code runs with only its import changed:

    Args:
        retries: local retries after the first attempt (in a pod, the TaskRun's `retries` counts;
            `spotrun submit` sets it from here).
        timeout: seconds (or a timedelta) one attempt may run; then TaskTimeoutError (a TimeoutError)
            is raised in it, and a failed attempt is retried. 0: no limit. Enforced in the main
            thread only (SIGALRM); elsewhere a warning says it is not.
        interruptible: False asks `spotrun submit` for on-demand capacity, True for spot.
        flytekit_options: flytekit's other keywords (cache, requests, limits, container_image, ...)
            are accepted without effect, with one IgnoredTaskOptionWarning saying where each
            belongs here; a keyword flytekit has not either is a TypeError.
    """
    options = _task_options.parse(retries, timeout, interruptible, **flytekit_options)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        _task_options.warn(options, getattr(func, "__name__", repr(func)), stacklevel=2)

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            settings = Settings.from_env()
            token = _depth.set(_depth.get() + 1)
            try:
                if settings.in_pod:
                    return _run_in_pod(func, options, settings, args, kwargs, outermost=_depth.get() == 1)
                return _run_locally(func, options, settings, args, kwargs)
            finally:
                _depth.reset(token)

        run.spotrun_retries = options.retries  # type: ignore[attr-defined]
        run.spotrun_options = options  # type: ignore[attr-defined]
        return run

    return decorate(fn) if fn is not None else decorate


def workflow(fn: Callable[P, R]) -> Callable[P, R]:
    """Flyte-compatibility: a workflow here is a plain function that calls tasks."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return fn(*args, **kwargs)

    return run


def _run_locally(
    func: Callable[P, R], options: _task_options.TaskOptions, settings: Settings, args: Any, kwargs: Any
) -> R:
    _preemption.install()
    retries = options.retries
    owned_dir = None
    uri = settings.checkpoint_uri
    if not uri:
        owned_dir = tempfile.mkdtemp(prefix=f"spotrun-{func.__name__}-")
        uri = owned_dir
    storage = open_storage(uri)
    try:
        for attempt in range(1, retries + 2):
            attempt_settings = dataclasses.replace(settings, checkpoint_uri=uri, attempt=attempt)
            checkpoint = Checkpoint(storage, attempt=attempt, keep=settings.keep, if_corrupt=settings.if_corrupt)
            with activate(Context(attempt_settings, checkpoint)):
                try:
                    with _time_limit(options.timeout, func.__name__):
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


def _run_in_pod(
    func: Callable[P, R],
    options: _task_options.TaskOptions,
    settings: Settings,
    args: Any,
    kwargs: Any,
    *,
    outermost: bool,
) -> R:
    _preemption.install()
    with activate(Context(settings)):
        try:
            with _time_limit(options.timeout, func.__name__):
                result = func(*args, **kwargs)
        except RecoverableError:
            traceback.print_exc()
            print(f"spotrun: recoverable failure, exiting with code {RecoverableError.exit_code}", file=sys.stderr)
            raise SystemExit(RecoverableError.exit_code) from None
    if outermost:
        report_result(result)
    return result


@contextlib.contextmanager
def _time_limit(seconds: float | None, name: str) -> Iterator[None]:
    """Raises TaskTimeoutError in the block once it has run `seconds` (SIGALRM, main thread only).
    An enclosing task's earlier limit is left to fire; a later one is put back afterwards."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning("Task %s: timeout=%gs is not enforced outside the main thread", name, seconds)
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TaskTimeoutError(f"task {name} ran longer than its timeout of {seconds:g}s", seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001))


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
