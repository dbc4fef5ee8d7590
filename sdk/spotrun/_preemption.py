"""Preemption: interruption notices (until withdrawn) and SIGTERM mark the task preempted, count down, run callbacks."""

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
_terminated = False  # SIGTERM arrived: its grace period is the truth from then on, and nothing changes
_notices = 0  # notices taken so far: a withdrawn notice given again, or a changed one, is a new one
_delivered = 0  # the `_notices` whose callbacks ran (or run now): once per notice, not per attempt
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
    raw = _read(path)
    return None if raw is None else _notice_of(raw, path)


def _read(path: str | os.PathLike[str]) -> bytes | None:
    """The file's value, stripped (b"": no notice); None when it cannot be read: missing, or its
    `..data` swapped away as it was opened."""
    try:
        with open(path, "rb") as file:
            return file.read().strip()
    except OSError:
        return None


def _notice_of(raw: bytes, path: str | os.PathLike[str]) -> Notice | None:
    if not raw:
        return None
    try:
        return _parse(raw)
    except (ValueError, TypeError, KeyError) as err:
        log.warning("Read a malformed interruption notice in %s (%s): %r", path, err, raw[:200])
        return Notice(datetime.now(UTC), REASON_UNKNOWN, KIND_RECLAIM, grace_seconds())


def _well_formed(raw: bytes) -> bool:
    try:
        _parse(raw)
    except (ValueError, TypeError, KeyError):
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What the watcher made of the file so far. `held`: the value the notice state was taken from
    (b"": no notice). `once`: an empty or malformed value read once and not taken yet.

    A well-formed notice is taken at the first read: a torn read cannot make one. An empty or
    malformed value may be a torn read of a file rewritten in place (truncated, then written), so it
    is taken only when the next read gives it again; a file that cannot be read changes nothing.
    Either way a passing glitch neither withdraws the notice nor makes it a new one."""

    held: bytes = b""
    once: bytes | None = None

    def after(self, raw: bytes | None) -> _Reading:
        """The reading after one more read of the file, which gave `raw` (None: unreadable)."""
        if raw is None:
            return self
        if raw == self.held:
            return _Reading(self.held)
        if raw == self.once or _well_formed(raw):
            return _Reading(raw)
        return _Reading(self.held, raw)


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
    """True while an interruption notice is in force, and for good once the pod got SIGTERM
    (preemption, eviction, deletion). A notice withdrawn before SIGTERM (the node was uncordoned,
    its notice taint went) makes it False again. Asking marks the task as one that stops by itself:
    SIGTERM then no longer ends the process, the task does (unless on_preemption callbacks are
    registered)."""
    global _polled
    install()
    _polled = True
    return _preempted.is_set()


def seconds_left() -> float:
    """Seconds left to stop in: after SIGTERM, of the grace period; under a notice only, of the
    notice's warning (its `seconds` less its age); before either, or after the notice was
    withdrawn, the whole grace period."""
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
    """The interruption notice in force (the newest one), or None: before any, and once it was
    withdrawn. From SIGTERM on it no longer changes."""
    install()
    return _notice


def on_preemption(callback: Callback) -> Callback:
    """Registers `callback()` to run, in the main thread and in registration order, for example
    to commit a checkpoint: at each interruption notice (a new or changed one, not at its
    withdrawal), after which the task runs on, and at SIGTERM, after which the process exits with
    code 143 (unless SIGTERM had a handler of the application's before Spotrun's, which then runs
    and decides, or was ignored: the process goes on). So a callback may run more than once, and
    the later commit holds the newer state. While the main thread is blocked in a C call, the
    callbacks run when it returns, for a notice as for SIGTERM. Usable as a decorator."""
    install()
    _callbacks.append(callback)
    return callback


def _watch(path: str, every: float) -> None:
    """The `spotrun-notice` thread: reads `path` every `every` seconds until SIGTERM, and takes each
    value that settles (see `_Reading`): a notice, a changed one, or none (the operator withdrew it)."""
    reading = _Reading()
    while not _terminated:
        now = reading.after(_read(path))
        if now.held != reading.held:
            found = _notice_of(now.held, path)
            if found is None:
                _on_withdrawn()
            else:
                _on_notice(found)
        reading = now
        time.sleep(every)


def _on_notice(found: Notice) -> None:
    global _deadline, _notice, _notices
    with _state:
        if _terminated or _notice == found:
            return  # after SIGTERM a notice is old news; the same notice again changes nothing
        age = min(max(0.0, (datetime.now(UTC) - found.time).total_seconds()), found.seconds)
        _deadline = time.monotonic() + found.seconds - age
        _notice = found
        _notices += 1
        _preempted.set()
    log.warning(
        "Received an interruption notice (%s, %s): preempted, %.0fs left", found.reason, found.kind, seconds_left()
    )
    main = threading.main_thread().ident
    if main is not None:
        signal.pthread_kill(main, NOTICE_SIGNAL)


def _on_withdrawn() -> None:
    global _deadline, _notice
    with _state:
        withdrawn = _notice
        if _terminated or withdrawn is None:
            return  # SIGTERM is final: the pod goes whatever the node does next
        _deadline = None
        _notice = None
        _preempted.clear()
    # A warning as the notice was: whoever saw the one in the log sees that it no longer holds.
    log.warning("Saw the interruption notice (%s, %s) withdrawn: no longer preempted", withdrawn.reason, withdrawn.kind)


def _run_callbacks() -> None:
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            log.exception("Preemption callback %r failed", callback)


def _on_notice_signal(signum: int, frame: FrameType | None) -> None:
    global _delivered
    # Not the watcher's, a repeat, a notice withdrawn before it came, or SIGTERM's callbacks ran (or
    # run now) instead: only the chain. Checked and marked under the lock, so that a notice the
    # watcher takes meanwhile is not marked as delivered: its own signal runs the callbacks again.
    with _state:
        due = _notice is not None and _delivered != _notices and not _terminated
        if due:
            _delivered = _notices
    if due:
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
