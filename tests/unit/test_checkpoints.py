"""The operator's reads of checkpoint storage (checkpoints.py): beside the passes, never in one, and
only under the prefix the operator assigned. Storage is a stub whose reads hang until released."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Any

import pytest
from spotrun_operator import checkpoints
from spotrun_operator.checkpoints import CheckpointCache, NotRead, Snapshot
from spotrun_operator.reconcile import Decision, decide

from tests.unit.test_reconcile import CONFIG, NODES, NOW, apply, pod_of, taskrun

Obj = dict[str, Any]
KEY = ("ml", "train")
NEWEST = {"id": "00001-00004", "attempt": 1, "step": 4, "time": "2026-11-27T11:59:30+00:00", "size": 1}
SNAPSHOT = Snapshot(NEWEST, (NEWEST,))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Hanging:
    """Storage whose reads hang until `release` is set (or fail, when `fail` is); records who read."""

    def __init__(self, snapshot: Snapshot = SNAPSHOT, *, fail: bool = False) -> None:
        self.snapshot, self.fail = snapshot, fail
        self.release = threading.Event()
        self.opened: list[str] = []
        self.reading = self.most = self.reads = 0
        self._lock = threading.Lock()

    def open(self, uri: str) -> Hanging:
        self.opened.append(uri)
        return self

    def read(self) -> Snapshot:
        with self._lock:
            self.reading += 1
            self.reads += 1
            self.most = max(self.most, self.reading)
        try:
            assert self.release.wait(10)
            if self.fail:
                raise TimeoutError("Read timeout on endpoint URL")
            return self.snapshot
        finally:
            with self._lock:
                self.reading -= 1


class Woken:
    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self.event = threading.Event()

    def __call__(self, key: Hashable) -> None:
        self.keys.append(key)
        self.event.set()


def cache_of(storage: Hanging, woken: Woken | None = None, **options: Any) -> CheckpointCache:
    cache = CheckpointCache(woken or Woken(), open_reader=storage.open, **options)
    cache.start()
    return cache


def one_pass(cache: CheckpointCache, tr: Obj, pods: list[Obj]) -> tuple[Decision, float | None]:
    """What Controller.sync does with storage: decide, then hold or apply (and explain)."""
    view = cache.view(KEY, tr, CONFIG)
    decision = decide(tr, pods, NODES, NOW, CONFIG, checkpoints=view)
    hold = view.hold()
    if hold is None:
        view.explain(decision.status, NOW)
    return decision, hold


PREEMPTED = taskrun({"attempt": 1, "phase": "Running"})
PODS = [pod_of(1, "preempted")]


def test_a_pass_that_needs_storage_returns_at_once_and_its_taskrun_is_woken_when_the_read_lands() -> None:
    storage, woken = Hanging(), Woken()
    cache = cache_of(storage, woken)
    try:
        began = time.monotonic()
        _, hold = one_pass(cache, PREEMPTED, PODS)
        assert time.monotonic() - began < 0.5
        assert hold is not None
        assert 0 < hold <= checkpoints.HOLD_SECONDS
        assert not woken.keys
        storage.release.set()
        assert woken.event.wait(5)
        assert woken.keys == [KEY]
        decision, hold = one_pass(cache, PREEMPTED, PODS)
        assert hold is None
        (counted,) = decision.status["attempts"]
        assert "lostSecondsEstimated" not in counted  # measured from the checkpoint the attempt committed
        assert decision.status["startCheckpoint"] == {"attempt": 2, "id": NEWEST["id"]}
        assert decision.status["checkpoint"]["id"] == NEWEST["id"]
    finally:
        storage.release.set()
        cache.stop()


def test_while_storage_hangs_the_next_attempt_is_created_without_waiting_for_it() -> None:
    storage, clock = Hanging(), Clock()
    cache = cache_of(storage, clock=clock)
    try:
        _, hold = one_pass(cache, PREEMPTED, PODS)
        assert hold is not None  # storage answered so far: held for its read, a second at most
        deadline = time.monotonic() + 5
        while not storage.reading:  # a reader thread has begun it (and hangs in it)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        clock.now += checkpoints.HOLD_SECONDS
        began = time.monotonic()
        decision, hold = one_pass(cache, PREEMPTED, PODS)
        assert time.monotonic() - began < 0.5
        assert hold is None
        assert decision.create is not None
        assert decision.status["attempt"] == 2
        (counted,) = decision.status["attempts"]
        assert counted["lostSecondsEstimated"] is True  # as when storage cannot be read
        # Another TaskRun's pass is not held at all: a read has been under way for longer than a hold.
        other = taskrun({"attempt": 1, "phase": "Running"})
        other["metadata"]["name"] = "other"
        view = cache.view(("ml", "other"), other, CONFIG)
        with pytest.raises(NotRead):
            view.latest()
        assert view.hold() is None
    finally:
        storage.release.set()
        cache.stop()


def test_after_a_failed_read_no_pass_is_held() -> None:
    storage, woken = Hanging(fail=True), Woken()
    cache = cache_of(storage, woken)
    try:
        _, hold = one_pass(cache, PREEMPTED, PODS)
        assert hold is not None
        storage.release.set()
        deadline = time.monotonic() + 5
        while not storage.reads or cache.reading:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not woken.keys  # nothing landed: its hold's own timer passes it again
        decision, hold = one_pass(cache, PREEMPTED, PODS)
        assert hold is None
        assert decision.create is not None
    finally:
        cache.stop()


def test_the_pool_never_reads_more_than_its_bound() -> None:
    storage, woken = Hanging(), Woken()
    cache = cache_of(storage, woken, threads=2, queued=3)
    try:
        views = []
        for n in range(8):
            tr = taskrun({"attempt": 1, "phase": "Running"})
            tr["metadata"]["name"] = f"t{n}"
            views.append(view := cache.view(("ml", f"t{n}"), tr, CONFIG))
            with pytest.raises(NotRead):
                view.latest()
            deadline = time.monotonic() + 5
            while n == 1 and storage.reading < 2:  # the first two taken by the threads, the rest queued
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert (storage.reading, cache.reading) == (2, 2)
        storage.release.set()
        deadline = time.monotonic() + 5
        while len(set(woken.keys)) < 5:  # two read at once and three queued; the rest were dropped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert storage.most == 2
        assert sorted(set(woken.keys)) == [("ml", f"t{n}") for n in range(5)]
        assert [v.hold() for v in views[5:]] == [None, None, None]  # nothing of theirs under way: not held
    finally:
        storage.release.set()
        cache.stop()


def test_entries_are_bounded_and_go_with_their_taskrun() -> None:
    storage = Hanging()
    storage.release.set()
    cache = CheckpointCache(Woken(), open_reader=storage.open, entries=3)
    for n in range(5):
        tr = taskrun()
        tr["metadata"]["name"] = f"t{n}"
        with pytest.raises(NotRead):
            cache.view(("ml", f"t{n}"), tr, CONFIG).latest()
    assert len(cache) == 3
    cache.forget(("ml", "t4"))
    assert len(cache) == 2


def test_a_read_is_served_to_the_pass_it_was_held_for_and_a_later_pass_reads_again() -> None:
    """A read of a moment ago may predate what a later pass is about (an attempt that ended since,
    whose last commit it lacks): only the held pass gets it; the next pass that asks reads again."""
    storage, woken, clock = Hanging(), Woken(), Clock()
    storage.release.set()
    cache = cache_of(storage, woken, clock=clock)
    try:
        view = cache.view(KEY, PREEMPTED, CONFIG)
        with pytest.raises(NotRead):
            view.latest()
        assert woken.event.wait(5)
        assert view.latest() == NEWEST  # the read the held pass asked for
        assert view.hold() is None
        clock.now += 0.1
        with pytest.raises(NotRead):  # a later pass: read again, not served a read from before it
            cache.view(KEY, PREEMPTED, CONFIG).latest()
        assert storage.reads == 2 or cache.reading or not cache._queue.empty()
    finally:
        cache.stop()


# ----- defect 4: only the prefix the operator assigned is read ---------------------------------------


@pytest.mark.parametrize(
    ("uri", "read"),
    [
        (None, True),  # the assigned prefix: s3://bucket/runs/ml/train/
        ("s3://bucket/runs/ml/train", True),  # written out, the same prefix
        ("s3://bucket/runs/other-tenant/their-run/", False),  # another tenant's assigned prefix
        ("s3://bucket/runs/ml/", False),  # above the assigned one: every TaskRun of the namespace
        ("s3://bucket/runs/ml/train/deeper/", False),
        ("s3://their-bucket/anything/", False),
        ("/var/lib/operator-secrets", False),  # a path on the operator's own disk
    ],
)
def test_a_taskrun_is_read_only_under_the_prefix_the_operator_assigned(uri: str | None, read: bool) -> None:
    storage, woken = Hanging(), Woken()
    storage.release.set()
    cache = cache_of(storage, woken)
    try:
        tr = taskrun({"attempt": 1, "phase": "Running"}, checkpoint={"keep": 3, **({"uri": uri} if uri else {})})
        with pytest.raises(NotRead):
            cache.view(KEY, tr, CONFIG).latest()
        if read:
            assert woken.event.wait(5)
            assert storage.opened == ["s3://bucket/runs/ml/train/"]
        else:
            assert not woken.event.wait(0.2)
            assert storage.opened == []
    finally:
        cache.stop()


def test_a_taskrun_naming_another_tenants_prefix_gets_nothing_of_it_in_its_status() -> None:
    storage, woken = Hanging(), Woken()
    storage.release.set()
    cache = cache_of(storage, woken)
    try:
        theirs = "s3://bucket/runs/other-tenant/their-run/"
        # What an operator before this fix had copied into status from that prefix.
        copied = {"uri": theirs, **NEWEST, "unrestorable": {"attempt": 1, "message": "theirs"}}
        tr = taskrun({"attempt": 1, "phase": "Running", "checkpoint": copied}, checkpoint={"uri": theirs})
        decision, hold = one_pass(cache, tr, PODS)
        assert hold is None  # never held: nothing is read for it
        assert decision.create is not None
        assert decision.status["checkpoint"] == {"uri": theirs}
        assert "startCheckpoint" not in decision.status
        (counted,) = decision.status["attempts"]
        assert counted["lostSecondsEstimated"] is True
        (condition,) = [c for c in decision.status["conditions"] if c["type"] == "CheckpointsRead"]
        assert (condition["status"], condition["reason"]) == ("False", "URINotAssigned")
        assert "s3://bucket/runs/ml/train/" in condition["message"]
        assert storage.opened == []
        # The condition goes once the TaskRun is back on the assigned prefix (an edit of a stored one).
        ours = apply(tr, decision)
        ours["spec"]["checkpoint"].pop("uri")
        again, hold = one_pass(cache, ours, [])
        if hold is not None:
            assert woken.event.wait(5)
            again, hold = one_pass(cache, ours, [])
        assert hold is None
        assert all(c["type"] != "CheckpointsRead" for c in again.status.get("conditions", []))
    finally:
        cache.stop()


def test_a_failed_read_of_one_taskrun_still_holds_the_pass_of_another() -> None:
    """One TaskRun whose read fails (its storage refuses) must not cost every other TaskRun its exact
    lost work: only its own passes go on unheld."""
    failing, storage = Hanging(fail=True), Hanging()
    failing.release.set()
    cache = CheckpointCache(Woken(), open_reader=lambda uri: failing if "broken" in uri else storage)
    cache.start()
    broken = ("ml", "broken")
    try:
        with pytest.raises(NotRead):
            cache._serve(broken, "s3://bucket/taskruns/ml/broken/")
        deadline = time.monotonic() + 5
        while not failing.reads or cache.reading:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _, hold = one_pass(cache, PREEMPTED, PODS)
        assert hold is not None, "a failed read of another TaskRun stopped this one's hold"
    finally:
        storage.release.set()
        cache.stop()
