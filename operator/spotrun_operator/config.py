"""Operator configuration from environment variables, and the capacity profiles."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


def _spot_taint(key: str, value: str) -> Obj:
    return {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}


def _lacks(label: str) -> Obj:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": label, "operator": "DoesNotExist"}]}]
            }
        }
    }


# Placement per capacity type. "any" tolerates the spot taints and selects nothing.
PROFILES: dict[str, dict[str, Obj]] = {
    "generic": {
        "spot": {
            "nodeSelector": {"spotrun.dev/capacity": "spot"},
            "tolerations": [_spot_taint("spotrun.dev/capacity", "spot")],
        },
        "on-demand": {"nodeSelector": {"spotrun.dev/capacity": "on-demand"}},
        "any": {"tolerations": [_spot_taint("spotrun.dev/capacity", "spot")]},
    },
    "gke": {
        "spot": {
            "nodeSelector": {"cloud.google.com/gke-spot": "true"},
            "tolerations": [_spot_taint("cloud.google.com/gke-spot", "true")],
        },
        "on-demand": {"affinity": _lacks("cloud.google.com/gke-spot")},
        "any": {"tolerations": [_spot_taint("cloud.google.com/gke-spot", "true")]},
    },
    "eks": {
        "spot": {"nodeSelector": {"eks.amazonaws.com/capacityType": "SPOT"}},
        "on-demand": {"nodeSelector": {"eks.amazonaws.com/capacityType": "ON_DEMAND"}},
        "any": {},
    },
    "karpenter": {
        "spot": {"nodeSelector": {"karpenter.sh/capacity-type": "spot"}},
        "on-demand": {"nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}},
        "any": {},
    },
    "aks": {
        "spot": {
            "nodeSelector": {"kubernetes.azure.com/scalesetpriority": "spot"},
            "tolerations": [_spot_taint("kubernetes.azure.com/scalesetpriority", "spot")],
        },
        "on-demand": {"affinity": _lacks("kubernetes.azure.com/scalesetpriority")},
        "any": {"tolerations": [_spot_taint("kubernetes.azure.com/scalesetpriority", "spot")]},
    },
}


# Node taints that mean "this node will be reclaimed", with the warning each gives (seconds). The
# pod is told at once; the reclaim itself proceeds as it would. Taints that never appear cost
# nothing, so every profile knows them all; a profile file may give its own ("noticeTaints").
NOTICE_TAINTS: dict[str, int] = {
    "aws-node-termination-handler/spot-itn": 120,  # EC2 spot interruption notice (NTH, taintNode)
    "aws-node-termination-handler/asg-lifecycle-termination": 120,
    "aws-node-termination-handler/scheduled-maintenance": 120,
    "cloud.google.com/impending-node-termination": 30,  # GKE spot/preemptible: 30 s
}
# Node taints that mean a voluntary disruption has begun (besides a cordon, spec.unschedulable):
# the node is being drained, respecting PodDisruptionBudgets. A profile file: "drainTaints".
DRAIN_TAINTS: tuple[str, ...] = (
    "node.kubernetes.io/unschedulable",  # a cordon (the node lifecycle controller's): read as one, not a drain
    "karpenter.sh/disrupted",  # Karpenter: consolidation, drift, expiry, and its spot interruptions
    "ToBeDeletedByClusterAutoscaler",  # cluster-autoscaler's scale-down
)


@dataclasses.dataclass(frozen=True)
class Prices:
    """Hourly prices by capacity type, optionally by node.kubernetes.io/instance-type: what
    status.cost is computed from (SPOTRUN_PRICES, JSON: {"spot": 0.3, "on-demand": 1.0,
    "currency": "USD", "instanceTypes": {"m5.large": {"spot": 0.04, "on-demand": 0.096}}})."""

    spot: float = 0.0
    on_demand: float = 0.0
    currency: str = ""
    instance_types: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.on_demand > 0 or any(p.get("on-demand", 0) > 0 for p in self.instance_types.values())

    def hourly(self, capacity: str, instance_type: str = "") -> float | None:
        """The price of an hour of `capacity` ("spot" or "on-demand") on that instance type, or None."""
        by_type = self.instance_types.get(instance_type) or {}
        if capacity in by_type:
            return float(by_type[capacity])
        price = self.spot if capacity == "spot" else self.on_demand
        return price if price > 0 else None

    @classmethod
    def parse(cls, text: str) -> Prices:
        """SPOTRUN_PRICES; an error names the variable and what is wrong."""
        if not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"SPOTRUN_PRICES is not JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError('SPOTRUN_PRICES must be a JSON object such as {"spot": 0.3, "on-demand": 1.0}')

        def price(value: Any, where: str) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"SPOTRUN_PRICES: {where} must be a price per hour (a number >= 0), not {value!r}")
            return float(value)

        unknown = set(raw) - {"spot", "on-demand", "currency", "instanceTypes"}
        if unknown:
            raise ConfigError(
                f"SPOTRUN_PRICES: unknown keys {sorted(unknown)}; use spot, on-demand, currency, instanceTypes"
            )
        types = raw.get("instanceTypes") or {}
        if not isinstance(types, dict):
            raise ConfigError("SPOTRUN_PRICES: instanceTypes must map an instance type to {spot, on-demand}")
        parsed: dict[str, dict[str, float]] = {}
        for name, entry in types.items():
            if not isinstance(entry, dict) or set(entry) - {"spot", "on-demand"}:
                raise ConfigError(f"SPOTRUN_PRICES: instanceTypes.{name} must be {{spot: N, on-demand: N}}")
            parsed[name] = {k: price(v, f"instanceTypes.{name}.{k}") for k, v in entry.items()}
        return cls(
            spot=price(raw.get("spot", 0), "spot"),
            on_demand=price(raw.get("on-demand", 0), "on-demand"),
            currency=str(raw.get("currency", "")),
            instance_types=parsed,
        )


class ConfigError(ValueError):
    """The operator's environment is wrong; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the operator reads from its environment (see docs/operations.md).

    Attributes:
        namespaces: SPOTRUN_NAMESPACES, comma-separated; empty: the whole cluster.
        checkpoint_prefix: SPOTRUN_CHECKPOINT_PREFIX, s3://BUCKET/PREFIX/; a TaskRun without
            checkpoint.uri gets PREFIX/NAMESPACE/NAME/.
        checkpoint_secret: SPOTRUN_CHECKPOINT_SECRET, the Secret (in the TaskRun's namespace) whose
            keys give tasks their S3 credentials, when the TaskRun names none.
        profile: SPOTRUN_CAPACITY_PROFILE: generic, gke, eks, karpenter, aks; or
            SPOTRUN_CAPACITY_PROFILE_FILE, a JSON file of the same shape as PROFILES' entries.
        image: SPOTRUN_IMAGE, the image of the directory-mode restore and sync containers.
        default_retries, default_max_interruptions: SPOTRUN_DEFAULT_RETRIES and
            SPOTRUN_DEFAULT_MAX_INTERRUPTIONS, for TaskRuns created before the CRD defaulted them.
        log_format: SPOTRUN_LOG_FORMAT, text or json.
        metrics_port: SPOTRUN_METRICS_PORT (0: no metrics endpoint).
        api_qps, api_burst: SPOTRUN_API_QPS and SPOTRUN_API_BURST, the token bucket every request to
            the API server but a watch waits for (client-go's QPS and Burst).
        workers: SPOTRUN_WORKERS, TaskRuns reconciled at once.
        leader_election: SPOTRUN_LEADER_ELECTION, true or false (one replica only).
        lease_namespace, lease_name: SPOTRUN_LEASE_NAMESPACE (default: the pod's own namespace) and
            SPOTRUN_LEASE_NAME, the coordination.k8s.io Lease the replicas elect a leader on.
        identity: SPOTRUN_POD_NAME (the downward API's metadata.name), else the host name; a replica's
            name in the Lease.
        prices: SPOTRUN_PRICES (see Prices): without them status.cost is not written.
    """

    namespaces: tuple[str, ...] = ()
    checkpoint_prefix: str = ""
    checkpoint_secret: str = ""
    profile_name: str = "generic"
    profile: dict[str, Obj] = dataclasses.field(default_factory=lambda: PROFILES["generic"])
    image: str = "ghcr.io/spotrun/spotrun:0.1.0"
    default_retries: int = 0
    default_max_interruptions: int = 20
    log_format: str = "text"
    metrics_port: int = 8080
    api_qps: int = 200
    api_burst: int = 300
    workers: int = 8
    leader_election: bool = True
    lease_namespace: str = "spotrun-system"
    lease_name: str = "spotrun-operator"
    identity: str = ""
    prices: Prices = dataclasses.field(default_factory=Prices)

    @property
    def notice_taints(self) -> Mapping[str, int]:
        return self.profile.get("noticeTaints") or NOTICE_TAINTS

    @property
    def drain_taints(self) -> tuple[str, ...]:
        return tuple(self.profile.get("drainTaints") or DRAIN_TAINTS)

    @property
    def spot_labels(self) -> Mapping[str, str]:
        """The labels that make a node spot in this profile (its spot nodeSelector)."""
        return (self.profile.get("spot") or {}).get("nodeSelector") or {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        profile_name = env.get("SPOTRUN_CAPACITY_PROFILE", "generic")
        profile_file = env.get("SPOTRUN_CAPACITY_PROFILE_FILE", "")
        if profile_file:
            try:
                profile = json.loads(Path(profile_file).read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(f"SPOTRUN_CAPACITY_PROFILE_FILE={profile_file}: {err}") from err
            profile_name = "custom"
        elif profile_name in PROFILES:
            profile = PROFILES[profile_name]
        else:
            raise ConfigError(
                f"SPOTRUN_CAPACITY_PROFILE={profile_name!r} is not one of {', '.join(PROFILES)}; "
                "or set SPOTRUN_CAPACITY_PROFILE_FILE"
            )
        prefix = env.get("SPOTRUN_CHECKPOINT_PREFIX", "")
        if prefix and not prefix.startswith("s3://"):
            raise ConfigError(f"SPOTRUN_CHECKPOINT_PREFIX={prefix!r} must be s3://BUCKET/PREFIX/")
        log_format = env.get("SPOTRUN_LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"SPOTRUN_LOG_FORMAT={log_format!r} must be text or json")
        return cls(
            namespaces=tuple(n.strip() for n in env.get("SPOTRUN_NAMESPACES", "").split(",") if n.strip()),
            checkpoint_prefix=prefix,
            checkpoint_secret=env.get("SPOTRUN_CHECKPOINT_SECRET", ""),
            profile_name=profile_name,
            profile=profile,
            image=env.get("SPOTRUN_IMAGE", cls.image),
            default_retries=_int(env, "SPOTRUN_DEFAULT_RETRIES", 0),
            default_max_interruptions=_int(env, "SPOTRUN_DEFAULT_MAX_INTERRUPTIONS", 20),
            log_format=log_format,
            metrics_port=_int(env, "SPOTRUN_METRICS_PORT", 8080),
            api_qps=_int(env, "SPOTRUN_API_QPS", cls.api_qps),
            api_burst=_int(env, "SPOTRUN_API_BURST", cls.api_burst),
            workers=max(1, _int(env, "SPOTRUN_WORKERS", cls.workers)),
            leader_election=_bool(env, "SPOTRUN_LEADER_ELECTION", True),
            lease_namespace=env.get("SPOTRUN_LEASE_NAMESPACE") or _own_namespace() or cls.lease_namespace,
            lease_name=env.get("SPOTRUN_LEASE_NAME") or cls.lease_name,
            identity=env.get("SPOTRUN_POD_NAME") or socket.gethostname(),
            prices=Prices.parse(env.get("SPOTRUN_PRICES", "")),
        )


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """The namespace of the pod the operator runs in, as its ServiceAccount token's mount says."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return ""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name}={env[name]!r} must be true or false")
    return raw == "true"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must be 0 or more")
    return value
