"""Preemption: interruption notices and SIGTERM mark the task preempted, count down, run callbacks."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar

log = logging.getLogger("spotrun.preemption")

Callback = TypeVar("Callback", bound=Callable[[], object])
# What signal.getsignal returns: a Python handler, SIG_DFL or SIG_IGN, or None for one set outside Python.
Handler = Callable[[int, FrameType | None], Any] | int | None

# The signal the notice watcher sends the main thread so that on_preemption callbacks run there at a
# notice, as they do at SIGTERM. A task must not use it for anything else. Pods run Linux; the
# fallback only keeps the SDK importable where real-time signals do not exist (macOS).
NOTICE_SIGNAL: int = signal.SIGRTMIN + 2 if sys.platform == "linux" else signal.SIGUSR2

KIND_RECLAIM, KIND_DRAIN = "Reclaim", "Drain"
REASON_UNKNOWN = "Unknown"


@dataclasses.dataclass(frozen=True)
class Notice:
    """An interruption notice: the pod's node is about to be reclaimed or drained.

    time: when the operator gave it (UTC). reason: the node taint that announced it, or `Drained`.
    kind: `Reclaim` (the cloud takes the node; the task runs on until SIGTERM) or `Drain` (the
    operator stops the pod itself once a checkpoint committed after the notice exists, or after
    `seconds`). seconds: how long the warning lasts from `time`.
    """

    time: datetime
    reason: str
    kind: str
    seconds: float


_lock = threading.Lock()
_state = threading.RLock()  # RLock: the SIGTERM handler may interrupt the main thread holding it
_installed = False
_preempted = threading.Event()
_deadline: float | None = None
_notice: Notice | None = None
_terminated = False  # SIGTERM arrived: its grace period is the truth from then on
_notice_delivered = False  # the callbacks ran (or run now) for the notice
_callbacks: list[Callable[[], object]] = []
_polled = False  # the task asked preempted(): it stops by itself, so SIGTERM does not end it
_previous: dict[int, Handler] = {}  # the handler each signal had before Spotrun's: chained to


def grace_seconds() -> float:
    """SPOTRUN_GRACE_SECONDS: the pod's termination grace period (default 30)."""
    try:
        return float(os.environ.get("SPOTRUN_GRACE_SECONDS", "30"))
    except ValueError:
        return 30.0


def notice_file() -> str | None:
    """SPOTRUN_NOTICE_FILE: where the downward API shows the pod's notice annotation, if anywhere."""
    return os.environ.get("SPOTRUN_NOTICE_FILE") or None


def poll_seconds() -> float:
    """SPOTRUN_NOTICE_POLL_SECONDS: how often the notice file is read (default 0.5)."""
    try:
        return max(0.01, float(os.environ.get("SPOTRUN_NOTICE_POLL_SECONDS", "0.5")))
    except ValueError:
        return 0.5


def read_notice(path: str | os.PathLike[str]) -> Notice | None:
    """The notice in `path`, or None while the file is empty or missing.

    The path is opened afresh on every call: the kubelet replaces the file (through a symlink into
    its `..data` directory), so a kept descriptor would see the old one forever. Unknown fields are
    ignored. A value that is not JSON with a valid `time` is logged and read as a notice with reason
    `Unknown` and the grace period's seconds: being warned wrongly is cheaper than missing a warning.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError:
        return None
    if not raw.strip():
        return None
    try:
        return _parse(raw)
    except (ValueError, TypeError, KeyError) as err:
        log.warning("Read a malformed interruption notice in %s (%s): %r", path, err, raw[:200])
        return Notice(datetime.now(UTC), REASON_UNKNOWN, KIND_RECLAIM, grace_seconds())


def _parse(raw: bytes) -> Notice:
    body = json.loads(raw.decode())
    if not isinstance(body, dict):
        raise TypeError("not a JSON object")
    given = datetime.fromisoformat(body["time"])
    reason, kind, seconds = body.get("reason", REASON_UNKNOWN), body.get("kind", KIND_RECLAIM), body.get("seconds")
    if not isinstance(reason, str) or not isinstance(kind, str):
        raise TypeError("reason and kind must be strings")
    if seconds is None:
        seconds = grace_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError("seconds must be a number")
    return Notice(given if given.tzinfo else given.replace(tzinfo=UTC), reason, kind, float(seconds))


def install() -> None:
    """Installs the SIGTERM handler once, and with SPOTRUN_NOTICE_FILE the notice watcher (the
    `spotrun-notice` thread) and NOTICE_SIGNAL's handler; only the main thread can, elsewhere this
    does nothing. Each handler chains to the one it replaces (see `_on_sigterm`)."""
    global _installed
    with _lock:
        if _installed or threading.current_thread() is not threading.main_thread():
            return
        _take(signal.SIGTERM, _on_sigterm, "SIGTERM")
        path = notice_file()
        if path is not None:
            _take(NOTICE_SIGNAL, _on_notice_signal, "NOTICE_SIGNAL")
            threading.Thread(target=_watch, args=(path, poll_seconds()), name="spotrun-notice", daemon=True).start()
        _installed = True


def _take(signum: int, handler: Callable[[int, FrameType | None], None], name: str) -> None:
    # Recorded before our handler is in place: a signal may run it as soon as signal.signal returns.
    previous: Handler = signal.getsignal(signum)
    if previous is None:
        log.warning(
            "Replaced a %s handler installed outside Python: Spotrun cannot call it, so it no longer runs", name
        )
    if previous is _on_sigterm or previous is _on_notice_signal:
        previous = signal.SIG_DFL  # ours already (the module state was reset): chaining would recurse
    _previous[signum] = previous
    signal.signal(signum, handler)


def _chain(signum: int, frame: FrameType | None) -> bool:
    """Calls the Python handler the signal had before Spotrun's, if it had one; True when it did.
    Whatever that handler raises (SystemExit, KeyboardInterrupt) goes on, as it would without Spotrun."""
    previous = _previous.get(signum)
    if not callable(previous):
        return False
    previous(signum, frame)
    return True


def preempted() -> bool:
    """True once an interruption notice came or the pod got SIGTERM (preemption, eviction,
    deletion). Asking marks the task as one that stops by itself: SIGTERM then no longer ends the
    process, the task does (unless on_preemption callbacks are registered)."""
    global _polled
    install()
    _polled = True
    return _preempted.is_set()


def seconds_left() -> float:
    """Seconds left to stop in: after SIGTERM, of the grace period; after a notice only, of the
    notice's warning (its `seconds` less its age); before either, the whole grace period."""
    install()
    if _deadline is None:
        return grace_seconds()
    return max(0.0, _deadline - time.monotonic())


def deadline() -> float | None:
    """After SIGTERM, the time.monotonic() by which the process must have stopped (the kubelet's
    SIGKILL comes then); None before, a notice alone included (a reclaimed task runs on until its
    SIGTERM). Unlike seconds_left() it installs nothing: the checkpoint code bounds its retries by it."""
    return _deadline if _terminated else None


def notice() -> Notice | None:
    """The interruption notice the pod got (the first one), or None."""
    install()
    return _notice


def on_preemption(callback: Callback) -> Callback:
    """Registers `callback()` to run, in the main thread and in registration order, for example
    to commit a checkpoint: at an interruption notice, after which the task runs on, and at
    SIGTERM, after which the process exits with code 143 (unless SIGTERM had a handler of the
    application's before Spotrun's, which then runs and decides, or was ignored: the process goes
    on). So a callback may run twice, and the second commit holds the newer state. While the main
    thread is blocked in a C call, the callbacks run when it returns, for a notice as for SIGTERM.
    Usable as a decorator."""
    install()
    _callbacks.append(callback)
    return callback


def _watch(path: str, every: float) -> None:
    """The `spotrun-notice` thread: reads `path` until a notice appears, then tells the main thread."""
    while not _terminated:
        found = read_notice(path)
        if found is not None:
            _on_notice(found)
            return
        time.sleep(every)


def _on_notice(found: Notice) -> None:
    global _deadline, _notice
    with _state:
        if _terminated or _notice is not None:
            return  # after SIGTERM a notice is old news; a second notice changes nothing
        age = min(max(0.0, (datetime.now(UTC) - found.time).total_seconds()), found.seconds)
        _deadline = time.monotonic() + found.seconds - age
        _notice = found
        _preempted.set()
    log.warning(
        "Received an interruption notice (%s, %s): preempted, %.0fs left", found.reason, found.kind, seconds_left()
    )
    main = threading.main_thread().ident
    if main is not None:
        signal.pthread_kill(main, NOTICE_SIGNAL)


def _run_callbacks() -> None:
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            log.exception("Preemption callback %r failed", callback)


def _on_notice_signal(signum: int, frame: FrameType | None) -> None:
    global _notice_delivered
    # Not the watcher's, a repeat, or SIGTERM's callbacks ran (or run now) instead: only the chain.
    if _notice is not None and not _notice_delivered and not _terminated:
        _notice_delivered = True
        _run_callbacks()
    _chain(signum, frame)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Records the preemption and runs the callbacks (at the first SIGTERM only), then does what
    SIGTERM did before Spotrun's handler, at every SIGTERM: calls the application's handler, which
    decides whether the process ends; or, where SIGTERM was ignored, nothing; or, in place of the
    default action, exits with 143 unless the task stops by itself (it polled preempted() and
    registered no callbacks)."""
    global _deadline, _terminated
    with _state:
        first = not _terminated  # a second SIGTERM changes nothing of ours: the grace period already runs
        if first:
            _deadline = time.monotonic() + grace_seconds()
            _terminated = True
            _preempted.set()
    if first:
        log.warning("Received SIGTERM: preempted, %.0fs of grace left", grace_seconds())
        _run_callbacks()
    if _chain(signum, frame) or _previous.get(signum) == signal.SIG_IGN:
        return
    if first and (_callbacks or not _polled):
        raise SystemExit(128 + signum)
