"""The operator's only door to the Kubernetes API (kopf's own watching aside).

Synchronous, through the `kubernetes` client: callers are plain `def` kopf handlers, which kopf
runs in its thread pool, so nothing here blocks the event loop. Bodies go in and come out as
dicts (`_preload_content=False`), never as generated model objects.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from spotrun_operator import names

Obj = dict[str, Any]
log = logging.getLogger("spotrun.api")


class Conflict(Exception):
    """The object changed since it was read; the next pass starts over from a fresh read."""


def transient(err: BaseException) -> bool:
    """Whether an error from this module will likely pass on its own (conflict, throttling, 5xx)."""
    return isinstance(err, Conflict) or (
        isinstance(err, ApiException) and (err.status in (409, 429) or (err.status or 0) >= 500)
    )


class NamespaceTerminating(Exception):
    """The namespace is being deleted: nothing new can be created in it, and nothing needs to be."""


class Refused(Exception):
    """The API server refused to create a pod (quota, PodSecurity, a webhook, an invalid template)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _message(err: ApiException) -> str:
    """The API server's own message from an error's Status body, else the error's text."""
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        return str(err.body or err.reason)
    return str(body.get("message") or err.reason)


class Api:
    def __init__(self, client: Any = None) -> None:
        if client is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            client = kubernetes.client.ApiClient()
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    @staticmethod
    def _json(response: Any) -> Obj:
        data: Obj = json.loads(response.data or b"{}")
        return data

    # ----- TaskRuns -------------------------------------------------------------------------------

    def get_taskrun(self, namespace: str, name: str) -> Obj | None:
        try:
            return self._json(
                self.custom.get_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.PLURAL, name, _preload_content=False
                )
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def write_status(self, taskrun: Obj, status: Obj) -> Obj:
        """Replaces the status with the resourceVersion it was computed from (Conflict when stale)."""
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {
                "name": taskrun["metadata"]["name"],
                "namespace": taskrun["metadata"]["namespace"],
                "resourceVersion": taskrun["metadata"]["resourceVersion"],
            },
            "status": status,
        }
        try:
            return self._json(
                self.custom.replace_namespaced_custom_object_status(
                    names.GROUP,
                    names.VERSION,
                    taskrun["metadata"]["namespace"],
                    names.PLURAL,
                    taskrun["metadata"]["name"],
                    body,
                    _preload_content=False,
                )
            )
        except ApiException as err:
            if err.status in (404, 409):
                raise Conflict(str(err.reason)) from err
            raise

    def delete_taskrun(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, name, propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # ----- pods ----------------------------------------------------------------------------------------

    def list_pods(self, namespace: str, taskrun: str) -> list[Obj]:
        answer = self._json(
            self.core.list_namespaced_pod(
                namespace,
                label_selector=f"{names.LABEL_TASKRUN}={names.taskrun_label(taskrun)}",
                _preload_content=False,
            )
        )
        pods: list[Obj] = answer.get("items", [])
        return pods

    def create_pod(self, body: Obj) -> Obj:
        """Creates the pod, or returns the one of that name that exists if an earlier pass of the same
        TaskRun made it. Raises Refused when the API server will not have it, and Conflict when the
        name is taken by a pod of another owner (an earlier TaskRun of the same name)."""
        namespace = body["metadata"]["namespace"]
        try:
            return self._json(self.core.create_namespaced_pod(namespace, body, _preload_content=False))
        except ApiException as err:
            if err.status == 403 and "NamespaceTerminating" in str(err.body):
                raise NamespaceTerminating(namespace) from err
            if err.status in (400, 403, 422):
                raise Refused(err.status, _message(err)) from err
            if err.status != 409:
                raise
        existing = self._json(
            self.core.read_namespaced_pod(body["metadata"]["name"], namespace, _preload_content=False)
        )
        owner = {o.get("uid") for o in body["metadata"].get("ownerReferences") or []}
        if not owner & {o.get("uid") for o in existing["metadata"].get("ownerReferences") or []}:
            raise Conflict(f"pod {namespace}/{body['metadata']['name']} exists and belongs to another owner")
        return existing

    def stop_pod(self, namespace: str, name: str, reason: str) -> None:
        """Deletes gracefully, annotated first so the outcome reads as stopped, not interrupted."""
        try:
            self.core.patch_namespaced_pod(
                name, namespace, {"metadata": {"annotations": {names.ANNOTATION_STOPPED_BY: reason}}}
            )
            self.core.delete_namespaced_pod(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    def release_pod(self, pod: Obj) -> None:
        """Removes Spotrun's accounting finalizer (with the pod's resourceVersion)."""
        finalizers = [f for f in pod["metadata"].get("finalizers") or [] if f != names.POD_FINALIZER]
        if len(finalizers) == len(pod["metadata"].get("finalizers") or []):
            return
        patch = {
            "metadata": {
                "finalizers": finalizers or None,
                "resourceVersion": pod["metadata"]["resourceVersion"],
            }
        }
        try:
            self.core.patch_namespaced_pod(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as err:
            if err.status == 409:  # the pod changed since it was listed: the next pass releases it
                log.info(
                    "Releasing pod %s/%s conflicted; the next pass retries",
                    pod["metadata"]["namespace"],
                    pod["metadata"]["name"],
                )
                return
            if err.status != 404:
                raise

    def force_delete_pod(self, pod: Obj) -> None:
        """For a pod whose node is gone: nothing else will ever finish deleting it."""
        self.release_pod(pod)
        try:
            self.core.delete_namespaced_pod(
                pod["metadata"]["name"], pod["metadata"]["namespace"], grace_period_seconds=0
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # ----- nodes and events -------------------------------------------------------------------------

    def nodes(self) -> dict[str, bool]:
        """Every Node's name, and whether its Ready condition is True (False, Unknown: its kubelet is not heard)."""
        answer = self._json(self.core.list_node(_preload_content=False))
        return {
            n["metadata"]["name"]: any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions") or []
            )
            for n in answer.get("items", [])
        }

    def event(self, taskrun: Obj, kind: str, reason: str, message: str) -> None:
        meta = taskrun["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": names.event_name(meta["name"], uuid.uuid4().hex[:12]), "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": names.MANAGED_BY,
            "reportingInstance": names.MANAGED_BY,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as err:  # events are for people: never fail a pass over one
            log.warning("Posting event %s for %s/%s failed: %s", reason, meta["namespace"], meta["name"], err.reason)

    # ----- uninstall cleanup (`python -m spotrun_operator uninstall-cleanup`) ---------------------

    def list_taskruns(self, namespace: str | None) -> list[Obj]:
        """Every TaskRun in `namespace`, or in the whole cluster when it is None."""
        if namespace is None:
            response = self.custom.list_cluster_custom_object(
                names.GROUP, names.VERSION, names.PLURAL, _preload_content=False
            )
        else:
            response = self.custom.list_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, _preload_content=False
            )
        items: list[Obj] = self._json(response).get("items", [])
        return items

    def list_taskrun_pods(self, namespace: str | None) -> list[Obj]:
        """Every pod of any TaskRun (podbuild labels each one) in `namespace`, or in the whole cluster."""
        if namespace is None:
            response = self.core.list_pod_for_all_namespaces(label_selector=names.LABEL_TASKRUN, _preload_content=False)
        else:
            response = self.core.list_namespaced_pod(
                namespace, label_selector=names.LABEL_TASKRUN, _preload_content=False
            )
        items: list[Obj] = self._json(response).get("items", [])
        return items

    def release_taskrun(self, taskrun: Obj) -> bool:
        """Removes Spotrun's (kopf's) finalizer, with the TaskRun's resourceVersion; False on a conflict."""
        meta = taskrun["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != names.FINALIZER]
        patch = {"metadata": {"finalizers": finalizers or None, "resourceVersion": meta["resourceVersion"]}}
        try:
            self.custom.patch_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                meta["namespace"],
                names.PLURAL,
                meta["name"],
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as err:
            if err.status == 409:
                return False
            if err.status != 404:
                raise
        return True

    def scale_deployment_to_zero(self, namespace: str, name: str) -> dict[str, str] | None:
        """Scales the Deployment to 0 and returns its pods' selector; None when there is no such Deployment."""
        apps = kubernetes.client.AppsV1Api(self.client)
        try:
            answer = self._json(
                apps.patch_namespaced_deployment(
                    name,
                    namespace,
                    {"spec": {"replicas": 0}},
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        selector: dict[str, str] = answer["spec"]["selector"].get("matchLabels") or {}
        return selector

    def count_pods(self, namespace: str, labels: dict[str, str]) -> int:
        """How many pods (terminating ones included) carry all of `labels`."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        answer = self._json(self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False))
        return len(answer.get("items", []))
