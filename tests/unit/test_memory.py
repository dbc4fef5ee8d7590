"""Kubernetes quantities and the memory of the attempt after an OOM kill: table tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from spotrun_operator import memory

Obj = dict[str, Any]
CAPTURED = Path(__file__).resolve().parent / "pod_statuses"


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("1G", 10**9),
        ("500M", 5 * 10**8),
        ("128974848", 128974848),
        (128974848, 128974848),
        ("1e9", 10**9),
        ("1.5E3", 1500),
        ("100k", 100_000),
        ("0.5Ki", 512),
        ("1500m", 2),  # a milli-byte quantity rounds up, as the API server rounds memory
        (" 64Mi ", 64 * 2**20),
    ],
)
def test_a_quantity_is_read_as_the_api_server_reads_it(text: str | int, count: int) -> None:
    assert memory.parse_quantity(text) == count


@pytest.mark.parametrize("text", ["lots", "", "1 Gi", "1GB", "Gi", "1.2.3Mi", True, None, [1]])
def test_what_is_not_a_quantity_is_refused_naming_it(text: Any) -> None:
    with pytest.raises(ValueError, match="is not a quantity"):
        memory.parse_quantity(text)


@pytest.mark.parametrize(
    ("count", "text"),
    [(2**30, "1Gi"), (3 * 2**29, "1536Mi"), (96 * 2**20, "96Mi"), (10**9, "1000000000"), (0, "0")],
)
def test_bytes_are_written_in_the_largest_whole_binary_unit(count: int, text: str) -> None:
    assert memory.format_bytes(count) == text


def spec(*containers: Obj, init: list[Obj] | None = None) -> Obj:
    body: Obj = {"containers": list(containers)}
    if init:
        body["initContainers"] = init
    return body


def container(name: str, requests: str | None = None, limits: str | None = None, cpu: str | None = None) -> Obj:
    resources: Obj = {}
    if requests:
        resources["requests"] = {"memory": requests}
    if limits:
        resources["limits"] = {"memory": limits}
    if cpu:
        resources.setdefault("limits", {})["cpu"] = cpu
    return {"name": name, "image": "img", "resources": resources}


@pytest.mark.parametrize(
    ("policy", "kills", "before", "after"),
    [
        # No policy, or no kill yet: unchanged.
        (None, 2, container("t", "1Gi", "2Gi"), container("t", "1Gi", "2Gi")),
        ({"factor": 2}, 0, container("t", "1Gi", "2Gi"), container("t", "1Gi", "2Gi")),
        # Each kill multiplies: 1.5, then 2.25.
        ({"factor": 1.5}, 1, container("t", "512Mi", "1Gi"), container("t", "768Mi", "1536Mi")),
        ({"factor": 1.5}, 2, container("t", "512Mi", "1Gi"), container("t", "1152Mi", "2304Mi")),
        # The default factor is 1.5.
        ({}, 1, container("t", "1Gi", "1Gi"), container("t", "1536Mi", "1536Mi")),
        # Capped at maxMemory, both request and limit, so the request never exceeds the limit.
        ({"factor": 3, "maxMemory": "128Mi"}, 1, container("t", "32Mi", "64Mi"), container("t", "96Mi", "128Mi")),
        ({"factor": 4, "maxMemory": "2Gi"}, 3, container("t", "1Gi", "1Gi"), container("t", "2Gi", "2Gi")),
        ({"factor": 2, "maxMemory": 2**31}, 1, container("t", None, "1.5Gi"), container("t", None, "2Gi")),
        # Never below what the template asks: a template over the cap keeps its own.
        ({"factor": 2, "maxMemory": "1Gi"}, 1, container("t", "4Gi", "4Gi"), container("t", "4Gi", "4Gi")),
        # A container without a limit gets none; without a request, none either.
        ({"factor": 2}, 1, container("t", "100Mi"), container("t", "200Mi")),
        ({"factor": 2}, 1, container("t"), container("t")),
        # Rounded up to the MiB; decimal units too.
        ({"factor": 1.1}, 1, container("t", "100M", "100M"), container("t", "105Mi", "105Mi")),
        # CPU is left alone.
        ({"factor": 2}, 1, container("t", "1Gi", "1Gi", cpu="2"), {**container("t", "2Gi", "2Gi", cpu="2")}),
    ],
)
def test_the_next_attempt_after_oom_kills_gets_more_memory(
    policy: Obj | None, kills: int, before: Obj, after: Obj
) -> None:
    original = spec(before)
    scaled = memory.scale(original, kills, policy)
    assert scaled == spec(after)
    assert original == spec(before), "the template given is not changed"


def test_every_container_is_scaled_init_containers_too() -> None:
    scaled = memory.scale(
        spec(container("a", "1Gi", "1Gi"), container("b", limits="256Mi"), init=[container("setup", "128Mi")]),
        1,
        {"factor": 2},
    )
    assert memory.of_pod({"spec": scaled}) == {
        "setup": {"requests": "256Mi"},
        "a": {"requests": "2Gi", "limits": "2Gi"},
        "b": {"limits": "512Mi"},
    }


def test_the_memory_a_pod_ran_with_lists_only_containers_with_memory_set() -> None:
    assert memory.of_pod({"spec": spec(container("t"), container("u", "64Mi"))}) == {"u": {"requests": "64Mi"}}
    assert memory.of_pod(None) == {}


def test_an_oom_kill_is_read_from_the_pod_as_the_real_kubelet_wrote_it() -> None:
    oom = json.loads((CAPTURED / "real" / "oomkilled.json").read_text())
    assert memory.oom_killed(oom)
    for other in (
        "real/exit-1",
        "real/preempted",
        "real/succeeded",
        "upstream/evicted-node-disk-pressure-no-condition",
    ):
        assert not memory.oom_killed(json.loads((CAPTURED / f"{other}.json").read_text())), other
    assert not memory.oom_killed(None)


def test_a_memory_pressure_eviction_of_a_container_over_its_request_is_read_as_an_oom_kill() -> None:
    evicted = json.loads((CAPTURED / "upstream" / "evicted-node-memory-pressure.json").read_text())
    assert memory.evicted_over_request(evicted) == ["main"]  # "Container main was using 6Gi, request is 1Gi, ..."
    assert memory.oom_killed(evicted)
    # Only the DisruptionTarget carries the message (a status written without it): still read.
    evicted["status"]["message"] = ""
    assert memory.evicted_over_request(evicted) == ["main"]
    # Memory pressure, but no container over its request (all BestEffort within it, or none named).
    evicted["status"]["conditions"] = []
    evicted["status"]["message"] = (
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. "
    )
    assert not memory.oom_killed(evicted)
    # A container over its request of another resource is no memory matter.
    evicted["status"]["message"] += (
        "Container main was using 9Gi, request is 1Gi, has larger consumption of ephemeral-storage. "
    )
    assert not memory.oom_killed(evicted)
