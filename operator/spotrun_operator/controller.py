"""The controller: watch caches in, one pass per TaskRun out, applied through the API module.

Informers keep TaskRuns, their pods (the apiserver applies the label selector) and the Nodes'
readiness in memory; every change wakes the TaskRuns it concerns through the work queue, and a
pass's `requeue_after` wakes its TaskRun when something is due. A pass reads only the caches, so
a TaskRun that nothing happens to costs no request. Writes are guarded: the status by its
resourceVersion, pod names are fixed per attempt (a second create of one is a 409 that adopts
the first), and a pod that the cache lacks for an attempt not yet counted is looked up live
before anything is decided (the cache may be behind; the pod may truly be gone).
"""

from __future__ import annotations

import collections.abc
import contextlib
import datetime
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from spotrun_operator import metrics, names
from spotrun_operator.api import Api, Conflict, Gone, NamespaceTerminating, Refused, Taken, describe, transient
from spotrun_operator.attempts import finished
from spotrun_operator.cache import (
    Informer,
    Key,
    PodStore,
    Store,
    compact,
    node_ready,
    trim_pod,
    trim_taskrun,
    wait_synced,
)
from spotrun_operator.checkpoints import CheckpointCache
from spotrun_operator.config import Config
from spotrun_operator.podbuild import checkpoint_uri
from spotrun_operator.reconcile import decide, refused, unseen_attempts
from spotrun_operator.status import changed
from spotrun_operator.workqueue import WorkQueue

Obj = dict[str, Any]
REASON_TASKRUN_DELETED = "TaskRunDeleted"  # a pod stopped so that its checkpoints can be deleted after it
REASON_BUDGET_TAKEN = "DisruptionBudgetTaken"  # the budget's name holds one that is not the TaskRun's
log = logging.getLogger("spotrun.controller")

RESYNC_SECONDS = 600.0  # every TaskRun is passed again this often, from the caches (no request)
RETRY_DELAYS = (0.5, 300.0)  # a pass that raised is retried after 0.5 s, doubling to 5 min


INSTANCE_TYPE = "node.kubernetes.io/instance-type"


def trim_node(node: Obj, spot_labels: collections.abc.Mapping[str, str]) -> Obj:
    """What a pass reads of a Node: Ready, its taints' keys and cordon (notices, drains), its
    instance type and whether it is spot (cost); not its images or conditions."""
    meta, spec = node["metadata"], node.get("spec") or {}
    labels = meta.get("labels") or {}
    kept: Obj = {
        "metadata": {"name": meta["name"], "resourceVersion": meta.get("resourceVersion")},
        "ready": node_ready(node),
    }
    taints = sorted({t["key"] for t in spec.get("taints") or [] if t.get("key")})
    if taints:
        kept["taints"] = taints
    if spec.get("unschedulable"):
        kept["unschedulable"] = True
    if labels.get(INSTANCE_TYPE):
        kept["instanceType"] = labels[INSTANCE_TYPE]
    if spot_labels:
        kept["spot"] = all(labels.get(k) == v for k, v in spot_labels.items())
    trimmed: Obj = compact(kept)
    return trimmed


def _facts(node: Obj | None) -> Obj:
    return {k: v for k, v in (node or {}).items() if k != "metadata"}


def _expiry(taskrun: Obj) -> tuple[Any, ...]:
    """What a TaskRun's TTL expiry depends on (reconcile's keep_finished): equal, and it is still due."""
    status = taskrun.get("status") or {}
    return (
        taskrun["spec"].get("ttlSecondsAfterFinished"),
        status.get("phase"),
        status.get("completionTime"),
        bool(taskrun["metadata"].get("deletionTimestamp")),
    )


class Nodes(collections.abc.Mapping[str, bool]):
    """The node cache as reconcile.decide reads it: name -> Ready."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getitem__(self, name: str) -> bool:
        node = self._store.get(("", name))
        if node is None:
            raise KeyError(name)
        return bool(node["ready"])

    def __iter__(self) -> Iterator[str]:
        return (name for _, name in self._store.all_keys())

    def __len__(self) -> int:
        return len(self._store)


class Events:
    """Events are for people: posted from a thread of their own, so that a pass never waits on one.
    At most `size` wait; beyond that the newest are dropped and counted (a burst of thousands of
    TaskRuns must not hold memory or requests for its Events)."""

    def __init__(self, api: Api, size: int = 2000) -> None:
        self.api = api
        self._queue: queue.Queue[tuple[Obj, str, str, str] | None] = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._posting = 0  # the one taken from the queue and being posted: not posted yet either
        self._stopping = threading.Event()
        metrics.EVENTS_WAITING.set_function(lambda: self._queue.qsize() + self._posting)

    def start(self) -> None:
        self.thread.start()

    def post(self, taskrun: Obj, kind: str, reason: str, message: str) -> None:
        meta = taskrun["metadata"]
        slim = {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")}}
        try:
            self._queue.put_nowait((slim, kind, reason, message))
        except queue.Full:
            metrics.EVENTS_DROPPED.inc()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None and not self._stopping.is_set():
            self._posting = 1
            try:
                self.api.post_event(*item)
            except Exception as err:  # a connection error as much as a refusal: the next one may pass
                metrics.EVENTS_FAILED.inc()
                slim, _, reason, _ = item
                where = f"{slim['metadata']['namespace']}/{slim['metadata']['name']}"
                log.warning("Posting event %s for TaskRun %s failed: %s", reason, where, describe(err))
            finally:
                self._posting = 0

    def alive(self) -> bool:
        """Not started yet (a standby's), or posting."""
        return self.thread.ident is None or self.thread.is_alive()

    def stop(self) -> None:
        """Ends the thread after the Event being posted: the ones waiting are dropped, since a replica
        that stops leading must stop writing (a full queue must not keep it posting for minutes)."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes a thread waiting on an empty queue


class Controller:
    def __init__(self, api: Api, config: Config, *, workers: int = 8, events_api: Api | None = None) -> None:
        self.api, self.config, self.workers = api, config, workers
        self.taskruns, self.pods, self.node_store = Store(), PodStore(), Store()
        self.nodes = Nodes(self.node_store)
        self._budget_floors: dict[Key, int] = {}  # the minAvailable last written to each TaskRun's budget
        self.queue = WorkQueue()
        self.events = Events(events_api or api)
        self.checkpoints = CheckpointCache(self.queue.add)  # storage is read beside the passes, never in one
        self._failures: dict[Key, int] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.informers: list[Informer] = []
        for ns in config.namespaces or (None,):
            self.informers.append(self._informer("taskruns", self.taskruns, ns, "", trim_taskrun, self._taskrun))
            self.informers.append(self._informer("pods", self.pods, ns, names.LABEL_TASKRUN, trim_pod, self._pod))
        spot = dict(config.spot_labels)
        self.informers.append(
            self._informer("nodes", self.node_store, None, "", lambda n: trim_node(n, spot), self._node)
        )

    def _informer(
        self, kind: str, store: Store, namespace: str | None, selector: str, trim: Any, hook: Any
    ) -> Informer:
        return Informer(
            kind,
            store,
            self.api.list_objects,
            self.api.watch_objects,
            namespace=namespace,
            selector=selector,
            trim=trim,
            on_change=hook,
            gone=Gone,
        )

    # ----- what wakes a TaskRun --------------------------------------------------------------------

    def _taskrun(self, _: str, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        if obj is not None:
            self.queue.add((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))

    def _pod(self, _: str, old: Obj | None, new: Obj | None) -> None:
        pod = new or old
        owner = names.taskrun_of(pod["metadata"]) if pod else None
        if pod is not None and owner is not None:
            self.queue.add((pod["metadata"].get("namespace", ""), owner))

    def _node(self, _: str, old: Obj | None, new: Obj | None) -> None:
        """A node that comes, goes or changes (readiness, taints, cordon) wakes the TaskRuns with a
        pod on it."""
        if old is not None and new is not None and _facts(old) == _facts(new):
            return
        for key in self.pods.taskruns_on_node((new or old or {})["metadata"]["name"]):
            self.queue.add(key)

    # ----- running -----------------------------------------------------------------------------------

    def start_informers(self) -> None:
        for informer in self.informers:
            informer.start()

    def synced(self, timeout: float | None = None) -> bool:
        return wait_synced(self.informers, timeout)

    def start_workers(self) -> None:
        """Begins reconciling: every TaskRun once, then whatever wakes. Only the leader calls this (a
        standby's queue only collects keys: its depth is not reported)."""
        metrics.QUEUE_DEPTH.set_function(lambda: len(self.queue))
        metrics.SCHEDULED.set_function(self.queue.scheduled)
        self.events.start()
        self.checkpoints.start()
        for key in self.taskruns.all_keys():
            self.queue.add(key)
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        resync = threading.Thread(target=self._resync, name="resync", daemon=True)
        resync.start()
        self._threads.append(resync)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops handing out passes and waits for those under way."""
        self._stopping.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout)
        for informer in self.informers:
            informer.stop()
        self.events.stop()
        self.checkpoints.stop()

    def stopped(self, timeout: float) -> bool:
        """After stop(): whether every writer (the workers, the resync, the Events thread) has ended,
        waiting for them at most `timeout` seconds in all. A leader gives its Lease up only then."""
        deadline = time.monotonic() + timeout
        writers = [*self._threads, self.events.thread]
        for thread in writers:
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in writers)

    def alive(self) -> bool:
        return (
            all(i.thread.is_alive() for i in self.informers)
            and all(t.is_alive() for t in self._threads)
            and self.events.alive()
        )

    def _resync(self) -> None:
        while not self._stopping.wait(RESYNC_SECONDS):
            for key in self.taskruns.all_keys():
                self.queue.add(key)

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            self._process(key)  # type: ignore[arg-type]

    def _process(self, key: Key) -> None:
        try:
            after = self.sync(key)
            self._failures.pop(key, None)
            if after is not None:
                self.queue.add_after(key, after)
        except NamespaceTerminating:
            log.info("Skipped TaskRun %s/%s: its namespace is being deleted", *key)
        except Exception as err:
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
            first, cap = RETRY_DELAYS
            delay = min(cap, first * 2 ** (count - 1)) * random.uniform(0.9, 1.1)
            if isinstance(err, Conflict):
                log.info("TaskRun %s/%s changed under its pass (%s); again in %.1fs", *key, err, delay)
            elif transient(err):
                log.warning("TaskRun %s/%s: %s; again in %.1fs", *key, err, delay)
            else:
                log.exception("Reconciling TaskRun %s/%s failed; again in %.1fs", *key, delay)
            self.queue.add_after(key, delay)
        finally:
            self.queue.done(key)

    # ----- one pass -----------------------------------------------------------------------------------

    def release_pods(self, namespace: str, name: str) -> None:
        """The owner is gone: nothing will count these pods any more."""
        for pod in self.pods.of_taskrun(namespace, name):
            if names.POD_FINALIZER in (pod["metadata"].get("finalizers") or []):
                self._keep(self.api.release_pod(pod))

    def stop_pods(self, namespace: str, name: str) -> int:
        """Stops (gracefully) the TaskRun's pods that still run; returns how many have not ended yet."""
        running = [p for p in self.pods.of_taskrun(namespace, name) if not finished(p)]
        for pod in running:
            if not pod["metadata"].get("deletionTimestamp"):
                self._keep(self.api.stop_pod(pod, REASON_TASKRUN_DELETED))
        return len(running)

    def _keep(self, pod: Obj | None) -> None:
        if pod and pod.get("kind", "Pod") == "Pod" and "metadata" in pod:
            self.pods.put(trim_pod(pod))

    def _ensure_budget(self, taskrun: Obj, budget: Obj) -> bool:
        """Creates the TaskRun's PodDisruptionBudget. Without it (no right to create one, no policy/v1,
        its name taken by a budget that is not the TaskRun's) the attempt still starts: a drain then
        evicts its pod, as with voluntary Allow. False: status must not name it (nothing deletes it)."""
        meta = budget["metadata"]
        try:
            self.api.create_budget(budget)
        except NamespaceTerminating:
            raise
        except Taken:
            message = (
                f"a drain may evict the pod without waiting for a checkpoint: PodDisruptionBudget {meta['name']} "
                "exists and is not this TaskRun's; delete or rename it to have the TaskRun's own"
            )
            log.warning(
                "Did not adopt PodDisruptionBudget %s/%s for TaskRun %s: %s",
                meta["namespace"],
                meta["name"],
                taskrun["metadata"]["name"],
                message,
            )
            self.events.post(taskrun, "Warning", REASON_BUDGET_TAKEN, message)
            return False
        except Exception as err:
            log.warning(
                "Creating PodDisruptionBudget %s/%s failed (%s): a drain will evict the pod without waiting for "
                "a checkpoint; grant poddisruptionbudgets get/create/delete (manifests/operator/rbac.yaml)",
                meta["namespace"],
                meta["name"],
                describe(err),
            )
            return False
        return True

    def _set_budget_floor(self, taskrun: Obj, value: int) -> None:
        """Opens or closes the budget's eviction window (reconcile's budget_min_available): written when
        it differs from what this process last wrote, so once after a restart, then at each change."""
        meta = taskrun["metadata"]
        key = (meta["namespace"], meta["name"])
        if self._budget_floors.get(key) == value:
            return
        budget = names.budget_name(meta["name"])
        try:
            if self.api.set_budget_min_available(meta["namespace"], budget, meta["uid"], value):
                log.info("Set minAvailable of PodDisruptionBudget %s/%s to %d", meta["namespace"], budget, value)
            self._budget_floors[key] = value  # gone or not ours: nothing to write until it changes
        except Exception as err:  # the next pass tries again: nothing was recorded
            log.warning("Setting minAvailable of PodDisruptionBudget %s/%s failed: %s", meta["namespace"], budget, err)

    def _resume_from(self, taskrun: Obj) -> str | None:
        """The resumeFrom source's URI: "" when there is none, None when its TaskRun does not exist."""
        source = (taskrun["spec"].get("checkpoint") or {}).get("resumeFrom") or {}
        if source.get("uri"):
            return str(source["uri"])
        if source.get("taskRun"):
            other = self.taskruns.get((taskrun["metadata"]["namespace"], source["taskRun"]))
            return None if other is None else checkpoint_uri(other, self.config)
        return ""

    def sync(self, key: Key) -> float | None:
        """One pass for one TaskRun; returns when it is due again (None: when something changes)."""
        namespace, name = key
        taskrun = self.taskruns.get(key)
        if taskrun is None or taskrun["metadata"].get("deletionTimestamp"):
            self.release_pods(namespace, name)
            metrics.forget(namespace, name)
            self.checkpoints.forget(key)
            self._budget_floors.pop(key, None)
            return None
        pods = self.pods.of_taskrun(namespace, name)
        listed = bool(unseen_attempts(taskrun, pods))
        if listed:
            # The cache lacks a pod (a gang's rank) of an attempt not yet counted: behind, or the pod
            # is gone. One LIST of the TaskRun's pods tells; only then may the pass count it gone.
            metrics.POD_REREADS.inc()
            pods = [trim_pod(p) for p in self.api.list_pods(namespace, name)]
            for pod in pods:
                self.pods.put(pod)
        now = datetime.datetime.now(datetime.UTC)
        checkpoints = self.checkpoints.view(key, taskrun, self.config)
        decision = decide(
            taskrun,
            pods,
            self.nodes,
            now,
            self.config,
            resume_from=self._resume_from(taskrun),
            node_info=lambda name: self.node_store.get(("", name)),
            checkpoints=checkpoints,
            listed=listed,
        )
        # The pass asked storage, and a read is on its way: this decision is dropped, and the
        # TaskRun passed again when the read lands (a second at most, and never while S3 hangs).
        if (hold := checkpoints.hold()) is not None:
            return hold
        checkpoints.explain(decision.status, now)
        by_name = {p["metadata"]["name"]: p for p in pods}
        if decision.create is not None:
            try:
                if decision.budget is not None and not self._ensure_budget(taskrun, decision.budget):
                    decision.status.pop("disruptionBudget", None)
                refusing = "the gang's Service"
                if decision.service is not None:
                    self.api.create_service(decision.service)
                # A gang's pods, in rank order. A pass that stops part way leaves the rest to the next
                # one: status still names the attempt before, and the missing ranks are created then.
                for pod in decision.pods:
                    refusing = f"pod {pod['metadata']['name']}"
                    self._keep(self.api.create_pod(pod))
            except NamespaceTerminating:
                # Nothing can be created in a namespace being deleted, and nothing needs to be: its
                # pods go first, and must not wait for an accounting that will never come.
                log.info("TaskRun %s/%s: its namespace is being deleted; letting go of its pods", namespace, name)
                self.release_pods(namespace, name)
                return None
            except Refused as err:
                log.warning("The API server refused %s: %s", refusing, err.message)
                decision = refused(taskrun, decision, err.status, err.message, now, refusing)
        if decision.create is not None:
            metrics.observe_creation(taskrun, pods, now)
            log.info(
                "Created pod %s for TaskRun %s/%s (attempt %s, %s)",
                ", ".join(p["metadata"]["name"] for p in decision.pods),
                namespace,
                name,
                decision.status.get("attempt"),
                decision.status.get("capacity"),
            )
        status_changed = changed(taskrun.get("status") or {}, decision.status)
        if status_changed:
            self.taskruns.put(trim_taskrun(self.api.write_status(taskrun, decision.status)))
            metrics.observe_status(taskrun, decision.status)
        # An Event goes with what it tells of: a status change, or an act on a pod (a pass that stops
        # a pod may change no status: a progress deadline found due again, a drain's checkpoint seen).
        if status_changed or decision.stop or decision.notify or decision.force_delete or decision.reschedule:
            for kind, reason, message in decision.events:
                self.events.post(taskrun, kind, reason, message)
        for pod_name, notice in decision.notify:
            log.info("Told pod %s/%s of %s", namespace, pod_name, notice)
            self._keep(self.api.notify_pod(by_name[pod_name], notice))
        for pod_name in decision.force_delete:
            log.info("Force-deleted pod %s/%s: its node is gone", namespace, pod_name)
            self.api.force_delete_pod(by_name[pod_name])
        for pod_name, reason in decision.stop:
            self._keep(self.api.stop_pod(by_name[pod_name], reason))
        for pod_name in decision.reschedule:
            log.info("Removing pod %s/%s: no spot capacity for it; its attempt moves to on-demand", namespace, pod_name)
            self._keep(self.api.remove_unscheduled_pod(by_name[pod_name], names.REASON_NO_SPOT_CAPACITY))
        for pod_name in decision.release:
            if pod_name not in decision.force_delete:
                self._keep(self.api.release_pod(by_name[pod_name]))
        if decision.budget_min_available is not None and not decision.delete_budget:
            self._set_budget_floor(taskrun, decision.budget_min_available)
        if decision.delete_budget:
            try:
                self.api.delete_budget(namespace, decision.delete_budget, taskrun["metadata"]["uid"])
            except Exception as err:  # the TaskRun owns it: the garbage collector deletes it with the TaskRun
                log.warning("Deleting PodDisruptionBudget %s/%s failed: %s", namespace, decision.delete_budget, err)
        if decision.delete_taskrun and self.delete_expired(taskrun):
            log.info("Deleted TaskRun %s/%s: ttlSecondsAfterFinished passed", namespace, name)
        return decision.requeue_after

    def delete_expired(self, taskrun: Obj) -> bool:
        """Deletes a TaskRun whose TTL the pass found passed, as the TTL-after-finished controller does:
        read fresh first (the cache may be behind a change of the TTL, or a new TaskRun of the same
        name), and delete only that one, by its UID. Conflict when what the TTL depends on changed:
        the next pass decides again on the new version."""
        meta = taskrun["metadata"]
        fresh = self.api.get_taskrun(meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("uid") != meta["uid"]:
            return False  # gone, or another TaskRun by now: its own passes decide for it
        if _expiry(fresh) != _expiry(taskrun):
            raise Conflict(f"TaskRun {meta['namespace']}/{meta['name']} changed since its TTL was found passed")
        return self.api.delete_taskrun(meta["namespace"], meta["name"], meta["uid"])
