"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection package does it.

Every replica tries every RETRY seconds. The holder renews the Lease; another replica takes it only
when it has seen the same record, unchanged, for the Lease's duration by its own clock (so clocks
between nodes need not agree). A leader that cannot renew within RENEW_DEADLINE stops leading:
RENEW_DEADLINE < DURATION, so it has stopped before anyone else may take over. On SIGTERM the
leader gives the Lease up at once (an empty holder), and a standby takes over on its next try.

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

DURATION = 10.0  # leaseDurationSeconds
RENEW_DEADLINE = 7.0
RETRY = 2.0


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


class LeaseApi(Protocol):
    def get_lease(self, namespace: str, name: str) -> Obj | None: ...

    def write_lease(self, namespace: str, body: Obj) -> Obj: ...


class Elector:
    """Tries, renews and gives up the Lease in a thread of its own. `leading` is set while this
    replica leads; `on_lost()` is called once if it stops leading while it runs (the process exits:
    a replica that may have been replaced must not write)."""

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
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.on_lost, self.on_change = on_lost, on_change
        self._clock = clock
        self.leading = threading.Event()
        self.stopping = threading.Event()
        self.observed = Observed()
        self.renewed_at = 0.0
        self.holder = ""
        self._lease: Obj | None = None
        self.thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def try_once(self) -> bool:
        """One try to take or renew the Lease; whether this replica holds it now."""
        now = self._clock()
        lease = self.api.get_lease(self.namespace, self.name)
        record = record_of(lease)
        if record != self.observed.record:
            self.observed = Observed(record, now)
        self.holder = record[0]
        if not may_take(lease, self.identity, self.observed, now):
            return False
        wall = datetime.datetime.now(datetime.UTC)
        self._lease = self.api.write_lease(self.namespace, claimed(lease, self.identity, self.name, wall))
        self.observed = Observed(record_of(self._lease), self._clock())
        self.renewed_at, self.holder = now, self.identity
        return True

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                held = self.try_once()
            except Exception as err:  # the API server is away: a leader gives up after RENEW_DEADLINE
                log.warning("Leader election: %s", err)
                held = False
            if held:
                if not self.leading.is_set():
                    log.info("Leading (Lease %s/%s as %s)", self.namespace, self.name, self.identity)
                    self.leading.set()
                    self.on_change(True, self.identity)
            elif self.leading.is_set():
                taken = self.holder not in ("", self.identity)
                if taken or self._clock() - self.renewed_at > RENEW_DEADLINE:
                    why = f"{self.holder} holds it" if taken else f"not renewed for {RENEW_DEADLINE:.0f}s"
                    log.error("Lost the Lease %s/%s: %s", self.namespace, self.name, why)
                    self.leading.clear()
                    self.on_change(False, self.holder)
                    self.on_lost()
                    return
            else:
                self.on_change(False, self.holder)
            self.stopping.wait(RETRY)

    def release(self) -> None:
        """Stops trying; a leader gives the Lease up so that a standby takes over on its next try."""
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=RETRY + 5)
        if not self.leading.is_set() or self._lease is None:
            return
        self.leading.clear()
        try:
            self.api.write_lease(self.namespace, released(self._lease, datetime.datetime.now(datetime.UTC)))
            log.info("Gave up the Lease %s/%s", self.namespace, self.name)
        except Exception as err:  # the standby then waits out the duration
            log.warning("Giving up the Lease failed: %s", err)
