"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection package does it.

Every replica tries every RETRY seconds. The holder renews the Lease; another replica takes it only
when it has seen the same record, unchanged, for the Lease's duration by its own clock (so clocks
between nodes need not agree), counted from when its read of that record returned. A leader stops
leading at RENEW_DEADLINE after its last renewal was sent, whatever its requests are doing: each
try's requests are cut off at that deadline (client-go's context.WithTimeout(RenewDeadline)), and a
watchdog thread of its own ends leadership then even if a request is stuck in a socket. As
RENEW_DEADLINE < DURATION, the leader has stopped before anyone else may take over. On SIGTERM the
leader gives the Lease up (an empty holder) once its writers have stopped, and a standby takes over
on its next try.

Worst case after a leader dies without giving it up: DURATION + 2 * RETRY = 14 s.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

Obj = dict[str, Any]
log = logging.getLogger("spotrun.leader")


class LeaseRefused(Exception):
    """The leader's Lease cannot be taken as the cluster stands: its namespace does not exist (a 404
    on create) or RBAC forbids it (403). Trying again cannot help: someone must act."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


DURATION = 10.0  # leaseDurationSeconds
RENEW_DEADLINE = 7.0
RETRY = 2.0
WATCH_TICK = 0.25  # how often the watchdog looks again while the deadline is far or unknown


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass
class Observed:
    """The Lease record a replica last saw, and when (its own monotonic clock) that record changed."""

    record: tuple[Any, ...] = ()
    since: float = 0.0


def record_of(lease: Obj | None) -> tuple[Any, ...]:
    spec = (lease or {}).get("spec") or {}
    return (spec.get("holderIdentity") or "", spec.get("renewTime"), spec.get("leaseTransitions"))


def may_take(lease: Obj | None, me: str, observed: Observed, now: float, duration: float = DURATION) -> bool:
    """Whether `me` may write itself as holder: no Lease, no holder, me already, or a record unchanged
    for `duration` seconds since this replica first saw it."""
    if lease is None:
        return True
    holder = record_of(lease)[0]
    if not holder or holder == me:
        return True
    return observed.record == record_of(lease) and now - observed.since >= duration


def claimed(lease: Obj | None, me: str, name: str, wall: datetime.datetime, duration: float = DURATION) -> Obj:
    """The Lease with `me` as holder, renewed at `wall`: acquireTime and leaseTransitions move on a
    change of holder only."""
    spec = dict((lease or {}).get("spec") or {})
    if spec.get("holderIdentity") != me:
        spec["acquireTime"] = _micro(wall)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
    spec.update(holderIdentity=me, leaseDurationSeconds=int(duration), renewTime=_micro(wall))
    metadata: Obj = {"name": name}
    if lease is not None:
        metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def released(lease: Obj, wall: datetime.datetime) -> Obj:
    """The Lease given up: no holder, so that a standby need not wait out the duration."""
    spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro(wall)}
    return {**lease, "spec": spec}


class DeadlinePassed(Exception):
    """The try's time ran out before its next request: sending it could only renew too late."""


class LeaseApi(Protocol):
    """Every call ends within `timeout` seconds in all (connect, send, answer), retries included."""

    def get_lease(self, namespace: str, name: str, timeout: float) -> Obj | None: ...

    def write_lease(self, namespace: str, body: Obj, timeout: float) -> Obj: ...


class Elector:
    """Tries, renews and gives up the Lease in a thread of its own, watched by a second thread.
    `leading` is set while this replica leads; `on_lost()` is called once if it stops leading while
    it runs (the process exits: a replica that may have been replaced must not write). `refused` is
    set, and the elector stops, when a replica not leading finds the Lease unusable as the cluster
    stands (its namespace missing, RBAC): waiting would not help."""

    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        on_lost: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool, str], None] = lambda leading, holder: None,
        retry: float = RETRY,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.on_lost, self.on_change = on_lost, on_change
        self._clock, self._retry = clock, retry
        self.leading = threading.Event()
        self.stopping = threading.Event()
        self.observed = Observed()
        self.renewed_at: float | None = None  # when the last successful renewal was sent
        self.holder = ""
        self.refused: LeaseRefused | None = None
        self._lease: Obj | None = None
        self._lost = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self.watchdog = threading.Thread(target=self._watch, name="leader-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.watchdog.start()

    def deadline(self) -> float | None:
        """When this replica stops leading without a newer renewal (None: it has not renewed)."""
        renewed = self.renewed_at
        return None if renewed is None else renewed + RENEW_DEADLINE

    def _left(self, deadline: float) -> float:
        left = deadline - self._clock()
        if left <= 0:
            raise DeadlinePassed(f"the renew deadline passed {-left:.1f}s ago")
        return left

    def try_once(self) -> bool:
        """One try to take or renew the Lease; whether this replica holds it now. Its requests end by
        the renew deadline (a leader's) or RENEW_DEADLINE from now (a standby's)."""
        now = self._clock()
        mine = self.deadline() if self.holder == self.identity else None
        deadline = mine if mine is not None else now + RENEW_DEADLINE
        lease = self.api.get_lease(self.namespace, self.name, timeout=self._left(deadline))
        # Observed time is when the read returned (client-go's setObservedRecord): a read that took
        # long must not count its own duration as time the holder failed to renew.
        seen = self._clock()
        record = record_of(lease)
        if record != self.observed.record:
            self.observed = Observed(record, seen)
        self.holder = record[0]
        if not may_take(lease, self.identity, self.observed, now):
            return False
        # The Lease holds from before the write was sent at most: the deadline counts from here.
        sent = self._clock()
        wall = datetime.datetime.now(datetime.UTC)
        body = claimed(lease, self.identity, self.name, wall)
        self._lease = self.api.write_lease(self.namespace, body, timeout=self._left(deadline))
        self.observed = Observed(record_of(self._lease), self._clock())
        self.renewed_at, self.holder = sent, self.identity
        return True

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                held = self.try_once()
            except LeaseRefused as err:
                if not self.leading.is_set():
                    self.refused = err
                    self.stopping.set()
                    return
                log.warning("Failed to renew the Lease %s/%s: %s", self.namespace, self.name, err)
                held = False
            except Exception as err:  # the API server is away: the watchdog ends leadership at the deadline
                log.warning("Failed to take or renew the Lease %s/%s: %s", self.namespace, self.name, err)
                held = False
            if held:
                if not self.leading.is_set():
                    log.info("Took the Lease %s/%s as %s; leading", self.namespace, self.name, self.identity)
                    self.leading.set()
                    self.on_change(True, self.identity)
            elif self.leading.is_set():
                if self.holder not in ("", self.identity):
                    self._lose(f"{self.holder} holds it")
                    return
            else:
                self.on_change(False, self.holder)
            self.stopping.wait(self._retry)

    def _watch(self) -> None:
        """Ends leadership at the renew deadline, apart from the elector's thread: that one may be
        stuck in a request (a black-holed connection) for as long as the request's timeout."""
        while not self.stopping.is_set():
            deadline = self.deadline()
            left = WATCH_TICK
            if self.leading.is_set() and deadline is not None:
                left = deadline - self._clock()
                if left <= 0:
                    self._lose(f"not renewed within {RENEW_DEADLINE:.0f}s")
                    return
            self.stopping.wait(min(left, WATCH_TICK))

    def _lose(self, why: str) -> None:
        if not self._lost.acquire(blocking=False):  # the other thread got there first
            return
        log.error("Lost the Lease %s/%s: %s", self.namespace, self.name, why)
        self.leading.clear()
        self.on_change(False, self.holder)
        self.on_lost()

    def stop(self, *, release: bool) -> None:
        """Stops trying and watching. With `release`, a leader gives the Lease up so that a standby
        takes over on its next try: the caller says so only once every writer has stopped (a
        writer still running when the standby takes over would make two leaders)."""
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=RENEW_DEADLINE)  # a try's requests end by its deadline
        if not release or not self.leading.is_set() or self._lease is None:
            return
        self.leading.clear()
        try:
            # Written with the resourceVersion of this replica's last renewal: if anyone wrote the
            # Lease since, this is a Conflict and changes nothing.
            self.api.write_lease(self.namespace, released(self._lease, datetime.datetime.now(datetime.UTC)), RETRY)
            log.info("Gave up the Lease %s/%s", self.namespace, self.name)
        except Exception as err:  # the standby then waits out the duration
            log.warning("Failed to give up the Lease %s/%s: %s", self.namespace, self.name, err)
