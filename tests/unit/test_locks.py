"""The per-TaskRun lock table: one holder per key at a time, and no entry left once nobody needs it."""

from __future__ import annotations

import threading
import time

from spotrun_operator.locks import KeyedLocks


def test_the_table_is_empty_once_nobody_holds_or_waits() -> None:
    locks = KeyedLocks()
    for n in range(1000):
        with locks.hold(("ns", f"run-{n}")):
            assert len(locks) == 1
    assert len(locks) == 0


def test_one_key_is_held_by_one_caller_at_a_time_and_others_keys_are_not_blocked() -> None:
    locks = KeyedLocks()
    inside: list[int] = []
    overlaps: list[int] = []

    def work(n: int) -> None:
        with locks.hold("same"):
            inside.append(n)
            if len(inside) > 1:
                overlaps.append(n)
            time.sleep(0.01)
            inside.remove(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    with locks.hold("other"):  # held throughout: a different key never waits for it
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert overlaps == []
    assert len(locks) == 0


def test_an_entry_stays_while_a_caller_waits_for_it() -> None:
    locks = KeyedLocks()
    entered = threading.Event()

    def waiter() -> None:
        with locks.hold("k"):
            entered.set()

    with locks.hold("k"):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.05)
        assert len(locks) == 1
        assert not entered.is_set()
    thread.join(timeout=5)
    assert entered.is_set()
    assert len(locks) == 0
