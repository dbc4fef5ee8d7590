"""Builds the pod of one attempt from the TaskRun's template, the capacity profile and the env contract."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from spotrun_operator import names
from spotrun_operator.config import Config

Obj = dict[str, Any]

CHECKPOINT_VOLUME = "spotrun-checkpoint"
NOTICE_VOLUME = "spotrun-notice"
NOTICE_DIR = "/var/run/spotrun"  # every container sees the pod's notice annotation in NOTICE_DIR/notice
NOTICE_FILE = f"{NOTICE_DIR}/notice"
OWNED_PREFIX = f"{names.GROUP}/"
MASTER_PORT = 29500  # torch.distributed's default; a template's own MASTER_PORT wins
RESTORE_CONTAINER, SYNC_CONTAINER = "spotrun-restore", "spotrun-sync"  # directory mode's
DEFAULT_GRACE = 30  # the API server's default terminationGracePeriodSeconds
# The environment the operator sets in every container (the SDK's contract), and a gang's besides.
CONTRACT_ENV = (
    "SPOTRUN_TASKRUN",
    "SPOTRUN_NAMESPACE",
    "SPOTRUN_ATTEMPT",
    "SPOTRUN_CHECKPOINT_URI",
    "SPOTRUN_CAPACITY",
    "SPOTRUN_GRACE_SECONDS",
    "SPOTRUN_CHECKPOINT_KEEP",
    "SPOTRUN_NOTICE_FILE",
    "SPOTRUN_RESUME_FROM",
    "SPOTRUN_RANK",
    "SPOTRUN_WORLD_SIZE",
)
GANG_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")  # MASTER_PORT: the template may set its own


def _not_ours(metadata: Obj | None) -> Obj:
    """A template's labels or annotations without the operator's keys. The CRD refuses such keys;
    this covers TaskRuns stored before that rule: a template's `spotrun.dev/stopped-by` would make
    every attempt end Stopped, counted against no budget."""
    return {k: v for k, v in (metadata or {}).items() if not k.startswith(OWNED_PREFIX)}


def checkpoint_uri(taskrun: Obj, config: Config) -> str:
    """The TaskRun's checkpoint prefix: spec.checkpoint.uri, else the operator's prefix + NAMESPACE/NAME/."""
    explicit = (taskrun["spec"].get("checkpoint") or {}).get("uri")
    if explicit:
        return str(explicit).rstrip("/") + "/"
    return assigned_uri(taskrun, config)


def assigned_uri(taskrun: Obj, config: Config) -> str:
    """The prefix the operator assigns a TaskRun (its prefix + NAMESPACE/NAME/; "" without a prefix):
    the only one it ever deletes, with its own credentials."""
    if not config.checkpoint_prefix:
        return ""
    meta = taskrun["metadata"]
    return f"{config.checkpoint_prefix.rstrip('/')}/{meta['namespace']}/{meta['name']}/"


def grace_seconds(pod_spec: Obj) -> int:
    """The template's terminationGracePeriodSeconds, or the API server's default when it has none
    (or, in a template edited after its pods were built, one that is not a count of seconds)."""
    value = pod_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else DEFAULT_GRACE


def _env(taskrun: Obj, attempt: int, capacity: str, uri: str, resume_from: str, grace: int) -> list[Obj]:
    meta = taskrun["metadata"]
    env = [
        {"name": "SPOTRUN_TASKRUN", "value": meta["name"]},
        {"name": "SPOTRUN_NAMESPACE", "value": meta["namespace"]},
        {"name": "SPOTRUN_ATTEMPT", "value": str(attempt)},
        {"name": "SPOTRUN_CHECKPOINT_URI", "value": uri},
        {"name": "SPOTRUN_CAPACITY", "value": capacity},
        {"name": "SPOTRUN_GRACE_SECONDS", "value": str(grace)},
        {"name": "SPOTRUN_CHECKPOINT_KEEP", "value": str((taskrun["spec"].get("checkpoint") or {}).get("keep", 3))},
        {"name": "SPOTRUN_NOTICE_FILE", "value": NOTICE_FILE},
    ]
    if resume_from:
        env.append({"name": "SPOTRUN_RESUME_FROM", "value": resume_from})
    return env


def replicas(taskrun: Obj) -> int:
    return int(taskrun["spec"].get("replicas") or 1)


def _gang_env(taskrun: Obj, attempt: int, rank: int, size: int) -> list[Obj]:
    """A gang's rank contract: Spotrun's, and PyTorchJob's, so that init_process_group("env://") works."""
    meta = taskrun["metadata"]
    master = f"{names.hostname(names.pod_name(meta['name'], attempt, 0))}.{names.gang_service(meta['name'])}"
    return [
        {"name": "SPOTRUN_RANK", "value": str(rank)},
        {"name": "SPOTRUN_WORLD_SIZE", "value": str(size)},
        {"name": "RANK", "value": str(rank)},
        {"name": "WORLD_SIZE", "value": str(size)},
        {"name": "LOCAL_RANK", "value": "0"},
        {"name": "MASTER_ADDR", "value": f"{master}.{meta['namespace']}.svc"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def _with_contract(container: Obj, env: list[Obj], secret: str) -> Obj:
    container = copy.deepcopy(container)
    own_port = any(e.get("name") == "MASTER_PORT" for e in container.get("env") or [])
    env = [e for e in env if not (own_port and e["name"] == "MASTER_PORT")]
    ours = {e["name"] for e in env}
    container["env"] = [e for e in container.get("env") or [] if e["name"] not in ours] + env
    notice = {"name": NOTICE_VOLUME, "mountPath": NOTICE_DIR, "readOnly": True}
    container["volumeMounts"] = [*(container.get("volumeMounts") or []), notice]
    if secret:
        container["envFrom"] = [*(container.get("envFrom") or []), {"secretRef": {"name": secret}}]
    container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    return container


def build_pods(
    taskrun: Obj,
    attempt: int,
    capacity: str,
    config: Config,
    *,
    resume_from: str = "",
    ranks: list[int] | None = None,
) -> list[Obj]:
    """The pods of `attempt`: one, or a gang's (spec.replicas), in rank order (only `ranks` if given)."""
    size = replicas(taskrun)
    if size == 1:
        return [build_pod(taskrun, attempt, capacity, config, resume_from=resume_from)]
    return [
        build_pod(taskrun, attempt, capacity, config, resume_from=resume_from, rank=rank)
        for rank in (range(size) if ranks is None else ranks)
    ]


HOSTNAME = "kubernetes.io/hostname"


def avoid_nodes(pod_spec: Obj, nodes: list[str]) -> Obj:
    """The pod spec kept off `nodes` (ones that rejected an earlier attempt's pod at admission): a
    required node anti-affinity, kubernetes.io/hostname NotIn them, ANDed into every term of the
    template's own required node affinity (its terms are ORed: each must exclude them)."""
    if not nodes:
        return pod_spec
    spec = copy.deepcopy(pod_spec)
    node_affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).append({"key": HOSTNAME, "operator": "NotIn", "values": list(nodes)})
    return spec


def build_pod(
    taskrun: Obj,
    attempt: int,
    capacity: str,
    config: Config,
    *,
    resume_from: str = "",
    rank: int | None = None,
) -> Obj:
    """The pod of `attempt` (of its `rank`, in a gang): deterministic name, controller owner
    reference, labels, finalizer, the SPOTRUN_* environment and the S3 secret in every container,
    and placement for `capacity`."""
    meta, spec = taskrun["metadata"], taskrun["spec"]
    template = copy.deepcopy(spec["template"])
    pod_spec: Obj = template.get("spec") or {}
    pod_meta: Obj = template.get("metadata") or {}
    checkpoint = spec.get("checkpoint") or {}
    uri = checkpoint_uri(taskrun, config)
    secret = (checkpoint.get("secretRef") or {}).get("name") or config.checkpoint_secret
    grace = grace_seconds(pod_spec)
    env = _env(taskrun, attempt, capacity, uri, resume_from, grace)
    name = names.pod_name(meta["name"], attempt, rank)
    if rank is not None:
        env += _gang_env(taskrun, attempt, rank, replicas(taskrun))
        # DNS through the gang's headless Service: HOSTNAME.SERVICE.NAMESPACE.svc
        pod_spec["hostname"] = names.hostname(name)
        pod_spec["subdomain"] = names.gang_service(meta["name"])

    pod_spec["restartPolicy"] = "Never"
    pod_spec["containers"] = [_with_contract(c, env, secret) for c in pod_spec["containers"]]
    # The notice annotation as a file, updated in place by the kubelet (a volume, not an env var:
    # those never change) for the SDK to watch.
    notice_item = {"path": "notice", "fieldRef": {"fieldPath": f"metadata.annotations['{names.ANNOTATION_NOTICE}']"}}
    pod_spec["volumes"] = [
        *(pod_spec.get("volumes") or []),
        {"name": NOTICE_VOLUME, "downwardAPI": {"items": [notice_item]}},
    ]
    placement = config.profile.get(capacity, {})
    pod_spec["nodeSelector"] = {**placement.get("nodeSelector", {}), **(pod_spec.get("nodeSelector") or {})}
    if not pod_spec["nodeSelector"]:
        del pod_spec["nodeSelector"]
    tolerations = [*(pod_spec.get("tolerations") or []), *placement.get("tolerations", [])]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if "affinity" not in pod_spec and placement.get("affinity"):
        pod_spec["affinity"] = copy.deepcopy(placement["affinity"])
    if capacity == names.CAPACITY_ANY and config.spot_labels:
        _prefer(pod_spec, config.spot_labels)

    mount_path = checkpoint.get("mountPath")
    if mount_path:
        volume = {"name": CHECKPOINT_VOLUME, "emptyDir": {}}
        pod_spec["volumes"] = [*pod_spec["volumes"], volume]
        mount = {"name": CHECKPOINT_VOLUME, "mountPath": mount_path}
        for container in pod_spec["containers"]:
            container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
        image = checkpoint.get("image") or config.image
        interval = str(checkpoint.get("syncIntervalSeconds", 60))
        helpers = [
            {"name": RESTORE_CONTAINER, "image": image, "command": ["spotrun", "restore", mount_path]},
            {
                "name": SYNC_CONTAINER,
                "image": image,
                "command": ["spotrun", "sync", mount_path, "--interval", interval],
                # A native sidecar: runs beside the task, stopped after it, syncing once more on SIGTERM.
                "restartPolicy": "Always",
            },
        ]
        pod_spec["initContainers"] = [_with_contract({**h, "volumeMounts": [mount]}, env, secret) for h in helpers] + (
            pod_spec.get("initContainers") or []
        )

    annotations = _not_ours(pod_meta.get("annotations"))
    checkpoint_first = (spec.get("disruption") or {}).get("voluntary", names.VOLUNTARY_CHECKPOINT)
    # Karpenter never consolidates a node with a do-not-disrupt pod: with consolidation AfterCheckpoint
    # the budget alone decides, opened after each fresh checkpoint (docs/consolidation.md).
    moves = (spec.get("disruption") or {}).get("consolidation") == "AfterCheckpoint"
    if config.profile_name == "karpenter" and checkpoint_first == names.VOLUNTARY_CHECKPOINT and not moves:
        annotations[names.ANNOTATION_KARPENTER_DO_NOT_DISRUPT] = "true"
    labels = {
        **_not_ours(pod_meta.get("labels")),
        names.LABEL_TASKRUN: names.taskrun_label(meta["name"]),
        names.LABEL_ATTEMPT: str(attempt),
        names.LABEL_CAPACITY: capacity,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }
    if rank is not None:
        labels[names.LABEL_RANK] = str(rank)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "finalizers": [names.POD_FINALIZER],
            "ownerReferences": [_owned_by(meta)],
        },
        "spec": pod_spec,
    }


def _prefer(pod_spec: Obj, labels: Mapping[str, str]) -> None:
    """Capacity `any`: the scheduler prefers nodes with the profile's spot labels and, when spot has
    no room, places the pod on any other node at once (no wait, unlike spot's fallback)."""
    node_affinity = pod_spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    preferred = node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
    expressions = [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(labels.items())]
    preferred.append({"weight": 100, "preference": {"matchExpressions": expressions}})


def _owned_by(meta: Obj) -> Obj:
    """The controller owner reference to the TaskRun: its children go with it."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _child(meta: Obj, name: str) -> Obj:
    """The metadata of an object the TaskRun owns beside its pods (its budget, its gang's Service)."""
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {names.LABEL_TASKRUN: names.taskrun_label(meta["name"]), names.LABEL_MANAGED_BY: names.MANAGED_BY},
        "ownerReferences": [_owned_by(meta)],
    }


def build_budget(taskrun: Obj) -> Obj:
    """The PodDisruptionBudget that keeps a drain's evictions from killing the TaskRun's pod mid-step
    (voluntary Checkpoint): the operator stops the pod itself once a fresh checkpoint is committed.
    A pod that is not Ready (starting, failing) may still be evicted: it has nothing to save."""
    meta = taskrun["metadata"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _child(meta, names.budget_name(meta["name"])),
        "spec": {
            "minAvailable": replicas(taskrun),  # a gang: no rank is evicted alone
            "selector": {"matchLabels": {names.LABEL_TASKRUN: names.taskrun_label(meta["name"])}},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_service(taskrun: Obj) -> Obj:
    """A gang's headless Service: each pod is HOSTNAME.SERVICE.NAMESPACE.svc, resolvable before it
    is Ready (ranks meet before any of them serves), for the TaskRun's life."""
    meta = taskrun["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _child(meta, names.gang_service(meta["name"])),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_TASKRUN: names.taskrun_label(meta["name"])},
            "ports": [{"name": "master", "port": MASTER_PORT, "protocol": "TCP"}],
        },
    }
