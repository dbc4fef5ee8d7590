"""Stop, notice and no-spot annotations are written only on the pod as the pass read it (defect 9 of
issue 25): a pod that changed since, say that failed on its own, is a Conflict, never annotated."""

from __future__ import annotations

from typing import Any

import pytest
from spotrun_operator import names
from spotrun_operator.api import Api, Conflict

from tests.unit.api_stub import Answer, Request, stub_api

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"


def pod(rv: str = "5", node: str = "") -> Obj:
    spec = {"nodeName": node} if node else {}
    return {"metadata": {"namespace": "ns", "name": "train-a1", "uid": "pod-uid", "resourceVersion": rv}, "spec": spec}


def server(current_rv: str, bound: str = "") -> Any:
    """Answers as an API server holding the pod at `current_rv`: a merge patch that names another
    resourceVersion is a 409, as the apiserver's optimistic concurrency makes it."""

    def answer(request: Request) -> Answer:
        if request.method == "PATCH":
            if request.body["metadata"].get("resourceVersion") != current_rv:
                return 409, {"kind": "Status", "reason": "Conflict", "code": 409}
            return 200, {**pod(str(int(current_rv) + 1), bound), "kind": "Pod"}
        return 200, {**pod(str(int(current_rv) + 2), bound), "kind": "Pod"}

    return answer


def stop(api: Api, old: Obj) -> Any:
    return api.stop_pod(old, names.REASON_SUSPENDED)


def notify(api: Api, old: Obj) -> Any:
    return api.notify_pod(old, "drain:2025-01-01T00:00:00Z:node drained")


def reschedule(api: Api, old: Obj) -> Any:
    return api.remove_unscheduled_pod(old, names.REASON_NO_SPOT_CAPACITY)


WRITES = [
    pytest.param(stop, names.ANNOTATION_STOPPED_BY, id="stop"),
    pytest.param(notify, names.ANNOTATION_NOTICE, id="notice"),
    pytest.param(reschedule, names.ANNOTATION_STOPPED_BY, id="no spot capacity"),
]


@pytest.mark.parametrize(("write", "annotation"), WRITES)
def test_an_annotation_carries_the_resource_version_of_the_pod_as_read(write: Any, annotation: str) -> None:
    api, transport = stub_api(server("5"))
    write(api, pod("5"))
    patch = transport.sent("PATCH")[0]
    assert patch.content_type == MERGE  # a strategic merge patch would not check the resourceVersion
    assert patch.body["metadata"]["resourceVersion"] == "5"
    assert annotation in patch.body["metadata"]["annotations"]


@pytest.mark.parametrize(("write", "annotation"), WRITES)
def test_a_pod_that_changed_since_it_was_read_is_a_conflict_and_is_left_alone(write: Any, annotation: str) -> None:
    api, transport = stub_api(server("7"))  # it failed on its own at 6, its status was written at 7
    with pytest.raises(Conflict):
        write(api, pod("5"))
    assert transport.sent("DELETE") == []


def test_a_pod_gone_before_its_stop_is_no_error() -> None:
    api, transport = stub_api(lambda _: (404, {"kind": "Status", "code": 404}))
    assert stop(api, pod("5")) is None
    assert transport.sent("DELETE") == []


def test_a_removal_of_an_unscheduled_pod_is_conditional_on_the_annotated_version() -> None:
    api, transport = stub_api(server("5"))
    reschedule(api, pod("5"))
    (delete,) = transport.sent("DELETE")
    assert delete.body["preconditions"]["resourceVersion"] == "6"


def test_a_pod_bound_meanwhile_is_not_removed() -> None:
    api, transport = stub_api(server("5", bound="node-1"))
    assert reschedule(api, pod("5")) is None
    assert transport.sent("DELETE") == []
