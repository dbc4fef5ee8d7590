"""The queue of TaskRuns to reconcile, and the one scheduler of everything that is due later.

client-go's workqueue semantics: a key waits in the queue at most once however often it is added,
so a burst of pod events makes one pass; a key being reconciled is not given to a second worker,
and if it is added meanwhile it goes back in the queue when its pass is done. `add_after` wakes a
key when something it waits for is due (a backoff, a deadline, a TTL): there is no timer per
TaskRun, and a finished one without a TTL is never woken.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: collections.deque[Hashable] = collections.deque()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._again: set[Hashable] = set()  # added while being processed
        self._timers: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # the earliest due time of each scheduled key
        self._order = itertools.count()
        self._closed = False

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if self._closed or key in self._queued:
            return
        if key in self._processing:
            self._again.add(key)
            return
        self._queue.append(key)
        self._queued.add(key)
        self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Adds `key` after `delay` seconds; an earlier due time of the same key stands."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            if self._closed or self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._timers, (due, next(self._order), key))
            self._cond.notify()

    def _promote_due(self) -> float | None:
        """Moves every key that is due into the queue; returns seconds until the next one."""
        now = self._clock()
        while self._timers:
            due, _, key = self._timers[0]
            if due > now:
                return due - now
            heapq.heappop(self._timers)
            if self._due.get(key) == due:
                del self._due[key]
                self._add(key)
        return None

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to reconcile, marked as being processed; None when closed or after `timeout`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                wait = self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._closed:
                    return None
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._add(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys waiting to be reconciled now."""
        with self._cond:
            return len(self._queue)

    def scheduled(self) -> int:
        """Keys waiting for a due time."""
        with self._cond:
            return len(self._due)
