"""Thin kopf handlers: kopf's settings, and the deletion of a TaskRun's checkpoints when asked.

Everything else (watching TaskRuns, pods and Nodes, reconciling) is the controller's; kopf runs
in the leader only (see __main__). The on-delete handler is filtered on the delete-checkpoints
annotation, so kopf puts its finalizer on those TaskRuns only: the others are deleted at once, and
the controller lets go of their pods when it sees them go.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from spotrun import SpotrunError, open_storage

from spotrun_operator import names
from spotrun_operator.config import Config
from spotrun_operator.controller import Controller
from spotrun_operator.podbuild import assigned_uri, checkpoint_uri

Obj = dict[str, Any]
log = logging.getLogger("spotrun.operator")

# How long the delete-checkpoints annotation keeps a deleted TaskRun while S3 fails.
DELETE_TIMEOUT = datetime.timedelta(minutes=5)

_state: dict[str, Any] = {}


def use(controller: Controller, config: Config) -> None:
    """What the handlers work with; set by __main__ before kopf runs."""
    _state.update(controller=controller, config=config)


def controller() -> Controller:
    result: Controller = _state["controller"]
    return result


def config() -> Config:
    result: Config = _state["config"]
    return result


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps each object's last handled copy in an annotation to tell creations from updates;
    Spotrun has no creation or update handler (its controller is level-based), so nothing is kept:
    no annotation, and no PATCH of every TaskRun kopf sees."""

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Spotrun's own names for kopf's bookkeeping, so two operators built on kopf never collide.
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PROGRESS_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Events are posted by the controller on transitions only; kopf's per-handler chatter is noise.
    settings.posting.level = logging.WARNING
    # A stuck watch is noticed within a minute instead of kopf's default of never.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # The deletion handler runs in this pool: a few at a time is plenty.
    settings.execution.max_workers = 4
    # kopf starts a worker per object it sees; a leader that starts on thousands of TaskRuns would
    # hold them all at once. Its only handler is the deletion of annotated ones: 100 workers, each
    # gone 1 s after its object's last event, keep up (100 objects a second) in bounded memory.
    settings.queueing.worker_limit = 100
    settings.queueing.idle_timeout = 1.0
    log.info("kopf started: deleting checkpoints of TaskRuns annotated %s=true", names.ANNOTATION_DELETE_CHECKPOINTS)


@kopf.on.delete(names.GROUP, names.VERSION, names.PLURAL, annotations={names.ANNOTATION_DELETE_CHECKPOINTS: "true"})
def taskrun_deleted(body: kopf.Body, runtime: datetime.timedelta, **_: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    # The pods go with their owner (garbage collector); the accounting finalizer must not hold them.
    controller().release_pods(namespace, name)
    # But the owner goes only after this handler: a pod still running would commit after the
    # deletion (on SIGTERM, too). Its checkpoints are deleted once every pod has ended.
    running = controller().stop_pods(namespace, name)
    if running and runtime < DELETE_TIMEOUT:
        raise kopf.TemporaryError(f"waiting for {running} pod(s) to end before deleting the checkpoints", delay=2)
    _delete_checkpoints({"metadata": dict(body["metadata"]), "spec": dict(body["spec"])}, runtime)


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
        controller().api.event(taskrun, "Warning", "CheckpointsKept", message)
        return
    try:
        storage = open_storage(uri)
        storage.delete([key for key, _ in storage.list("")])
        for key, upload in storage.list_uploads(""):  # parts of uploads cut short, which no listing shows
            storage.abort_upload(key, upload)
    except SpotrunError as err:
        if runtime < DELETE_TIMEOUT:
            raise kopf.TemporaryError(f"deleting the checkpoints under {uri} failed: {err}", delay=10) from err
        message = f"gave up deleting the checkpoints under {uri} after {runtime.total_seconds():.0f}s: {err}"
        log.warning("TaskRun %s/%s: %s", meta["namespace"], meta["name"], message)
        controller().api.event(taskrun, "Warning", "CheckpointDeletionFailed", message)
        return
    log.info(
        "Deleted the checkpoints of TaskRun %s/%s under %s, as its annotation asked",
        meta["namespace"],
        meta["name"],
        uri,
    )
