"""The work queue: one pass per key at a time, bursts collapse, due times wake keys once."""

from __future__ import annotations

import threading

from spotrun_operator.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drain(queue: WorkQueue) -> list[object]:
    keys = []
    while (key := queue.get(timeout=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_a_burst_of_adds_makes_one_pass_per_key_in_order() -> None:
    queue = WorkQueue(Clock())
    for key in ["a", "b", "a", "a", "c", "b"]:
        queue.add(key)
    assert len(queue) == 3
    assert drain(queue) == ["a", "b", "c"]


def test_a_key_added_while_processed_comes_back_once_done_and_never_to_two_workers() -> None:
    queue = WorkQueue(Clock())
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")
    queue.add("a")
    assert queue.get(timeout=0) is None  # not handed out while its pass runs
    queue.done("a")
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    assert queue.get(timeout=0) is None


def test_add_after_wakes_the_key_when_due_and_the_earliest_due_time_stands() -> None:
    clock = Clock()
    queue = WorkQueue(clock)
    queue.add_after("ttl", 30)
    queue.add_after("ttl", 60)  # later: the earlier one stands
    queue.add_after("backoff", 5)
    assert queue.scheduled() == 2
    assert drain(queue) == []
    clock.now += 5
    assert drain(queue) == ["backoff"]
    clock.now += 24.9
    assert drain(queue) == []
    clock.now += 0.1
    assert drain(queue) == ["ttl"]
    clock.now += 100
    assert drain(queue) == []  # woken once, not again at 60 s
    assert queue.scheduled() == 0


def test_an_earlier_due_time_replaces_a_later_one() -> None:
    clock = Clock()
    queue = WorkQueue(clock)
    queue.add_after("a", 60)
    queue.add_after("a", 2)
    clock.now += 2
    assert drain(queue) == ["a"]
    clock.now += 100
    assert drain(queue) == []


def test_no_delay_is_an_add_and_a_due_key_already_queued_is_not_queued_twice() -> None:
    clock = Clock()
    queue = WorkQueue(clock)
    queue.add_after("a", 0)
    queue.add_after("a", 1)
    clock.now += 1
    assert drain(queue) == ["a"]


def test_get_blocks_until_a_key_is_due_and_close_releases_waiters() -> None:
    queue = WorkQueue()
    queue.add_after("soon", 0.05)
    assert queue.get(timeout=5) == "soon"
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    queue.close()
    waiter.join(5)
    assert got == [None]
    queue.add("late")
    assert queue.get(timeout=0) is None
