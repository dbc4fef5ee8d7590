"""Simulated nodes for scale: kwok's configuration, its Stages, and the Node objects it keeps Ready.

kwok (sigs.k8s.io/kwok) runs as one more process of the cluster. It manages only the Nodes
labelled `kwok.localcluster.io/node=true` (never the process or real nodes): it holds their
Leases and, for the pods bound to them, plays the Stages below, which write the statuses a real
kubelet writes. Nothing runs: a pod on a kwok node is only its API object.

Pod annotations (on the pod, so on a Job's or a TaskRun's pod template alike):

- `kwok.localcluster.io/run-seconds: "S"`: the containers end S seconds (a number) after the
  pod's `status.startTime`, which the API keeps to the second; without it a pod runs until
  deleted.
- `kwok.localcluster.io/exit-code: "C"`: with run-seconds, the containers' exit code (default 0).
  0 ends the pod Succeeded (reason Completed); C != 0 ends it Failed (reason Error), as the
  kubelet does for `restartPolicy: Never`. Restarts are not simulated: with `OnFailure` and
  C != 0, or with `Always`, the pod runs until deleted.

A pod being deleted ends as the kubelet ends it: its containers terminated with 143 (SIGTERM,
reason Error) and phase Failed unless it had already ended, then the kubelet's final delete
(grace 0). Finalizers are never touched: the pod stays until their owners remove them. Pods of a
kwok Node that is deleted are left as they are, for PodGC and the operators, as on a cloud.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from spotrun import _yaml

from localcluster import toolchain

Obj = dict[str, Any]

NODE_LABEL = "kwok.localcluster.io/node"  # "true" on every kwok node: what kwok manages, and how to list them
RUN_SECONDS = "kwok.localcluster.io/run-seconds"
EXIT_CODE = "kwok.localcluster.io/exit-code"
NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
# kwok renews a Lease every quarter of its duration. The controller-manager here calls a node
# NotReady after 10 s without a renewal, so 12 s (renewed every 3 s) leaves a loaded machine
# three chances; a real kubelet's 40 s would not do.
LEASE_DURATION_SECONDS = 12
# Node addresses and pod CIDRs for kwok nodes, by serial number: apart from real nodes'
# 10.77.0.0/24 and 10.88.0.0/16 and the services' 10.0.0.0/24. Only written in the API: nothing routes them.
NODE_NETWORK = ipaddress.ip_network("10.79.0.0/16")
POD_NETWORK = ipaddress.ip_network("10.128.0.0/10")  # a /24 per node
MAX_NODES = 16000


def node_name(capacity: str, index: int) -> str:
    """`kwok-spot-3`, `kwok-ondemand-1`: never reused, as a cloud never reuses an instance's name."""
    return f"kwok-{'spot' if capacity == 'spot' else 'ondemand'}-{index}"


def node_ip(serial: int) -> str:
    return str(NODE_NETWORK.network_address + serial)


def pod_cidr(serial: int) -> str:
    return str(ipaddress.ip_network((int(POD_NETWORK.network_address) + 256 * serial, 24)))


def node_object(
    name: str,
    labels: dict[str, str],
    taints: list[Obj],
    serial: int,
    resources: dict[str, str] | None = None,
) -> Obj:
    """A Node as a kubelet registers it (labels, taints, capacity, addresses, nodeInfo), marked for kwok.

    LABELS and TAINTS are the cluster's spot or on-demand ones; kwok adds the conditions once it holds its Lease."""
    if not 0 < serial < MAX_NODES:
        raise ValueError(f"kwok node serial {serial} outside 1..{MAX_NODES - 1}")
    capacity = dict(resources or NODE_CAPACITY)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "localcluster-kwok",
                **labels,
                NODE_LABEL: "true",
            },
            # kwok's own marker, as kwokctl's nodes carry it (kwok here selects by NODE_LABEL).
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"taints": list(taints), "podCIDR": pod_cidr(serial), "podCIDRs": [pod_cidr(serial)]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": node_ip(serial)}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "machineID": f"{serial:032x}",
                "systemUUID": f"{serial:032x}",
                "bootID": "",
                "kernelVersion": "",
                "osImage": f"kwok {toolchain.KWOK_VERSION} (simulated node)",
                "containerRuntimeVersion": f"kwok://{toolchain.KWOK_VERSION}",
                "kubeletVersion": toolchain.KUBERNETES_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


# ----- Stages ----------------------------------------------------------------------------------
#
# Templates are Go text/template producing YAML (kwok renders them with sprig and its own
# functions: Now, Quote, NodeIPsWith, PodIPsWith), each applied as a strategic merge patch of the
# pod's or node's status. Selectors are jq expressions over the object.


def _jq(key: str, operator: str, *values: str) -> Obj:
    return {"jq": {"key": key, "operator": operator, **({"values": list(values)} if values else {})}}


def _true(expression: str) -> Obj:
    """A selector on a jq expression that yields a boolean (kwok compares numbers unreliably, booleans well)."""
    return _jq(expression, "In", "true")


def _stage(name: str, kind: str, selector: list[Obj], steps: list[Obj], **spec: Any) -> Obj:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": selector},
            **spec,
            "steps": steps,
        },
    }


def _status_patch(template: str) -> Obj:
    return {"patch": {"subresource": "status", "root": "status", "template": template.strip() + "\n"}}


def _event(reason: str, message: str) -> Obj:
    return {"event": {"type": "Normal", "reason": reason, "message": message}}


_PRELUDE = """
{{ $now := Now }}
{{ $root := . }}
{{ $generation := .metadata.generation }}
{{ $annotations := or .metadata.annotations dict }}
"""


def _condition(kind: str, status: str, reason: str = "", transition: bool = True) -> str:
    lines = [f"- type: {kind}", f'  status: "{status}"', "  lastProbeTime: null"]
    if transition:
        lines.append("  lastTransitionTime: {{ $now | Quote }}")
    if reason:
        lines.append(f"  reason: {reason}")
    lines.append("  {{ with $generation }}observedGeneration: {{ . }}{{ end }}")
    return "\n".join(lines)


# The container's ID: unique per pod and container, in the `<runtime>://<id>` shape a kubelet writes.
_CONTAINER_ID = '{{ printf "kwok://%s-%s" $root.metadata.uid $item.name | Quote }}'

# The time a container of the pod started, as the running stage wrote it; else now.
_STARTED = """
  {{ $started := $now }}
  {{ with $root.status.containerStatuses }}{{ range . }}{{ if eq .name $item.name }}
  {{ with .state }}{{ with .running }}{{ $started = .startedAt }}{{ end }}{{ end }}
  {{ end }}{{ end }}{{ end }}
"""


def _init_container_statuses(sidecars_running: bool) -> str:
    """Init containers: the ordinary ones completed; sidecars (restartPolicy Always) running, or ended with the pod."""
    sidecar = (
        "  started: true\n  ready: true\n  state:\n    running:\n      startedAt: {{ $now | Quote }}"
        if sidecars_running
        else "  started: false\n  ready: false\n  state:\n    terminated:\n      exitCode: 0\n      reason: Completed\n"
        "      startedAt: {{ $now | Quote }}\n      finishedAt: {{ $now | Quote }}\n"
        f"      containerID: {_CONTAINER_ID}"
    )
    return f"""
{{{{ with .spec.initContainers }}}}
initContainerStatuses:
{{{{ range $index, $item := . }}}}
- name: {{{{ $item.name | Quote }}}}
  image: {{{{ $item.image | Quote }}}}
  imageID: ""
  containerID: {_CONTAINER_ID}
  lastState: {{}}
  restartCount: 0
  {{{{ if eq (toString $item.restartPolicy) "Always" }}}}
{sidecar}
  {{{{ else }}}}
  started: false
  ready: true
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{{{ $now | Quote }}}}
      finishedAt: {{{{ $now | Quote }}}}
      containerID: {_CONTAINER_ID}
  {{{{ end }}}}
{{{{ end }}}}
{{{{ end }}}}
"""


_RUNNING = (
    _PRELUDE
    + "conditions:\n"
    + "\n".join(
        _condition(kind, "True") for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
    )
    + _init_container_statuses(sidecars_running=True)
    + f"""
containerStatuses:
{{{{ range $index, $item := .spec.containers }}}}
- name: {{{{ $item.name | Quote }}}}
  image: {{{{ $item.image | Quote }}}}
  imageID: ""
  containerID: {_CONTAINER_ID}
  lastState: {{}}
  restartCount: 0
  started: true
  ready: true
  state:
    running:
      startedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
{{{{ with NodeIPsWith .spec.nodeName }}}}
hostIP: {{{{ index . 0 | Quote }}}}
hostIPs:
{{{{ range . }}}}
- ip: {{{{ . | Quote }}}}
{{{{ end }}}}
{{{{ end }}}}
{{{{ $uid := or .metadata.uid "" }}}}
{{{{ $name := or .metadata.name "" }}}}
{{{{ $namespace := or .metadata.namespace "" }}}}
{{{{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) $uid $name $namespace }}}}
podIP: {{{{ index . 0 | Quote }}}}
podIPs:
{{{{ range . }}}}
- ip: {{{{ . | Quote }}}}
{{{{ end }}}}
{{{{ end }}}}
phase: Running
startTime: {{{{ $now | Quote }}}}
{{{{ with $generation }}}}observedGeneration: {{{{ . }}}}{{{{ end }}}}
"""
)


def _ended(phase: str, exit_code: str, reason: str) -> str:
    """The status a kubelet writes when every container has ended with EXIT_CODE (a template expression)."""
    condition_reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
    # The kubelet marks Initialized with PodCompleted only on success, and leaves its transition time.
    initialized = (
        "\n" + _condition("Initialized", "True", "PodCompleted", transition=False) if phase == "Succeeded" else ""
    )
    return (
        _PRELUDE
        + "conditions:\n"
        + _condition("PodReadyToStartContainers", "False")
        + initialized
        + "\n"
        + _condition("ContainersReady", "False", condition_reason)
        + "\n"
        + _condition("Ready", "False", condition_reason)
        + _init_container_statuses(sidecars_running=False)
        + f"""
containerStatuses:
{{{{ range $index, $item := .spec.containers }}}}
{_STARTED.strip(chr(10))}
- name: {{{{ $item.name | Quote }}}}
  image: {{{{ $item.image | Quote }}}}
  imageID: ""
  containerID: {_CONTAINER_ID}
  lastState: {{}}
  restartCount: 0
  started: false
  ready: false
  state:
    terminated:
      exitCode: {exit_code}
      reason: {reason}
      startedAt: {{{{ $started | Quote }}}}
      finishedAt: {{{{ $now | Quote }}}}
      containerID: {_CONTAINER_ID}
{{{{ end }}}}
phase: {phase}
{{{{ with $generation }}}}observedGeneration: {{{{ . }}}}{{{{ end }}}}
"""
    )


_NOT_DELETED = _jq(".metadata.deletionTimestamp", "DoesNotExist")
_DELETED = _jq(".metadata.deletionTimestamp", "Exists")
_EXIT = f'((.metadata.annotations["{EXIT_CODE}"] // "0") | tonumber)'
# When the containers end: status.startTime plus run-seconds, as a duration from now (kwok parses
# Go durations; a negative one plays the stage at once, as after a kwok restart).
_RUN_DELAY = (
    f'(((.status.startTime | fromdateiso8601) + (.metadata.annotations["{RUN_SECONDS}"] | tonumber) - now)'
    ' * 1000 | floor | tostring) + "ms"'
)


def pod_stages() -> list[Obj]:
    """The pod lifecycle of a real kubelet: running, ended after run-seconds, terminated on deletion, final delete."""
    running = [_NOT_DELETED, _jq(".status.phase", "In", "Pending")]
    ends = [
        _NOT_DELETED,
        _jq(".status.phase", "In", "Running"),
        _jq(f'.metadata.annotations["{RUN_SECONDS}"]', "Exists"),
    ]
    run_delay = {"delay": {"durationMilliseconds": 0, "durationFrom": {"jq": {"expression": _RUN_DELAY}}}}
    return [
        _stage(
            "localcluster-pod-running",
            "Pod",
            running,
            [_event("Started", "Started container"), _status_patch(_RUNNING)],
            immediateNextStage=True,
        ),
        _stage(
            "localcluster-pod-succeeded",
            "Pod",
            [*ends, _true(f"{_EXIT} == 0"), _jq(".spec.restartPolicy", "In", "Never", "OnFailure")],
            [_status_patch(_ended("Succeeded", "0", "Completed"))],
            **run_delay,
        ),
        _stage(
            "localcluster-pod-failed",
            "Pod",
            [*ends, _true(f"{_EXIT} != 0"), _jq(".spec.restartPolicy", "In", "Never")],
            [_status_patch(_ended("Failed", f'{{{{ index $annotations "{EXIT_CODE}" | atoi }}}}', "Error"))],
            **run_delay,
        ),
        # Deletion of a pod still running: SIGTERM, which the simulated process obeys at once.
        _stage(
            "localcluster-pod-terminated",
            "Pod",
            [_DELETED, _jq(".status.phase", "NotIn", "Succeeded", "Failed")],
            [_event("Killing", "Stopping container"), _status_patch(_ended("Failed", "143", "Error"))],
            immediateNextStage=True,
        ),
        # The kubelet's last word on an ended pod being deleted: DELETE with grace 0. With finalizers the
        # object stays, its deletionGracePeriodSeconds now 0, which no longer matches: one delete per pod.
        _stage(
            "localcluster-pod-delete",
            "Pod",
            [
                _DELETED,
                _jq(".status.phase", "In", "Succeeded", "Failed"),
                _true("(.metadata.deletionGracePeriodSeconds // 1) > 0"),
            ],
            [{"delete": True}],
        ),
    ]


_NODE_CONDITIONS = """
{{ $now := Now }}
{{ $since := or .metadata.creationTimestamp $now }}
conditions:
- type: MemoryPressure
  status: "False"
  reason: KubeletHasSufficientMemory
  message: kubelet has sufficient memory available
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
- type: DiskPressure
  status: "False"
  reason: KubeletHasNoDiskPressure
  message: kubelet has no disk pressure
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
- type: PIDPressure
  status: "False"
  reason: KubeletHasSufficientPID
  message: kubelet has sufficient PID available
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
- type: Ready
  status: "True"
  reason: KubeletReady
  message: kubelet is posting ready status
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
"""


def node_stages() -> list[Obj]:
    """Ready at once (kwok's node-initialize), then a status heartbeat every ~10 minutes beside the Lease."""
    ready = _jq('.status.conditions.[] | select( .type == "Ready" ) | .status', "In", "True")
    not_ready = _jq('.status.conditions.[] | select( .type == "Ready" ) | .status', "NotIn", "True")
    return [
        _stage(
            "localcluster-node-ready",
            "Node",
            [not_ready],
            [_status_patch(_NODE_CONDITIONS + "phase: Running\n")],
        ),
        # As kwok's node-heartbeat-with-lease: the Lease says the node lives; its status is refreshed
        # rarely, as a kubelet reports status every 5 minutes when nothing changed.
        _stage(
            "localcluster-node-heartbeat",
            "Node",
            [_jq(".status.phase", "In", "Running"), ready],
            [_status_patch(_NODE_CONDITIONS)],
            delay={"durationMilliseconds": 300000, "jitterDurationMilliseconds": 310000},
        ),
    ]


def configuration(server_address: str) -> Obj:
    """kwok's own options: which nodes it manages, their Leases, and its health endpoint."""
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "metadata": {"name": "localcluster"},
        "options": {
            "manageNodesWithLabelSelector": f"{NODE_LABEL}=true",
            "nodeLeaseDurationSeconds": LEASE_DURATION_SECONDS,
            "serverAddress": server_address,  # /healthz only: logs and exec are not simulated
            "enableDebuggingHandlers": False,
            "enableProfilingHandler": False,
            "enableContentionProfiling": False,
            # kwok applies its defaults only when it reads no KwokConfiguration: these are its defaults.
            "cidr": "10.0.0.0/24",  # unused: every kwok node has its own spec.podCIDR
            "manageAllNodes": False,
            "podPlayStageParallelism": 4,
            "nodePlayStageParallelism": 4,
            "nodeLeaseParallelism": 4,
            "podsOnNodeSyncParallelism": 1,
            "enablePodsOnNodeSyncListPager": True,
            "enablePodsOnNodeSyncStreamWatch": False,
        },
    }


def config_documents(server_address: str) -> list[Obj]:
    return [configuration(server_address), *node_stages(), *pod_stages()]


def argv(binary: str, config_path: str, kubeconfig_path: str) -> list[str]:
    return [binary, f"--kubeconfig={kubeconfig_path}", f"--config={config_path}", "--v=INFO"]


def config_text(server_address: str) -> str:
    """The file kwok reads with --config: its options and every Stage above, as YAML."""
    return _yaml.dump_all(config_documents(server_address))
