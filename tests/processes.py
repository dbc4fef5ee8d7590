"""The processes of a harness run: a Checkpoint on a thread of its own, which a held storage call can stop mid-call."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotrun import Checkpoint

from tests.checkpoint_model import View
from tests.faults import FaultyStorage

OP_TIMEOUT = 120.0  # seconds a call may run before the harness calls it hung


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a call returned, or raised (Crash included)."""

    result: Any = None
    error: BaseException | None = None

    def __repr__(self) -> str:
        return f"raised {self.error!r}" if self.error is not None else f"returned {self.result!r}"


@dataclasses.dataclass
class Op:
    """A call in flight: what to check when it finishes, and the storage as it was when it began."""

    kind: str
    check: Callable[[Op, Outcome], None]
    started: int  # the machine step it began in
    before: View


class Process:
    """A process of the task, or a reader: a Checkpoint over its own FaultyStorage.

    Its calls run on a thread of their own, one at a time, so that a call held at a SLOW fault
    leaves the process mid-call while the others act. The machine waits until the call finishes
    or is held: only one thread runs at a time, and a run is the same every time."""

    def __init__(self, name: str, attempt: int, storage: FaultyStorage, checkpoint: Checkpoint, role: str) -> None:
        self.name = name
        self.attempt = attempt
        self.storage = storage
        self.checkpoint = checkpoint
        self.role = role
        self.op: Op | None = None
        self.outcome: Outcome | None = None
        self.src: Path | None = None  # a writer's saved directory
        self._cond = threading.Condition()
        self._held = False
        self._kill = False
        self._finished = True
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return self.name

    @property
    def dead(self) -> bool:
        return self.storage.dead

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> bool:
        """In the process's thread, at a SLOW fault: waits until released; True to die there."""
        with self._cond:
            self._held = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._held)
            return self._kill

    def run(self, call: Callable[[], Any]) -> None:
        assert self._finished, f"{self.name} is busy"
        assert not self._held, f"{self.name} is held"
        self._finished = False
        self.outcome = None
        self._thread = threading.Thread(target=self._work, args=(call,), name=f"harness-{self.name}", daemon=True)
        self._thread.start()
        self._settle()

    def release(self, *, kill: bool) -> None:
        with self._cond:
            assert self._held, f"{self.name} is not held"
            self._held = False
            self._kill = kill
            self._cond.notify_all()
        self._settle()

    @property
    def finished(self) -> bool:
        return self._finished

    def _work(self, call: Callable[[], Any]) -> None:
        try:
            outcome = Outcome(result=call())
        except BaseException as err:
            outcome = Outcome(error=err)
        with self._cond:
            self.outcome = outcome
            self._finished = True
            self._cond.notify_all()

    def _settle(self) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished or self._held, timeout=OP_TIMEOUT):
                raise AssertionError(f"{self.name}'s call neither finished nor was held within {OP_TIMEOUT:.0f}s")
        if self._finished and self._thread is not None:
            self._thread.join()
