"""Thin kopf handlers: read the TaskRun and its pods, ask `reconcile.decide`, apply the decision.

Every handler is a plain `def`: the `kubernetes` client blocks, and kopf runs sync handlers in
its thread pool (kopf docs, async.rst). A per-TaskRun lock keeps the pod events, TaskRun events
and the timer of one TaskRun from deciding at the same time.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from spotrun import Checkpoint, SpotrunError, open_storage

from spotrun_operator import metrics, names
from spotrun_operator.api import Api, Conflict, NamespaceTerminating, Refused, transient
from spotrun_operator.config import Config
from spotrun_operator.locks import KeyedLocks
from spotrun_operator.podbuild import assigned_uri, checkpoint_uri
from spotrun_operator.reconcile import decide, refused
from spotrun_operator.status import changed

Obj = dict[str, Any]
log = logging.getLogger("spotrun.operator")

# How long the delete-checkpoints annotation keeps a deleted TaskRun while S3 fails.
DELETE_TIMEOUT = datetime.timedelta(minutes=5)

_state: dict[str, Any] = {}
_locks = KeyedLocks()


def api() -> Api:
    if "api" not in _state:
        _state["api"] = Api()
    result: Api = _state["api"]
    return result


def config() -> Config:
    if "config" not in _state:
        _state["config"] = Config.from_env()
    result: Config = _state["config"]
    return result


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Spotrun's own names for kopf's bookkeeping, so two operators built on kopf never collide.
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PROGRESS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.PROGRESS_PREFIX, key="last-handled-configuration"
    )
    # Events are posted by the API module on transitions only; kopf's per-handler chatter is noise.
    settings.posting.level = logging.WARNING
    # A stuck watch is noticed within a minute instead of kopf's default of never.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    # Sync handlers run in this pool; one reconcile per TaskRun at a time, several TaskRuns at once.
    settings.execution.max_workers = 20
    cfg = config()
    metrics.start(cfg.metrics_port)
    log.info("Started with capacity profile %s, checkpoint prefix %r", cfg.profile_name, cfg.checkpoint_prefix)


def _resume_from(taskrun: Obj) -> str | None:
    """The resumeFrom source's URI: "" when there is none, None when its TaskRun does not exist (decide
    then keeps the one it resolved before, or waits with a condition saying so)."""
    source = (taskrun["spec"].get("checkpoint") or {}).get("resumeFrom") or {}
    if source.get("uri"):
        return str(source["uri"])
    if source.get("taskRun"):
        other = api().get_taskrun(taskrun["metadata"]["namespace"], source["taskRun"])
        return None if other is None else checkpoint_uri(other, config())
    return ""


def _latest_checkpoint(uri: str) -> Obj:
    try:
        info = Checkpoint(open_storage(uri, read_only=True)).latest()
    except Exception as err:  # the status is informative; a storage hiccup must not stop a pass
        log.warning("Reading the newest checkpoint of %s failed: %s", uri, err)
        return {}
    if info is None:
        return {}
    return {"id": info.id, "step": info.step, "attempt": info.attempt, "time": info.time.isoformat(), "size": info.size}


def reconcile(namespace: str, name: str) -> None:
    """One pass for one TaskRun. What will pass is retried soon, not after kopf's default minute."""
    try:
        with _locks.hold((namespace, name)):
            _reconcile(namespace, name)
    except NamespaceTerminating:
        log.info("Skipped TaskRun %s/%s: its namespace is being deleted", namespace, name)
    except Exception as err:
        if transient(err):
            raise kopf.TemporaryError(
                f"retrying shortly: {err}", delay=0.5 if isinstance(err, Conflict) else 2
            ) from err
        raise


def _reconcile(namespace: str, name: str) -> None:
    taskrun = api().get_taskrun(namespace, name)
    pods = api().list_pods(namespace, name)
    if taskrun is None or taskrun["metadata"].get("deletionTimestamp"):
        for pod in pods:  # the owner is gone: nothing will count these pods any more
            api().release_pod(pod)
        metrics.forget(namespace, name)
        return
    now = datetime.datetime.now(datetime.UTC)
    decision = decide(taskrun, pods, api().nodes(), now, config(), resume_from=_resume_from(taskrun))
    by_name = {p["metadata"]["name"]: p for p in pods}
    if decision.create is not None:
        try:
            api().create_pod(decision.create)
        except Refused as err:
            log.warning("The API server refused pod %s: %s", decision.create["metadata"]["name"], err.message)
            decision = refused(taskrun, decision, err.status, err.message, now)
    if decision.create is not None:
        metrics.observe_creation(taskrun, pods, now)
        log.info(
            "Created pod %s for TaskRun %s/%s (attempt %s, %s)",
            decision.create["metadata"]["name"],
            namespace,
            name,
            decision.status.get("attempt"),
            decision.status.get("capacity"),
        )
    if decision.refresh_checkpoint:
        uri = decision.status.get("checkpoint", {}).get("uri", "")
        if uri:
            kept = {k: v for k, v in decision.status["checkpoint"].items() if k == "resumeFrom"}
            decision.status["checkpoint"] = {"uri": uri, **kept, **_latest_checkpoint(uri)}
    if changed(taskrun.get("status") or {}, decision.status):
        api().write_status(taskrun, decision.status)
        for kind, reason, message in decision.events:
            api().event(taskrun, kind, reason, message)
        metrics.observe_status(taskrun, decision.status)
    for pod_name in decision.force_delete:
        log.info("Force-deleted pod %s/%s: its node is gone", namespace, pod_name)
        api().force_delete_pod(by_name[pod_name])
    for pod_name, reason in decision.stop:
        api().stop_pod(namespace, pod_name, reason)
    for pod_name in decision.release:
        if pod_name not in decision.force_delete:
            api().release_pod(by_name[pod_name])
    if decision.delete_taskrun:
        log.info("Deleted TaskRun %s/%s: ttlSecondsAfterFinished passed", namespace, name)
        api().delete_taskrun(namespace, name)


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
def taskrun_changed(type: str, body: kopf.Body, **_: Any) -> None:  # noqa: A002 - kopf's keyword
    if type == "DELETED":
        metrics.forget(body["metadata"]["namespace"], body["metadata"]["name"])
    else:
        reconcile(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.event("", "v1", "pods", labels={names.LABEL_TASKRUN: kopf.PRESENT})
def pod_changed(body: kopf.Body, **_: Any) -> None:
    # The label value may be shortened (names.taskrun_label); the owner reference has the full name.
    taskrun = names.taskrun_of(body["metadata"])
    if taskrun is not None:
        reconcile(body["metadata"]["namespace"], taskrun)


@kopf.timer(names.GROUP, names.VERSION, names.PLURAL, interval=2.0, sharp=False, backoff=2)
def tick(body: kopf.Body, **_: Any) -> None:
    # Backoff delays, deadlines and TTLs end without any event: the timer notices.
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.delete(names.GROUP, names.VERSION, names.PLURAL)
def taskrun_deleted(body: kopf.Body, runtime: datetime.timedelta, **_: Any) -> None:
    # The pods go with their owner (garbage collector); the accounting finalizer must not hold them.
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for pod in api().list_pods(namespace, name):
        api().release_pod(pod)
    metrics.forget(namespace, name)
    annotations = body["metadata"].get("annotations") or {}
    if annotations.get(names.ANNOTATION_DELETE_CHECKPOINTS) == "true":
        _delete_checkpoints({"metadata": dict(body["metadata"]), "spec": dict(body["spec"])}, runtime)
        return
    log.info("Released the pods of deleted TaskRun %s/%s; its checkpoints are kept", namespace, name)


def _delete_checkpoints(taskrun: Obj, runtime: datetime.timedelta) -> None:
    """What the delete-checkpoints annotation asks, only under the prefix the operator assigned: a
    TaskRun's author chooses spec.checkpoint.uri, and must not be able to make the operator delete any
    prefix its credentials reach. A deletion that keeps failing gives up after DELETE_TIMEOUT with a
    Warning Event, so that the TaskRun's deletion is never blocked for ever."""
    meta = taskrun["metadata"]
    uri, assigned = checkpoint_uri(taskrun, config()), assigned_uri(taskrun, config())
    if uri != assigned:
        message = (
            f"not deleting the checkpoints under {uri}: spec.checkpoint.uri is not the prefix the operator "
            f"assigned ({assigned or 'none configured'}), and it deletes only under that one; delete them "
            "with your own credentials"
        )
        log.warning("TaskRun %s/%s: %s", meta["namespace"], meta["name"], message)
        api().event(taskrun, "Warning", "CheckpointsKept", message)
        return
    try:
        storage = open_storage(uri)
        storage.delete([key for key, _ in storage.list("")])
    except SpotrunError as err:
        if runtime < DELETE_TIMEOUT:
            raise kopf.TemporaryError(f"deleting the checkpoints under {uri} failed: {err}", delay=10) from err
        message = f"gave up deleting the checkpoints under {uri} after {runtime.total_seconds():.0f}s: {err}"
        log.warning("TaskRun %s/%s: %s", meta["namespace"], meta["name"], message)
        api().event(taskrun, "Warning", "CheckpointDeletionFailed", message)
        return
    log.info(
        "Deleted the checkpoints of TaskRun %s/%s under %s, as its annotation asked",
        meta["namespace"],
        meta["name"],
        uri,
    )
