"""`uninstall-cleanup`: stops the operator first, then removes only Spotrun's finalizers, retrying conflicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from spotrun_operator import cleanup, names

Obj = dict[str, Any]


def obj(namespace: str, name: str, *finalizers: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "resourceVersion": "1",
            "finalizers": list(finalizers),
            "labels": labels or {},
        }
    }


class FakeApi:
    """The few Api methods the cleanup calls, over in-memory objects; `conflicts` writes fail first."""

    def __init__(self, taskruns: list[Obj], pods: list[Obj], conflicts: int = 0, operator_pods: int = 0) -> None:
        self.taskruns, self.pods = taskruns, pods
        self.conflicts = conflicts
        self.operator_pods = operator_pods
        self.calls: list[str] = []

    def _in(self, items: list[Obj], namespace: str | None) -> list[Obj]:
        return [copy.deepcopy(o) for o in items if namespace in (None, o["metadata"]["namespace"])]

    def list_taskruns(self, namespace: str | None) -> list[Obj]:
        self.calls.append(f"list taskruns {namespace}")
        return self._in(self.taskruns, namespace)

    def list_taskrun_pods(self, namespace: str | None) -> list[Obj]:
        return self._in(self.pods, namespace)

    def _release(self, items: list[Obj], seen: Obj, finalizer: str) -> bool:
        if self.conflicts:
            self.conflicts -= 1
            return False
        for stored in items:
            if stored["metadata"]["name"] == seen["metadata"]["name"]:
                stored["metadata"]["finalizers"].remove(finalizer)
        return True

    def release_taskrun(self, taskrun: Obj) -> bool:
        self.calls.append(f"release taskrun {taskrun['metadata']['name']}")
        return self._release(self.taskruns, taskrun, names.FINALIZER)

    def release_pod(self, pod: Obj) -> None:
        self._release(self.pods, pod, names.POD_FINALIZER)

    def scale_deployment_to_zero(self, namespace: str, name: str) -> dict[str, str] | None:
        self.calls.append(f"scale {namespace}/{name}")
        return {"app": "op"}

    def count_pods(self, namespace: str, labels: dict[str, str]) -> int:
        self.operator_pods = max(0, self.operator_pods - 1)
        return self.operator_pods


def test_cleanup_removes_only_spotruns_finalizers_and_deletes_nothing() -> None:
    api = FakeApi(
        [obj("a", "t1", names.FINALIZER, "example.com/keep"), obj("b", "t2", names.FINALIZER), obj("a", "t3")],
        [obj("a", "t1-a1", names.POD_FINALIZER, "example.com/keep"), obj("b", "t2-a1")],
    )
    released = cleanup.release_all(api, [], timeout=5, sleep=lambda _: None)  # type: ignore[arg-type]
    assert sorted(released.taskruns) == ["a/t1", "b/t2"]
    assert released.pods == ["a/t1-a1"]
    assert [t["metadata"]["finalizers"] for t in api.taskruns] == [["example.com/keep"], [], []]
    assert [p["metadata"]["finalizers"] for p in api.pods] == [["example.com/keep"], []]
    assert len(api.taskruns) == 3
    assert len(api.pods) == 2


def test_cleanup_touches_only_the_watched_namespaces() -> None:
    api = FakeApi([obj("a", "t1", names.FINALIZER), obj("b", "t2", names.FINALIZER)], [])
    released = cleanup.release_all(api, ["a"], timeout=5, sleep=lambda _: None)  # type: ignore[arg-type]
    assert released.taskruns == ["a/t1"]
    assert api.taskruns[1]["metadata"]["finalizers"] == [names.FINALIZER]


def test_cleanup_reads_again_after_a_conflict() -> None:
    api = FakeApi([obj("a", "t1", names.FINALIZER)], [obj("a", "t1-a1", names.POD_FINALIZER)], conflicts=2)
    released = cleanup.release_all(api, [], timeout=5, sleep=lambda _: None)  # type: ignore[arg-type]
    assert released.taskruns == ["a/t1"]
    assert api.taskruns[0]["metadata"]["finalizers"] == []
    assert api.pods[0]["metadata"]["finalizers"] == []


def test_cleanup_gives_up_with_a_message_after_its_timeout() -> None:
    api = FakeApi([obj("a", "t1", names.FINALIZER)], [], conflicts=10**6)
    ticks = iter(range(1000))
    with pytest.raises(cleanup.CleanupError, match="still on some objects"):
        cleanup.release_all(api, [], timeout=5, sleep=lambda _: None, clock=lambda: float(next(ticks)))  # type: ignore[arg-type]


def test_stopping_the_operator_waits_until_its_pods_are_gone() -> None:
    api = FakeApi([], [], operator_pods=3)
    cleanup.stop_operator(api, "spotrun-system", "spotrun-operator", timeout=5, sleep=lambda _: None)  # type: ignore[arg-type]
    assert api.calls == ["scale spotrun-system/spotrun-operator"]
    assert api.operator_pods == 0
