"""The operator's only door to the Kubernetes API (kopf's own watch of TaskRuns aside).

Synchronous, through the `kubernetes` client, called from the controller's worker threads and the
informers' threads. Bodies go in and come out as dicts (`_preload_content=False`), never as
generated model objects. Every request but a watch waits for a token of one rate limiter per
process, as client-go's clients do (the Python client has none of its own).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from spotrun_operator import names
from spotrun_operator.leader import LeaseRefused

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


def describe(err: BaseException) -> str:
    """One line for a log: an ApiException as `HTTP 404 NotFound: <the Status's message>` (its str()
    is the whole HTTP response, headers and body), anything else as str()."""
    if not isinstance(err, ApiException):
        return str(err)
    try:
        status = json.loads(err.body or "{}")
    except ValueError:
        status = {}
    reason = (status.get("reason") if isinstance(status, dict) else None) or err.reason or ""
    message = _message(err)
    return f"HTTP {err.status} {reason}" + (f": {message}" if message and message != reason else "")


def _lease_error(err: ApiException) -> Exception:
    return LeaseRefused(403, _message(err)) if err.status == 403 else err


class Taken(Exception):
    """A child's name is held by an object that is not the TaskRun's (no owner reference with its UID):
    it is neither adopted nor ever deleted."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(f"{kind} {namespace}/{name} exists and is not this TaskRun's")
        self.kind, self.namespace, self.name = kind, namespace, name


def owned_by(obj: Obj, uid: str) -> bool:
    """Whether `obj` has an owner reference to the object with `uid`."""
    return bool(uid) and any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


def _owner_uid(body: Obj) -> str:
    """The UID of the owner a child is built with (its TaskRun's)."""
    return next((str(o["uid"]) for o in body["metadata"].get("ownerReferences") or [] if o.get("uid")), "")


def _only_if(uid: str, resource_version: str | None = None, **options: Any) -> Any:
    """DeleteOptions that delete the object only while it is the one read (its UID, and its
    resourceVersion when given): a namesake created since, or a change, is a 409, never a deletion."""
    return kubernetes.client.V1DeleteOptions(
        preconditions=kubernetes.client.V1Preconditions(uid=uid, resource_version=resource_version), **options
    )


class Gone(Exception):
    """A watch's resourceVersion is too old (HTTP 410): list again."""


class RateLimiter:
    """client-go's token bucket (flowcontrol.NewTokenBucketRateLimiter): `qps` requests a second on
    average and bursts of up to `burst`. `wait()` takes a token, sleeping until it is due; waiters
    are served in turn, each reserving the next token. qps 0: no limit."""

    def __init__(
        self,
        qps: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.qps, self.burst = qps, max(1, burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Takes the next token; returns how long to wait until it is due."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            self._sleep(delay)


REQUEST_TIMEOUT = (10, 60)  # seconds to connect, and to wait for an answer


class _ThrottledClient(kubernetes.client.ApiClient):  # type: ignore[misc]
    """The kubernetes ApiClient with every request but a watch through a RateLimiter."""

    def __init__(self, limiter: RateLimiter, configuration: Any = None) -> None:
        super().__init__(configuration)
        self.limiter = limiter

    def request(self, method: str, url: str, query_params: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not any(k == "watch" and str(v).lower() == "true" for k, v in query_params or []):
            self.limiter.wait()
        if kwargs.get("_request_timeout") is None:  # the client's default is to wait for ever
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return super().request(method, url, query_params, *args, **kwargs)


def _configuration(pool: int) -> Any:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    configuration = kubernetes.client.Configuration.get_default_copy()
    # One connection per worker and per watch; the default (5 per CPU) is too few on a small node.
    configuration.connection_pool_maxsize = pool
    return configuration


# What the informers list and watch: (path, namespaced).
PATHS = {
    "taskruns": (f"/apis/{names.API_VERSION}/{names.PLURAL}", True),
    "pods": ("/api/v1/pods", True),
    "nodes": ("/api/v1/nodes", False),
}


class Api:
    def __init__(
        self, client: Any = None, *, qps: float = 200.0, burst: int = 300, pool: int = 32, user_agent: str = ""
    ) -> None:
        if client is None:
            client = _ThrottledClient(RateLimiter(qps, burst), _configuration(pool))
            # The replica's name in the apiserver's audit log and metrics, beside the ServiceAccount's.
            client.user_agent = user_agent or names.MANAGED_BY
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)
        self.policy = kubernetes.client.PolicyV1Api(client)

    def _raw(self, path: str, query: list[tuple[str, Any]], timeout: Any = None) -> Any:
        return self.client.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )

    @staticmethod
    def _path(kind: str, namespace: str | None) -> str:
        path, namespaced = PATHS[kind]
        if namespace and namespaced:
            prefix, _, plural = path.rpartition("/")
            return f"{prefix}/namespaces/{namespace}/{plural}"
        return path

    # ----- lists and watches (the informers) -------------------------------------------------------

    def list_objects(
        self,
        kind: str,
        namespace: str | None = None,
        selector: str = "",
        page: int = 500,
        trim: Callable[[Obj], Obj] | None = None,
    ) -> tuple[list[Obj], str]:
        """Every object of `kind` (in `namespace`, or everywhere), `page` at a time, each page passed
        through `trim` as it arrives (a list of thousands is never held as the server sent it: 5,000
        pods are about 250 MiB decoded); and the list's resourceVersion, from which a watch goes on."""
        items: list[Obj] = []
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", page)]
            if selector:
                query.append(("labelSelector", selector))
            if token:
                query.append(("continue", token))
            try:
                answer = self._json(self._raw(self._path(kind, namespace), query, timeout=(10, 120)))
            except ApiException as err:
                if err.status == 410 and token:  # the continue token expired: start over
                    items, token = [], ""
                    continue
                raise
            meta = answer.get("metadata") or {}
            items.extend(map(trim, answer.get("items") or []) if trim else answer.get("items") or [])
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    def watch_objects(
        self, kind: str, namespace: str | None, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, Obj]]:
        """(type, object) of every change after `resource_version`, bookmarks included, until the
        server ends the watch after `timeout` seconds. Raises Gone when the version is too old."""
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout),
        ]
        if selector:
            query.append(("labelSelector", selector))
        try:
            response = self._raw(self._path(kind, namespace), query, timeout=(10, timeout + 30))
        except ApiException as err:
            if err.status == 410:
                raise Gone(str(err.reason)) from err
            raise
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    code = (event.get("object") or {}).get("code")
                    if code == 410:
                        raise Gone((event.get("object") or {}).get("message", "expired"))
                    raise ApiException(status=code, reason=(event.get("object") or {}).get("message"))
                yield event["type"], event["object"]
        finally:
            response.close()
            response.release_conn()

    # ----- the leader's Lease -------------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str, timeout: float) -> Obj | None:
        """The Lease, or None; the request ends within `timeout` seconds in all. LeaseRefused on a 403."""
        try:
            answer = self.coordination.read_namespaced_lease(
                name, namespace, _preload_content=False, _request_timeout=timeout
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise _lease_error(err) from err
        return self._json(answer)

    def write_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        """Creates the Lease (no resourceVersion in `body`) or replaces it (with one), within `timeout`
        seconds in all: Conflict when another replica wrote it first, LeaseRefused when it cannot be
        written as the cluster stands (a 403, or a 404 on create: no such namespace)."""
        name = body["metadata"]["name"]
        try:
            if body["metadata"].get("resourceVersion"):
                answer = self.coordination.replace_namespaced_lease(
                    name, namespace, body, _preload_content=False, _request_timeout=timeout
                )
            else:
                answer = self.coordination.create_namespaced_lease(
                    namespace, body, _preload_content=False, _request_timeout=timeout
                )
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"lease {namespace}/{name} was written by another replica") from err
            if err.status == 404 and not body["metadata"].get("resourceVersion"):
                raise LeaseRefused(404, _message(err)) from err
            raise _lease_error(err) from err
        return self._json(answer)

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

    def delete_taskrun(self, namespace: str, name: str, uid: str) -> bool:
        """Deletes the TaskRun with `uid` (the TTL after it finished); False when it is gone, or the
        name now holds another TaskRun (a 409 on the UID precondition: not this one to delete)."""
        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                namespace,
                names.PLURAL,
                name,
                body=_only_if(uid, propagation_policy="Background"),
                _preload_content=False,
            )
        except ApiException as err:
            if err.status in (404, 409):
                return False
            raise
        return True

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

    def _annotate_pod(self, pod: Obj, key: str, value: str) -> Obj | None:
        """Sets one annotation on the pod as it was read: the merge patch carries the pod's
        resourceVersion, so a pod that changed since (it ended on its own, say) is a Conflict and the
        pass starts over from fresh state, instead of an annotation that would recast how it ended.
        Returns the pod as patched; None when it is gone."""
        meta = pod["metadata"]
        patch = {"metadata": {"annotations": {key: value}, "resourceVersion": meta["resourceVersion"]}}
        try:
            return self._json(
                self.core.patch_namespaced_pod(
                    meta["name"],
                    meta["namespace"],
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"pod {meta['namespace']}/{meta['name']} changed since it was read") from err
            if err.status != 404:
                raise
        return None

    def stop_pod(self, pod: Obj, reason: str) -> Obj | None:
        """Deletes gracefully, annotated first so the outcome reads as stopped, not interrupted; both
        only while the pod is as read (Conflict when it changed; see _annotate_pod). Returns the pod as
        the deletion left it (None when it is gone, or the name holds another pod by now)."""
        meta = pod["metadata"]
        if self._annotate_pod(pod, names.ANNOTATION_STOPPED_BY, reason) is None:
            return None
        try:
            return self._json(
                self.core.delete_namespaced_pod(
                    meta["name"], meta["namespace"], body=_only_if(meta["uid"]), _preload_content=False
                )
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise
        return None

    def remove_unscheduled_pod(self, pod: Obj, reason: str) -> Obj | None:
        """Deletes a pod the scheduler has not placed (annotated with `reason` first, while it is as
        read: Conflict when it changed), only if it is still not placed: the delete is conditional on
        the resourceVersion the annotation left, so a binding in between refuses it. Returns the pod as
        the deletion left it; None when it was bound (it keeps running, and its annotation is ignored:
        it ran), changed, or is gone."""
        meta = pod["metadata"]
        patched = self._annotate_pod(pod, names.ANNOTATION_STOPPED_BY, reason)
        if patched is None or (patched.get("spec") or {}).get("nodeName"):
            return None
        options = _only_if(meta["uid"], patched["metadata"]["resourceVersion"])
        try:
            return self._json(
                self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=options, _preload_content=False)
            )
        except ApiException as err:
            if err.status not in (404, 409):  # 409: it changed after the annotation; the next pass looks again
                raise
        return None

    def notify_pod(self, pod: Obj, notice: str) -> Obj | None:
        """Sets the pod's notice annotation (the SDK sees it through a downward-API volume) while the pod
        is as read (Conflict when it changed: a notice on a pod that already failed would count its
        failure as an interruption); returns the pod as patched, None when it is gone."""
        return self._annotate_pod(pod, names.ANNOTATION_NOTICE, notice)

    def create_budget(self, body: Obj) -> None:
        """Creates the TaskRun's PodDisruptionBudget; one of the TaskRun's that exists already is kept.
        Raises Taken when the name holds a budget of another owner (a user's, say): it is not adopted."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            self.policy.create_namespaced_pod_disruption_budget(namespace, body, _preload_content=False)
            return
        except ApiException as err:
            if err.status == 403 and "NamespaceTerminating" in str(err.body):
                raise NamespaceTerminating(namespace) from err
            if err.status != 409:
                raise
        existing = self._json(
            self.policy.read_namespaced_pod_disruption_budget(name, namespace, _preload_content=False)
        )
        if not owned_by(existing, _owner_uid(body)):
            raise Taken("PodDisruptionBudget", namespace, name)

    def set_budget_min_available(self, namespace: str, name: str, owner_uid: str, value: int) -> bool:
        """Sets minAvailable of the TaskRun's PodDisruptionBudget (the eviction window opens at 0 and
        closes at the gang's size); False when it is gone or not the TaskRun's (owner `owner_uid`),
        which is then left alone. The write carries the resourceVersion read, so that it never lands
        on another object of the same name created meanwhile."""
        try:
            read = self.policy.read_namespaced_pod_disruption_budget(name, namespace, _preload_content=False)
            body = self._json(read)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        if owner_uid not in {o.get("uid") for o in body["metadata"].get("ownerReferences") or []}:
            return False
        if body.get("spec", {}).get("minAvailable") == value:
            return True
        patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "spec": {"minAvailable": value}}
        try:
            self.policy.patch_namespaced_pod_disruption_budget(name, namespace, patch, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def create_service(self, body: Obj) -> None:
        """Creates a gang's headless Service; one of the TaskRun's that exists already is kept. Raises
        Refused when the API server will not have it or another owner's holds the name."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            self.core.create_namespaced_service(namespace, body)
            return
        except ApiException as err:
            if err.status == 403 and "NamespaceTerminating" in str(err.body):
                raise NamespaceTerminating(namespace) from err
            if err.status in (400, 403, 422):
                raise Refused(err.status, f"Service {name}: {_message(err)}") from err
            if err.status != 409:
                raise
        existing = self._json(self.core.read_namespaced_service(name, namespace, _preload_content=False))
        if not owned_by(existing, _owner_uid(body)):
            raise Refused(
                409,
                f"Service {name} exists and is not this TaskRun's; the gang's pods need that name: "
                "delete or rename that Service (the run waits for it)",
            )

    def delete_budget(self, namespace: str, name: str, owner: str) -> bool:
        """Deletes the PodDisruptionBudget `name` only if it is the TaskRun's (an owner reference to
        `owner`, its UID), with that budget's UID as a precondition; False when it is gone, or not
        the TaskRun's (a user's budget of the same name is never deleted)."""
        try:
            existing = self._json(
                self.policy.read_namespaced_pod_disruption_budget(name, namespace, _preload_content=False)
            )
            if not owned_by(existing, owner):
                log.warning("Kept PodDisruptionBudget %s/%s: it is not the TaskRun's", namespace, name)
                return False
            self.policy.delete_namespaced_pod_disruption_budget(
                name, namespace, body=_only_if(existing["metadata"]["uid"]), _preload_content=False
            )
        except ApiException as err:
            if err.status in (404, 409):  # 409: replaced since the read, by a budget that is not this one
                return False
            raise
        return True

    def release_pod(self, pod: Obj) -> Obj | None:
        """Removes Spotrun's accounting finalizer (with the pod's resourceVersion); returns the pod
        as patched (None when there was nothing to do, it is gone, or it changed meanwhile)."""
        finalizers = [f for f in pod["metadata"].get("finalizers") or [] if f != names.POD_FINALIZER]
        if len(finalizers) == len(pod["metadata"].get("finalizers") or []):
            return None
        patch = {
            "metadata": {
                "finalizers": finalizers or None,
                "resourceVersion": pod["metadata"]["resourceVersion"],
            }
        }
        try:
            return self._json(
                self.core.patch_namespaced_pod(
                    pod["metadata"]["name"],
                    pod["metadata"]["namespace"],
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )
        except ApiException as err:
            if err.status == 409:  # the pod changed since it was listed: the next pass releases it
                log.info(
                    "Releasing pod %s/%s conflicted; the next pass retries",
                    pod["metadata"]["namespace"],
                    pod["metadata"]["name"],
                )
                return None
            if err.status != 404:
                raise
        return None

    def force_delete_pod(self, pod: Obj) -> None:
        """For a pod whose node is gone: nothing else will ever finish deleting it. Only that pod (its
        UID): a namesake created since is not touched."""
        self.release_pod(pod)
        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body=_only_if(meta["uid"], grace_period_seconds=0),
                _preload_content=False,
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    # ----- events -------------------------------------------------------------------------

    def event(self, taskrun: Obj, kind: str, reason: str, message: str) -> None:
        """Posts an Event now, and never raises: events are for people, never fail a handler over one."""
        try:
            self.post_event(taskrun, kind, reason, message)
        except Exception as err:
            meta = taskrun["metadata"]
            text = f"HTTP {err.status} {err.reason}" if isinstance(err, ApiException) else str(err)
            log.warning("Posting event %s for TaskRun %s/%s failed: %s", reason, meta["namespace"], meta["name"], text)

    def post_event(self, taskrun: Obj, kind: str, reason: str, message: str) -> None:
        """Posts an Event about the TaskRun; raises what the request raised (the Events thread counts it)."""
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
        self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)

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


def lease_api(user_agent: str) -> Api:
    """The leader election's own client: its own rate limiter, so that a renewal never waits behind
    the workers' requests; and no urllib3 retries, so that the timeout each request is given (the
    time left to the renew deadline) bounds it whole: a retry would start a fresh timeout."""
    configuration = _configuration(pool=2)
    configuration.retries = 0
    client = _ThrottledClient(RateLimiter(5, 10), configuration)
    client.user_agent = user_agent
    return Api(client)
