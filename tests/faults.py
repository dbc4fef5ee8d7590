"""Fault injection at the Storage seam: a wrapper that crashes, loses answers, fails, stalls or races a delete.

`FaultyStorage(inner, plan)` passes every call to `inner` and, at the calls its `Plan` names,
injects one of `Fault`'s kinds. The plan is drawn by the test (hypothesis) before the call it
arms, so a run is reproducible from its seed; what fired is counted in a `Tally`, and every call
that took effect is written to a `Journal` the test's model reads (which manifests landed, which
objects were deleted, and by whom).

A crash is `Crash`, a BaseException and not an Exception: the SDK's `except Exception` handlers do
not see it, as they would not see SIGKILL. After a crash every later call of that storage raises
`Crash` again without touching `inner`, so the clean-up a dying process would never run (a failed
commit's deletes) cannot reach storage either: the writer is dead, and the test discards it.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from spotrun import TransientStorageError
from spotrun._storage import Storage


class Crash(BaseException):
    """The process was killed at this storage call (SIGKILL, a node gone)."""


class Fault(enum.Enum):
    CRASH_BEFORE = "crash-before"  # killed before the request was sent: it never took effect
    CRASH_AFTER = "crash-after"  # the request took effect, then the process was killed
    LOST_RESPONSE = "lost-response"  # the request took effect, and its answer was lost (an error)
    TRANSIENT = "transient"  # failed before taking effect (5xx, reset), after the SDK's retries
    SLOW = "slow"  # held mid-call while other processes act (or only counted, where none can)
    DELETE_RANDOM = "delete-random"  # another process deletes some object just before the call

    def __repr__(self) -> str:
        return f"Fault.{self.name}"


@dataclasses.dataclass(frozen=True)
class Injection:
    """`fault` at the `at`-th counted call (from 0) after the plan is armed; `pick` chooses the
    object a DELETE_RANDOM deletes (its index, modulo the number of objects)."""

    at: int
    fault: Fault
    pick: int = 0

    def __repr__(self) -> str:
        pick = f", pick={self.pick}" if self.fault is Fault.DELETE_RANDOM else ""
        return f"Injection({self.at}, {self.fault!r}{pick})"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The faults of one operation, by counted call. The first injection at an index wins."""

    injections: tuple[Injection, ...] = ()

    def at(self, index: int) -> Injection | None:
        return next((i for i in self.injections if i.at == index), None)

    def __repr__(self) -> str:
        return f"Plan({', '.join(repr(i) for i in self.injections)})" if self.injections else "Plan()"


NO_FAULTS = Plan()


class Tally:
    """Faults that fired and calls made, by kind; shared by every storage of a run, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults: Counter[Fault] = Counter()
        self.calls = 0

    def fired(self, fault: Fault) -> None:
        with self._lock:
            self.faults[fault] += 1

    def called(self) -> None:
        with self._lock:
            self.calls += 1

    @property
    def total(self) -> int:
        return sum(self.faults.values())


@dataclasses.dataclass(frozen=True)
class Effect:
    """A storage call that took effect. `process` is the storage's name; `external` marks the
    delete a DELETE_RANDOM fault made (no process of the SDK asked for it)."""

    process: str
    method: str  # "put" or "delete" (put_stream and put_file are recorded as "put")
    keys: tuple[str, ...]
    body: bytes | None = None  # a put's bytes (read back for streams and files)
    external: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body or b"").hexdigest()


class Journal:
    """Every call that took effect, in order, from every process of a run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._effects: list[Effect] = []
        self._read = 0

    def add(self, effect: Effect) -> None:
        with self._lock:
            self._effects.append(effect)

    def new(self) -> list[Effect]:
        """The effects since the previous call."""
        with self._lock:
            fresh = self._effects[self._read :]
            self._read = len(self._effects)
        return fresh


Hold = Callable[[], bool]  # blocks while the process is held; returns True when it is to be killed there
Counted = Callable[[str, str], bool]  # (method, key) -> whether the call counts toward a plan's indexes


class FaultyStorage:
    """Wraps a Storage; injects the armed plan's faults at its counted calls.

    Args:
        inner: the storage every call that is not failed goes to.
        plan: the faults of the first operation; `arm` replaces it (and restarts the count).
        name: the process's name, recorded in the journal.
        tally: where fired faults and calls are counted.
        journal: where calls that took effect are recorded.
        hold: called at a SLOW fault; without it a SLOW call is only counted.
        counted: which calls advance the plan's index (all by default); a gang's rank leaves its
            polling out, whose number depends on timing, so that a plan hits the same call each run.
    """

    def __init__(
        self,
        inner: Storage,
        plan: Plan = NO_FAULTS,
        *,
        name: str = "process",
        tally: Tally | None = None,
        journal: Journal | None = None,
        hold: Hold | None = None,
        counted: Counted | None = None,
    ) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.name = name
        self.tally = tally or Tally()
        self.journal = journal or Journal()
        self.hold = hold
        self.counted = counted
        self.dead = False
        self.fired: list[Injection] = []  # what fired since the plan was armed
        self._lock = threading.RLock()
        self._plan = plan
        self._index = 0

    @property
    def read_only(self) -> bool:
        return bool(getattr(self.inner, "read_only", False))

    def arm(self, plan: Plan) -> None:
        """The faults of the next operation, counted from its first call."""
        with self._lock:
            self._plan = plan
            self._index = 0
            self.fired = []

    # ----- the injection ------------------------------------------------------------------------

    def _before(self, method: str, key: str) -> Injection | None:
        """Decides this call's fault; acts on those that strike before the call. Returns the
        injection that strikes after it (CRASH_AFTER, LOST_RESPONSE), if any."""
        with self._lock:
            if self.dead:
                raise Crash(f"{self.name} is dead ({method} {key})")
            self.tally.called()
            if self.counted is not None and not self.counted(method, key):
                return None
            injection = self._plan.at(self._index)
            self._index += 1
            if injection is None:
                return None
            self.fired.append(injection)
            self.tally.fired(injection.fault)
        fault = injection.fault
        if fault is Fault.CRASH_BEFORE:
            self._die(f"{self.name} was killed before {method} {key}")
        if fault is Fault.TRANSIENT:
            raise TransientStorageError(f"injected: {method} {key} failed after retries", key=key)
        if fault is Fault.SLOW and self.hold is not None and self.hold():
            self._die(f"{self.name} was killed while {method} {key} was held")
        if fault is Fault.DELETE_RANDOM:
            self._delete_random(injection.pick)
        return injection if fault in (Fault.CRASH_AFTER, Fault.LOST_RESPONSE) else None

    def _after(self, injection: Injection | None, method: str, key: str) -> None:
        if injection is None:
            return
        if injection.fault is Fault.CRASH_AFTER:
            self._die(f"{self.name} was killed after {method} {key} took effect")
        raise TransientStorageError(f"injected: the answer to {method} {key} was lost (it took effect)", key=key)

    def _die(self, why: str) -> None:
        with self._lock:
            self.dead = True
        raise Crash(why)

    def _delete_random(self, pick: int) -> None:
        keys = [key for key, _ in self.inner.list("")]
        if keys:
            victim = keys[pick % len(keys)]
            self.inner.delete([victim])
            self.journal.add(Effect(self.name, "delete", (victim,), external=True))

    def _put_effect(self, key: str, body: bytes | None) -> None:
        if body is None:  # a stream or a file: what landed is read back
            body = self.inner.get(key)
        self.journal.add(Effect(self.name, "put", (key,), body))

    # ----- Storage -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        after = self._before("put", key)
        self.inner.put(key, data, create_only=create_only)
        self._put_effect(key, data)
        self._after(after, "put", key)

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        after = self._before("put_stream", key)
        self.inner.put_stream(key, stream)
        self._put_effect(key, None)
        self._after(after, "put_stream", key)

    def put_file(self, key: str, source: Path) -> None:
        after = self._before("put_file", key)
        self.inner.put_file(key, source)
        self._put_effect(key, None)
        self._after(after, "put_file", key)

    def get(self, key: str) -> bytes:
        after = self._before("get", key)
        data = self.inner.get(key)
        self._after(after, "get", key)
        return data

    def get_stream(self, key: str, sink: IO[bytes]) -> None:
        after = self._before("get_stream", key)
        self.inner.get_stream(key, sink)
        self._after(after, "get_stream", key)

    def get_file(self, key: str, target: Path, size: int | None = None) -> tuple[int, str]:
        after = self._before("get_file", key)
        result = self.inner.get_file(key, target, size)
        self._after(after, "get_file", key)
        return result

    def list(self, prefix: str) -> list[tuple[str, int]]:
        after = self._before("list", prefix)
        found = self.inner.list(prefix)
        self._after(after, "list", prefix)
        return found

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        after = self._before("list_dirs", prefix)
        found = self.inner.list_dirs(prefix)
        self._after(after, "list_dirs", prefix)
        return found

    def delete(self, keys: Sequence[str]) -> None:
        after = self._before("delete", keys[0] if keys else "")
        self.inner.delete(keys)
        self.journal.add(Effect(self.name, "delete", tuple(keys)))
        self._after(after, "delete", keys[0] if keys else "")

    def __getattr__(self, name: str) -> Any:
        """A method the Storage protocol has gained since (multipart upload listing and the like)
        passes through too, its calls counted and faulted as the others; a method the inner
        storage lacks stays missing, so that the SDK's `hasattr` checks see what it has."""
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            key = args[0] if args and isinstance(args[0], str) else ""
            after = self._before(name, key)
            result = method(*args, **kwargs)
            self._after(after, name, key)
            return result

        return call
