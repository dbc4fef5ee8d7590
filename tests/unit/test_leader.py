"""Leader election on a Lease, against an in-memory Lease with resourceVersion checks, on a fake clock."""

from __future__ import annotations

import contextlib
import copy
import datetime
import threading
from typing import Any

import pytest
from spotrun_operator import __main__ as operator_main
from spotrun_operator import leader
from spotrun_operator.api import Conflict
from spotrun_operator.leader import (
    RENEW_DEADLINE,
    DeadlinePassed,
    Elector,
    LeaseRefused,
    Observed,
    claimed,
    may_take,
    record_of,
    released,
)

Obj = dict[str, Any]
WALL = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


class Leases:
    """One Lease, written only with the resourceVersion last read (as the API server does)."""

    def __init__(self) -> None:
        self.lease: Obj | None = None
        self.version = 0
        self.timeouts: list[tuple[str, float]] = []  # (get or write, the timeout it was given)

    def get_lease(self, namespace: str, name: str, timeout: float) -> Obj | None:
        self.timeouts.append(("get", timeout))
        return copy.deepcopy(self.lease)

    def write_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        self.timeouts.append(("write", timeout))
        given = body["metadata"].get("resourceVersion")
        if (self.lease is None) != (given is None) or (given is not None and given != str(self.version)):
            raise Conflict("stale")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(holder: str | None, renew: str = "t1", transitions: int = 0) -> Obj:
    return {
        "metadata": {"name": "l", "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "renewTime": renew, "leaseTransitions": transitions},
    }


@pytest.mark.parametrize(
    ("current", "observed", "now", "expected"),
    [
        (None, Observed(), 0, True),  # no Lease yet
        (lease(None), Observed(), 0, True),  # given up
        (lease("me"), Observed(), 0, True),  # mine: renew
        (lease("other"), Observed(record_of(lease("other")), 100), 109.9, False),  # within its duration
        (lease("other"), Observed(record_of(lease("other")), 100), 110, True),  # unchanged for the duration
        (lease("other", renew="t2"), Observed(record_of(lease("other")), 100), 200, False),  # renewed since
    ],
)
def test_who_may_take_the_lease(current: Obj | None, observed: Observed, now: float, expected: bool) -> None:
    assert may_take(current, "me", observed, now, duration=10) is expected


def test_claiming_moves_acquire_time_and_transitions_on_a_change_of_holder_only() -> None:
    first = claimed(None, "a", "l", WALL)
    assert first["spec"]["leaseTransitions"] == 0
    assert first["spec"]["holderIdentity"] == "a"
    assert "resourceVersion" not in first["metadata"]
    mine = {**first, "metadata": {"name": "l", "resourceVersion": "1"}}
    renewed = claimed(mine, "a", "l", WALL + datetime.timedelta(seconds=2))
    assert renewed["spec"]["acquireTime"] == first["spec"]["acquireTime"]
    assert renewed["spec"]["renewTime"] != first["spec"]["renewTime"]
    assert renewed["metadata"]["resourceVersion"] == "1"
    taken = claimed(mine, "b", "l", WALL + datetime.timedelta(seconds=20))
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["acquireTime"] != first["spec"]["acquireTime"]
    assert released(mine, WALL)["spec"]["holderIdentity"] is None


def test_a_standby_takes_over_only_after_the_dead_leaders_lease_ran_out_by_its_own_clock() -> None:
    leases, clock = Leases(), Clock()
    a = Elector(leases, "ns", "l", "a", on_lost=lambda: None, clock=clock)
    b = Elector(leases, "ns", "l", "b", on_lost=lambda: None, clock=clock)
    assert a.try_once() is True
    assert b.try_once() is False
    for _ in range(5):  # a renews every RETRY: b never may take it
        clock.now += leader.RETRY
        assert a.try_once() is True
        assert b.try_once() is False
    # a dies right after its last renewal, which b saw at once: b takes the Lease once it has seen
    # that record unchanged for DURATION, not before.
    clock.now += leader.RETRY
    assert b.try_once() is False
    clock.now += leader.DURATION - leader.RETRY - 0.1
    assert b.try_once() is False
    clock.now += 0.1
    assert b.try_once() is True
    assert leases.lease is not None
    assert leases.lease["spec"]["holderIdentity"] == "b"
    assert leases.lease["spec"]["leaseTransitions"] == 1


def test_a_leader_that_gives_the_lease_up_is_replaced_at_the_next_try() -> None:
    leases, clock = Leases(), Clock()
    a = Elector(leases, "ns", "l", "a", on_lost=lambda: None, clock=clock)
    b = Elector(leases, "ns", "l", "b", on_lost=lambda: None, clock=clock)
    assert a.try_once() is True
    a.leading.set()
    a.stop(release=True)
    assert b.try_once() is True


def test_two_replicas_racing_for_a_free_lease_cannot_both_hold_it() -> None:
    leases, clock = Leases(), Clock()
    a = Elector(leases, "ns", "l", "a", on_lost=lambda: None, clock=clock)
    b = Elector(leases, "ns", "l", "b", on_lost=lambda: None, clock=clock)
    seen_by_b = leases.get_lease("ns", "l", timeout=1)
    assert a.try_once() is True
    # b read the Lease before a wrote it: its write carries no (or an old) resourceVersion.
    with pytest.raises(Conflict):
        leases.write_lease("ns", claimed(seen_by_b, "b", "l", WALL), timeout=1)
    assert b.try_once() is False


class Slow(Leases):
    """Leases whose reads and writes take `read` and `write` seconds of the fake clock."""

    def __init__(self, clock: Clock, read: float = 0.0, write: float = 0.0) -> None:
        super().__init__()
        self.clock, self.read, self.write = clock, read, write

    def get_lease(self, namespace: str, name: str, timeout: float) -> Obj | None:
        lease = super().get_lease(namespace, name, timeout)
        self.clock.now += self.read
        return lease

    def write_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        self.clock.now += self.write
        return super().write_lease(namespace, body, timeout)


class Hanging(Leases):
    """Leases whose `hang_on`-th write hangs, as on a black-holed connection, until `unblock` is set."""

    def __init__(self, hang_on: int) -> None:
        super().__init__()
        self.writes, self.hang_on = 0, hang_on
        self.hanging, self.unblock = threading.Event(), threading.Event()

    def write_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        self.writes += 1
        if self.writes == self.hang_on:
            self.hanging.set()
            self.unblock.wait(30)
            raise TimeoutError("black-holed")
        return super().write_lease(namespace, body, timeout)


def test_a_leader_whose_renewal_hangs_stops_leading_at_the_renew_deadline() -> None:
    leases, clock, lost = Hanging(hang_on=2), Clock(), threading.Event()
    a = Elector(leases, "ns", "l", "a", on_lost=lost.set, clock=clock, retry=0.01)
    a.start()
    try:
        assert a.leading.wait(5)
        assert leases.hanging.wait(5), "the second try's write never began"
        # The elector's thread is stuck in the write; only the watchdog can end leadership.
        clock.now = 1000 + RENEW_DEADLINE - 0.01
        assert not lost.wait(0.5), "stopped leading before the deadline"  # a bounded look: nothing must happen
        clock.now = 1000 + RENEW_DEADLINE
        assert lost.wait(5), "still leading at the renew deadline while the renewal hangs"
        assert not a.leading.is_set()
        assert a.thread.is_alive(), "the write was to be still hanging"
    finally:
        leases.unblock.set()
        a.stop(release=False)


@pytest.mark.parametrize(
    ("read", "write", "since_renewal", "expected"),
    [
        (0.0, 0.0, 2.0, [("get", 5.0), ("write", 5.0)]),  # the next try, RETRY after a renewal
        (1.5, 0.0, 5.0, [("get", 2.0), ("write", 0.5)]),  # a slow read leaves the write less
        (3.0, 0.0, 5.0, [("get", 2.0)]),  # the read used up the time: no write is sent
    ],
)
def test_a_renewals_requests_are_given_no_more_than_the_time_left_to_the_renew_deadline(
    read: float, write: float, since_renewal: float, expected: list[tuple[str, float]]
) -> None:
    clock = Clock()
    leases = Slow(clock)
    a = Elector(leases, "ns", "l", "a", on_lost=lambda: None, clock=clock)
    assert a.try_once() is True
    assert leases.timeouts == [("get", RENEW_DEADLINE), ("write", RENEW_DEADLINE)]  # a standby's try
    leases.timeouts.clear()
    leases.read, leases.write = read, write
    clock.now += since_renewal
    with contextlib.suppress(DeadlinePassed):
        a.try_once()
    assert [(kind, round(timeout, 6)) for kind, timeout in leases.timeouts] == expected


def test_the_renew_deadline_counts_from_before_the_renewal_was_sent() -> None:
    clock = Clock()
    a = Elector(Slow(clock, read=1.0, write=3.0), "ns", "l", "a", on_lost=lambda: None, clock=clock)
    assert a.try_once() is True
    assert clock.now == 1004.0
    # The write was sent at 1001 and answered at 1004: the Lease may hold from 1001, not later.
    assert a.renewed_at is not None
    assert a.renewed_at <= 1001.0


def test_a_standby_counts_the_lease_duration_from_when_its_read_returned() -> None:
    clock = Clock()
    leases = Slow(clock)
    a = Elector(leases, "ns", "l", "a", on_lost=lambda: None, clock=clock)
    b = Elector(leases, "ns", "l", "b", on_lost=lambda: None, clock=clock)
    assert a.try_once() is True  # a renews at 1000 and dies
    leases.read = 5.0  # b's first read of that record takes 5 s: it returns at 1005
    assert b.try_once() is False
    assert b.observed.since == 1005.0
    leases.read = 0.0
    clock.now = 1005.0 + leader.DURATION - 0.1
    assert b.try_once() is False, "b took the Lease counting from before its read returned"
    clock.now = 1005.0 + leader.DURATION
    assert b.try_once() is True


class Refusing(Leases):
    def write_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        raise LeaseRefused(404, 'namespaces "nowhere" not found')


def test_a_standby_that_cannot_create_the_lease_stops_trying_and_says_why() -> None:
    b = Elector(Refusing(), "nowhere", "l", "b", on_lost=lambda: None, retry=0.01)
    b.start()
    b.thread.join(5)
    assert not b.thread.is_alive()
    assert b.refused is not None
    assert b.refused.status == 404


class Writers:
    """The controller's and the elector's side of a SIGTERM, in the order they were called."""

    def __init__(self, stop_in_time: bool) -> None:
        self.calls: list[str] = []
        self.stop_in_time = stop_in_time

    def stop(self, timeout: float) -> None:
        self.calls.append("controller.stop")

    def stopped(self, timeout: float) -> bool:
        self.calls.append("controller.stopped")
        return self.stop_in_time


class Lease:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def stop(self, *, release: bool) -> None:
        self.calls.append(f"elector.stop(release={release})")


def thread_that(ends: bool) -> threading.Thread:
    done = threading.Event()
    if ends:
        done.set()
    thread = threading.Thread(target=lambda: done.wait(2), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("workers_stop", "kopf_stops", "expected"),
    [
        (True, True, ["controller.stop", "controller.stopped", "elector.stop(release=True)", "exit 0"]),
        (False, True, ["controller.stop", "controller.stopped", "exit 1"]),  # a pass still running
        (True, False, ["controller.stop", "controller.stopped", "exit 1"]),  # a kopf handler still running
    ],
)
def test_on_sigterm_the_lease_is_given_up_only_after_every_writer_stopped(
    monkeypatch: pytest.MonkeyPatch, workers_stop: bool, kopf_stops: bool, expected: list[str]
) -> None:
    writers = Writers(workers_stop)

    def exit_now(status: int) -> None:
        writers.calls.append(f"exit {status}")
        raise SystemExit(status)

    monkeypatch.setattr(operator_main, "STOP_TIMEOUT", 0.2)
    monkeypatch.setattr(operator_main, "_exit_now", exit_now)
    with contextlib.suppress(SystemExit):
        status = operator_main._stop(writers, Lease(writers.calls), thread_that(kopf_stops))  # type: ignore[arg-type]
        writers.calls.append(f"exit {status}")
    assert writers.calls == expected
