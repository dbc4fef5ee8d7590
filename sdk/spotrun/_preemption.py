"""SIGTERM handling: marks the task preempted, counts down its grace period, runs callbacks."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

log = logging.getLogger("spotrun.preemption")

Callback = TypeVar("Callback", bound=Callable[[], object])

_lock = threading.Lock()
_installed = False
_preempted = threading.Event()
_deadline: float | None = None
_callbacks: list[Callable[[], object]] = []
_polled = False  # the task asked preempted(): it stops by itself, so SIGTERM does not end it


def grace_seconds() -> float:
    """SPOTRUN_GRACE_SECONDS: the pod's termination grace period (default 30)."""
    try:
        return float(os.environ.get("SPOTRUN_GRACE_SECONDS", "30"))
    except ValueError:
        return 30.0


def install() -> None:
    """Installs the SIGTERM handler once; only the main thread can, elsewhere this does nothing."""
    global _installed
    with _lock:
        if _installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True


def preempted() -> bool:
    """True once the pod got SIGTERM (preemption, eviction, deletion). Asking marks the task as
    one that stops by itself: SIGTERM then no longer ends the process, the task does."""
    global _polled
    install()
    _polled = True
    return _preempted.is_set()


def seconds_left() -> float:
    """Seconds of the grace period left since SIGTERM (the whole period before it)."""
    install()
    if _deadline is None:
        return grace_seconds()
    return max(0.0, _deadline - time.monotonic())


def on_preemption(callback: Callback) -> Callback:
    """Registers `callback()` to run on SIGTERM, in the main thread, in registration order, for
    example to commit a final checkpoint; after the callbacks the process exits with code 143.
    Usable as a decorator."""
    install()
    _callbacks.append(callback)
    return callback


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _deadline
    if _preempted.is_set():
        return  # a second SIGTERM changes nothing: the grace period already runs
    _deadline = time.monotonic() + grace_seconds()
    _preempted.set()
    log.warning("Received SIGTERM: preempted, %.0fs of grace left", grace_seconds())
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            log.exception("Preemption callback %r failed", callback)
    if _callbacks or not _polled:
        raise SystemExit(128 + signum)
