"""What a TaskRun's spec may hold that its CRD's schema and CEL rules cannot refuse, checked before an
attempt's pods are built: each problem names the field and what to write instead. Pure.

The CRD leaves the pod template open (x-kubernetes-preserve-unknown-fields: a pod spec has hundreds
of fields), cannot see the operator's configuration (its default retries) and cannot see the names
the operator gives what it adds to each pod. A spec that fails here can never run: the run fails at
once with the first problem, before anything is created, rather than crashing every pass, making a
pod that cannot start, or leaving the API server to refuse a pod after its budget and Service exist.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from spotrun_operator import memory, names, podbuild
from spotrun_operator.config import Config

Obj = dict[str, Any]
TEMPLATE = "spec.template.spec"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123, at most 63 characters
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # at most 253
_CHECKPOINT_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")  # the CRD's checkpoint.uri
_SOURCE_URI = re.compile(r"^s3://[^/\s]+(/\S*)?$")  # resumeFrom.uri: another run's, any bucket the SDK reads
_QUANTITY_HINT = "write a quantity such as 512Mi, 2Gi, 1.5 or 500m"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One field that can never work: its path, what is wrong with it and what to write instead."""

    reason: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def problems(taskrun: Obj, config: Config) -> list[Problem]:
    """Every problem of the TaskRun's spec, in the order of its fields (empty: it can run)."""
    spec: Obj = taskrun["spec"]
    template = list(_template(taskrun))
    return [*template, *_failure_policy(spec), *_memory_policy(spec, config, not template), *_checkpoint(taskrun)]


def _kind(value: Any) -> str:
    """What a JSON value is, for a message."""
    kinds = {str: "a string", dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _containers(pod_spec: Obj) -> Iterator[tuple[str, Obj, bool]]:
    """(path, container, whether it is a task container) of the template's containers, then of its
    init containers: those that are objects."""
    for kind in ("containers", "initContainers"):
        entries = pod_spec.get(kind)
        for i, container in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(container, dict):
                yield f"{TEMPLATE}.{kind}[{i}]", container, kind == "containers"


def _template(taskrun: Obj) -> Iterator[Problem]:
    spec: Obj = taskrun["spec"]
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(pod_spec, dict):
        yield Problem(names.REASON_INVALID_TEMPLATE, TEMPLATE, "is missing: write a pod spec with its containers")
        return
    yield from _shape(pod_spec)
    directory = (spec.get("checkpoint") or {}).get("mountPath")
    gang = podbuild.replicas(taskrun) > 1
    seen: set[str] = set()
    for path, container, task in _containers(pod_spec):
        yield from _container(path, container, seen, directory, gang, task)
    yield from _resources(f"{TEMPLATE}.resources", pod_spec.get("resources"))
    reserved = {podbuild.NOTICE_VOLUME: "notice volume"}
    if directory:
        reserved[podbuild.CHECKPOINT_VOLUME] = "volume for spec.checkpoint.mountPath"
    volumes = pod_spec.get("volumes")
    for i, volume in enumerate(volumes if isinstance(volumes, list) else []):
        if isinstance(volume, dict) and volume.get("name") in reserved:
            message = f"{volume['name']!r} is the name of the operator's {reserved[volume['name']]}: rename this one"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{TEMPLATE}.volumes[{i}].name", message)
    grace = pod_spec.get("terminationGracePeriodSeconds")
    if grace is not None and not (_is_int(grace) and grace >= 0):
        message = f"{grace!r} is not a number of seconds: write a whole number of at least 0, e.g. 30"
        yield Problem(names.REASON_INVALID_TEMPLATE, f"{TEMPLATE}.terminationGracePeriodSeconds", message)
    for field in ("hostname", "subdomain"):
        if gang and field in pod_spec:
            message = "a gang's pods get theirs from the operator (rank R is NAME-aA-rR.NAME): remove it"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{TEMPLATE}.{field}", message)


# The parts of a pod spec the operator reads or adds to, and the JSON type each must have.
_SHAPES: tuple[tuple[str, type, str], ...] = (
    ("containers", list, "a list of containers"),
    ("initContainers", list, "a list of containers"),
    ("volumes", list, "a list of volumes"),
    ("tolerations", list, "a list of tolerations"),
    ("nodeSelector", dict, "a map of label to value"),
    ("affinity", dict, "an object (nodeAffinity, podAffinity, podAntiAffinity)"),
    ("resources", dict, "an object with requests and limits"),
)
_CONTAINER_SHAPES: tuple[tuple[str, type, str], ...] = (
    ("env", list, "a list of {name, value} entries"),
    ("envFrom", list, "a list of {secretRef} or {configMapRef} entries"),
    ("volumeMounts", list, "a list of {name, mountPath} entries"),
    ("resources", dict, "an object with requests and limits"),
)


def _shape(pod_spec: Obj) -> Iterator[Problem]:
    for field, kind, what in _SHAPES:
        value = pod_spec.get(field)
        if value is not None and not isinstance(value, kind):
            message = f"is {_kind(value)} ({value!r}): write {what}, as in a pod spec"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{TEMPLATE}.{field}", message)
        if kind is list and isinstance(value, list):
            for i, entry in enumerate(value):
                if not isinstance(entry, dict):
                    message = f"is {_kind(entry)} ({entry!r}): write an object, as in a pod spec"
                    yield Problem(names.REASON_INVALID_TEMPLATE, f"{TEMPLATE}.{field}[{i}]", message)
    if pod_spec.get("containers") in (None, []):
        message = "has no container: write at least one, with its name and image"
        yield Problem(names.REASON_INVALID_TEMPLATE, f"{TEMPLATE}.containers", message)


def _container(path: str, container: Obj, seen: set[str], directory: Any, gang: bool, task: bool) -> Iterator[Problem]:
    name = container.get("name")
    if not (isinstance(name, str) and len(name) <= names.MAX_NAME and _LABEL.match(name)):
        message = (
            f"{name!r} is invalid: a container name is a lowercase RFC 1123 label (a-z, 0-9 and '-', "
            f"at most {names.MAX_NAME} characters), e.g. 'task'"
        )
        yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.name", message)
    elif name in seen:
        message = f"{name!r} names another container of this pod too: give each its own name"
        yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.name", message)
    elif directory and name in (podbuild.RESTORE_CONTAINER, podbuild.SYNC_CONTAINER):
        message = f"{name!r} is the name of the operator's container for spec.checkpoint.mountPath: rename this one"
        yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.name", message)
    if isinstance(name, str):
        seen.add(name)
    for field, kind, what in _CONTAINER_SHAPES:
        value = container.get(field)
        if value is not None and not isinstance(value, kind):
            message = f"is {_kind(value)} ({value!r}): write {what}, as in a pod spec"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.{field}", message)
    yield from _env(path, container.get("env"), gang)
    for field in ("envFrom", "volumeMounts"):
        entries = container.get(field)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict):
                message = f"is {_kind(entry)} ({entry!r}): write an object, as in a pod spec"
                yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.{field}[{i}]", message)
    mounts = container.get("volumeMounts")
    owned = {podbuild.NOTICE_DIR: "the operator mounts the notice file there"} if task else {}
    if directory and task:
        owned[str(directory).rstrip("/")] = "it is spec.checkpoint.mountPath, which the operator mounts itself"
    for i, mount in enumerate(mounts if isinstance(mounts, list) else []):
        at = str(mount.get("mountPath", "")).rstrip("/") if isinstance(mount, dict) else ""
        if at in owned:
            message = f"{at!r}: {owned[at]}: mount this volume elsewhere"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.volumeMounts[{i}].mountPath", message)
    yield from _resources(f"{path}.resources", container.get("resources"))


def _env(path: str, env: Any, gang: bool) -> Iterator[Problem]:
    if not isinstance(env, list):
        return
    owned = podbuild.CONTRACT_ENV + (podbuild.GANG_ENV if gang else ())
    for i, entry in enumerate(env):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            message = f"is {_kind(entry)} ({entry!r}): write an object with a name and a value"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.env[{i}]", message)
        elif not isinstance(name, str) or not name:
            message = f"the entry has no name ({name!r}): give it the variable's name, e.g. name: DEBUG"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.env[{i}].name", message)
        elif name in owned:
            whose = "a gang's pods" if name in podbuild.GANG_ENV else "every container"
            message = f"{name} is set by the operator in {whose} (docs/api.md, In the pod): remove it"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.env[{i}].name", message)


def _resources(path: str, resources: Any) -> Iterator[Problem]:
    """Requests and limits that are quantities of at least 0, no request above its limit."""
    if not isinstance(resources, dict):
        return
    amounts: dict[str, dict[str, int]] = {}
    for kind in ("requests", "limits"):
        given = resources.get(kind)
        if given is None:
            continue
        if not isinstance(given, dict):
            message = f"is {_kind(given)} ({given!r}): write a map of resource to quantity, e.g. memory: 2Gi"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.{kind}", message)
            continue
        for resource, value in given.items():
            try:
                amount = memory.parse_quantity(value)
            except ValueError:
                message = f"{value!r} is not a quantity: {_QUANTITY_HINT}"
                yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.{kind}.{resource}", message)
                continue
            if amount < 0:
                message = f"{value!r} is negative: {_QUANTITY_HINT}"
                yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.{kind}.{resource}", message)
                continue
            amounts.setdefault(kind, {})[resource] = amount
    for resource, request in (amounts.get("requests") or {}).items():
        limit = (amounts.get("limits") or {}).get(resource)
        if limit is not None and request > limit:
            asked, most = resources["requests"][resource], resources["limits"][resource]
            message = f"{asked!r} is more than its limit {most!r}: lower the request or raise limits.{resource}"
            yield Problem(names.REASON_INVALID_TEMPLATE, f"{path}.requests.{resource}", message)


def _failure_policy(spec: Obj) -> Iterator[Problem]:
    """A rule's containerName must name a container, or the rule never matches (as batch/v1 checks)."""
    pod_spec = (spec.get("template") or {}).get("spec")
    pod_spec = pod_spec if isinstance(pod_spec, dict) else {}
    known = [str(c.get("name")) for _, c, _ in _containers(pod_spec)]
    if (spec.get("checkpoint") or {}).get("mountPath"):
        known += [podbuild.RESTORE_CONTAINER, podbuild.SYNC_CONTAINER]
    for i, rule in enumerate((spec.get("failurePolicy") or {}).get("rules") or []):
        name = (rule.get("onExitCodes") or {}).get("containerName")
        if name and name not in known:
            message = (
                f"{name!r} is not a container of {TEMPLATE} ({', '.join(known)}): name one of them, "
                "or remove containerName to match any"
            )
            path = f"spec.failurePolicy.rules[{i}].onExitCodes.containerName"
            yield Problem(names.REASON_INVALID_SPEC, path, message)


def _memory_policy(spec: Obj, config: Config, template_ok: bool) -> Iterator[Problem]:
    """onOOMKilled works only with memory to grow and an attempt after an OOM kill."""
    policy = (spec.get("resources") or {}).get("onOOMKilled")
    if policy is None:
        return
    path = "spec.resources.onOOMKilled"
    try:
        memory.read_factor(policy)
    except ValueError:
        message = f"{policy.get('factor')!r} is not a number above 1 and at most {memory.MOST_FACTOR}: write e.g. 1.5"
        yield Problem(names.REASON_INVALID_MEMORY_POLICY, f"{path}.factor", message)
    try:
        ceiling = memory.read_ceiling(policy)
    except ValueError:
        ceiling = 0
    if ceiling is not None and ceiling < 1:
        message = (
            f"{policy['maxMemory']!r} is not a quantity of at least 1 byte: write e.g. 64Gi, or remove it for no cap"
        )
        yield Problem(names.REASON_INVALID_MEMORY_POLICY, f"{path}.maxMemory", message)
    if template_ok and not memory.sets_memory(spec["template"]["spec"]):
        message = (
            f"no container of {TEMPLATE} has a memory request or limit, so there is nothing to grow: "
            f"set {TEMPLATE}.containers[0].resources.limits.memory (e.g. 2Gi), or remove onOOMKilled"
        )
        yield Problem(names.REASON_INVALID_MEMORY_POLICY, path, message)
    retries = spec.get("retries", config.default_retries)
    if _is_int(retries) and retries <= 0:
        where = "spec.retries is 0" if "retries" in spec else "spec.retries is unset and the operator's default is 0"
        message = (
            f"an OOM kill is a failure, and {where}, so no attempt ever follows one: "
            "set spec.retries to 1 or more, or remove onOOMKilled"
        )
        yield Problem(names.REASON_INVALID_MEMORY_POLICY, path, message)


def _checkpoint(taskrun: Obj) -> Iterator[Problem]:
    checkpoint: Obj = taskrun["spec"].get("checkpoint") or {}
    uri = checkpoint.get("uri")
    if uri and not _CHECKPOINT_URI.match(str(uri)):
        message = (
            f"{uri!r} is not an S3 URI: write s3://BUCKET/PREFIX (a bucket name of 3 to 63 lowercase "
            "letters, digits, dots and dashes), or remove uri for the operator's prefix"
        )
        yield Problem(names.REASON_INVALID_SPEC, "spec.checkpoint.uri", message)
    secret = (checkpoint.get("secretRef") or {}).get("name")
    if secret and not (len(str(secret)) <= 253 and _SUBDOMAIN.match(str(secret))):
        message = f"{secret!r} is not a Secret's name: a lowercase RFC 1123 subdomain, e.g. s3-credentials"
        yield Problem(names.REASON_INVALID_SPEC, "spec.checkpoint.secretRef.name", message)
    mount_path = checkpoint.get("mountPath")
    if mount_path and str(mount_path).rstrip("/") == podbuild.NOTICE_DIR:
        message = f"{mount_path!r} is where the operator mounts the notice file: choose another directory"
        yield Problem(names.REASON_INVALID_SPEC, "spec.checkpoint.mountPath", message)
    source: Obj = checkpoint.get("resumeFrom") or {}
    if source.get("uri") and not _SOURCE_URI.match(str(source["uri"])):
        message = f"{source['uri']!r} is not an S3 URI: write s3://BUCKET/PREFIX of the checkpoints to start from"
        yield Problem(names.REASON_INVALID_SPEC, "spec.checkpoint.resumeFrom.uri", message)
    other = source.get("taskRun")
    namespace = taskrun["metadata"].get("namespace", "")
    if other and "/" in str(other):
        message = (
            f"{other!r} names a TaskRun in another namespace, and resumeFrom.taskRun is one in this namespace "
            f"({namespace}): write its checkpoints' s3:// URI as spec.checkpoint.resumeFrom.uri instead"
        )
        yield Problem(names.REASON_INVALID_SPEC, "spec.checkpoint.resumeFrom.taskRun", message)
    elif other and not (len(str(other)) <= 253 and _SUBDOMAIN.match(str(other))):
        message = f"{other!r} is not a TaskRun's name: write the name of a TaskRun in namespace {namespace}"
        yield Problem(names.REASON_INVALID_SPEC, "spec.checkpoint.resumeFrom.taskRun", message)
