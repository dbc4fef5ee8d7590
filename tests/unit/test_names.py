"""Names derived from a TaskRun's name stay valid Kubernetes names and label values, for any valid name."""

from __future__ import annotations

import re

import pytest
from spotrun_operator import names

# apimachinery's IsValidLabelValue and IsDNS1123Subdomain.
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN = re.compile(rf"^{DNS_LABEL}(\.{DNS_LABEL})*$")

# Valid TaskRun names (DNS subdomains) whose cut points land on '.' or '-'.
LONG = [
    "a" * 64,
    "a" * 253,
    "x" * 53 + "." + "y" * 60,
    "x" * 54 + "." + "y" * 60,
    "x" * 62 + "." + "y" * 60,
    "x" * 53 + "-" + "y" * 60,
    ".".join(["ab"] * 84) + "c",
]


@pytest.mark.parametrize("name", ["t", "train", "a" * 63, "a.b-c"])
def test_a_name_that_fits_is_its_own_label_value(name: str) -> None:
    assert names.taskrun_label(name) == name


@pytest.mark.parametrize("name", LONG, ids=[f"len{len(n)}-{i}" for i, n in enumerate(LONG)])
def test_a_long_taskrun_name_gets_a_valid_stable_label_value(name: str) -> None:
    value = names.taskrun_label(name)
    assert len(value) <= 63
    assert LABEL_VALUE.match(value), value
    assert value == names.taskrun_label(name)


def test_long_names_that_share_a_prefix_get_different_label_values() -> None:
    a, b = "p" * 100 + "a", "p" * 100 + "b"
    assert names.taskrun_label(a) != names.taskrun_label(b)


@pytest.mark.parametrize("name", LONG, ids=[f"len{len(n)}-{i}" for i, n in enumerate(LONG)])
@pytest.mark.parametrize("attempt", [1, 10, 12345])
def test_the_pod_name_of_any_valid_taskrun_name_is_a_valid_pod_name(name: str, attempt: int) -> None:
    pod = names.pod_name(name, attempt)
    assert len(pod) <= 63  # also a valid hostname, which the kubelet derives from the pod name
    assert SUBDOMAIN.match(pod), pod
    assert pod.endswith(f"-a{attempt}")


def test_pod_names_differ_per_attempt_and_per_taskrun() -> None:
    a, b = "p" * 100 + "a", "p" * 100 + "b"
    assert len({names.pod_name(a, 1), names.pod_name(a, 2), names.pod_name(b, 1)}) == 3


def test_the_taskrun_of_a_pod_is_its_controller_owner() -> None:
    name = "n" * 200
    meta = {
        "labels": {names.LABEL_TASKRUN: names.taskrun_label(name)},
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "other"},
            {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": name, "controller": True},
        ],
    }
    assert names.taskrun_of(meta) == name
    assert names.taskrun_of({"labels": {names.LABEL_TASKRUN: "x"}}) is None


@pytest.mark.parametrize("name", ["t", "a" * 253])
def test_an_event_name_of_any_taskrun_is_a_valid_name(name: str) -> None:
    event = names.event_name(name, "0123456789ab")
    assert len(event) <= 253
    assert SUBDOMAIN.match(event), event


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("name", [*LONG, "train", "1x", "a.b", "9" * 253], ids=lambda n: f"len{len(n)}-{n[:6]}")
def test_a_gangs_service_and_hostnames_are_valid_dns_labels(name: str) -> None:
    service = names.gang_service(name)
    assert len(service) <= 63
    assert DNS_1035.match(service), service
    host = names.hostname(names.pod_name(name, 12345, 127))
    assert len(host) <= 63
    assert re.match(rf"^{DNS_LABEL}$", host), host


def test_names_changed_to_fit_a_service_name_stay_apart() -> None:
    assert names.gang_service("train") == "train"
    assert len({names.gang_service(n) for n in ("a.b", "a-b", "1x", "g-1x")}) == 4
