"""Leader election on a Lease, against an in-memory Lease with resourceVersion checks."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from spotrun_operator import leader
from spotrun_operator.api import Conflict
from spotrun_operator.leader import Elector, Observed, claimed, may_take, record_of, released

Obj = dict[str, Any]
WALL = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


class Leases:
    """One Lease, written only with the resourceVersion last read (as the API server does)."""

    def __init__(self) -> None:
        self.lease: Obj | None = None
        self.version = 0

    def get_lease(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.lease)

    def write_lease(self, namespace: str, body: Obj) -> Obj:
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
    a.release()
    assert b.try_once() is True


def test_two_replicas_racing_for_a_free_lease_cannot_both_hold_it() -> None:
    leases, clock = Leases(), Clock()
    a = Elector(leases, "ns", "l", "a", on_lost=lambda: None, clock=clock)
    b = Elector(leases, "ns", "l", "b", on_lost=lambda: None, clock=clock)
    seen_by_b = leases.get_lease("ns", "l")
    assert a.try_once() is True
    # b read the Lease before a wrote it: its write carries no (or an old) resourceVersion.
    with pytest.raises(Conflict):
        leases.write_lease("ns", claimed(seen_by_b, "b", "l", WALL))
    assert b.try_once() is False
