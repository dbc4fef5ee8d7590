"""A child is adopted and deleted only when it is the TaskRun's (defect 5 of issue 25): owner
references checked on every adopt, every delete conditional on the UID that was read."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from spotrun_operator import names
from spotrun_operator.api import Conflict, Refused, Taken
from spotrun_operator.config import Config
from spotrun_operator.controller import REASON_BUDGET_TAKEN, Controller

from tests.unit.api_stub import Answer, Request, stub_api

Obj = dict[str, Any]
TASKRUN_UID = "taskrun-uid"
CONFLICT: Answer = (409, {"kind": "Status", "reason": "Conflict", "code": 409})
NOT_FOUND: Answer = (404, {"kind": "Status", "reason": "NotFound", "code": 404})


def child(kind: str, name: str = "train", owner: str = TASKRUN_UID, uid: str = "child-uid") -> Obj:
    refs = [{"apiVersion": names.API_VERSION, "kind": names.KIND, "name": "train", "uid": owner}] if owner else []
    return {
        "kind": kind,
        "metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": "3", "ownerReferences": refs},
    }


def answers(create: Answer, existing: Answer) -> Any:
    """POST answers `create`; a GET answers `existing`; a DELETE succeeds."""

    def answer(request: Request) -> Answer:
        return {"POST": create, "GET": existing}.get(request.method, (200, {"kind": "Status"}))

    return answer


# ----- adopting on a 409 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "adopted"),
    [
        pytest.param(TASKRUN_UID, True, id="the TaskRun's own, from an earlier attempt"),
        pytest.param("other-uid", False, id="of an earlier TaskRun of the same name"),
        pytest.param("", False, id="a user's, no owner"),
    ],
)
def test_a_budget_that_exists_is_adopted_only_when_it_is_the_taskruns(owner: str, adopted: bool) -> None:
    api, _ = stub_api(answers(CONFLICT, (200, child("PodDisruptionBudget", owner=owner))))
    if adopted:
        api.create_budget(child("PodDisruptionBudget"))
    else:
        with pytest.raises(Taken, match="PodDisruptionBudget ns/train exists and is not this TaskRun's"):
            api.create_budget(child("PodDisruptionBudget"))


def test_a_service_of_another_owner_refuses_the_gang_with_what_to_do() -> None:
    api, _ = stub_api(answers(CONFLICT, (200, child("Service", owner=""))))
    with pytest.raises(Refused, match="delete or rename that Service"):
        api.create_service(child("Service"))


# ----- deleting ---------------------------------------------------------------------------------------


def test_a_users_budget_of_the_same_name_is_never_deleted() -> None:
    api, transport = stub_api(answers(CONFLICT, (200, child("PodDisruptionBudget", owner=""))))
    assert api.delete_budget("ns", "train", TASKRUN_UID) is False
    assert transport.sent("DELETE") == []


def test_the_taskruns_budget_is_deleted_by_its_uid() -> None:
    api, transport = stub_api(answers(CONFLICT, (200, child("PodDisruptionBudget", uid="pdb-uid"))))
    assert api.delete_budget("ns", "train", TASKRUN_UID) is True
    (delete,) = transport.sent("DELETE")
    assert delete.body["preconditions"] == {"uid": "pdb-uid"}


@pytest.mark.parametrize("gone", [CONFLICT, NOT_FOUND], ids=["replaced since the read (409)", "gone (404)"])
def test_a_budget_replaced_or_gone_before_its_deletion_is_no_error(gone: Answer) -> None:
    def answer(request: Request) -> Answer:
        return (200, child("PodDisruptionBudget")) if request.method == "GET" else gone

    api, _ = stub_api(answer)
    assert api.delete_budget("ns", "train", TASKRUN_UID) is False


def test_a_pod_of_a_gone_node_is_force_deleted_by_its_uid() -> None:
    api, transport = stub_api(lambda request: CONFLICT if request.method == "DELETE" else (200, {}))
    api.force_delete_pod(child("Pod", uid="pod-uid"))  # a 409: a namesake by now, not this one to delete
    (delete,) = transport.sent("DELETE")
    assert delete.body == {"preconditions": {"uid": "pod-uid"}, "gracePeriodSeconds": 0}


@pytest.mark.parametrize(
    ("write", "preconditions"),
    [
        pytest.param("stop_pod", {"uid": "pod-uid"}, id="a stop"),
        pytest.param("remove_unscheduled_pod", {"uid": "pod-uid", "resourceVersion": "3"}, id="no spot capacity"),
    ],
)
def test_a_pod_is_deleted_only_while_its_name_holds_the_pod_that_was_read(write: str, preconditions: Obj) -> None:
    api, transport = stub_api(lambda request: (200, child("Pod", uid="pod-uid")))
    getattr(api, write)(child("Pod", uid="pod-uid"), "Suspended")
    (delete,) = transport.sent("DELETE")
    assert delete.body["preconditions"] == preconditions


@pytest.mark.parametrize(("answer", "deleted"), [((200, {}), True), (CONFLICT, False), (NOT_FOUND, False)])
def test_a_taskrun_is_deleted_by_its_uid(answer: Answer, deleted: bool) -> None:
    api, transport = stub_api(lambda _: answer)
    assert api.delete_taskrun("ns", "train", TASKRUN_UID) is deleted
    (delete,) = transport.sent("DELETE")
    assert delete.body["preconditions"] == {"uid": TASKRUN_UID}


# ----- the controller: the TTL's fresh read, the budget it does not adopt ------------------------------


def finished(ttl: int = 0, uid: str = TASKRUN_UID) -> Obj:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"namespace": "ns", "name": "train", "uid": uid, "resourceVersion": "9"},
        "spec": {"ttlSecondsAfterFinished": ttl},
        "status": {"phase": names.SUCCEEDED, "completionTime": "2025-01-01T00:00:00Z"},
    }


class FakeApi:
    """What the controller asks of the API in these tests; the informers are never started."""

    def __init__(self, fresh: Obj | None = None, taken: bool = False) -> None:
        self.fresh, self.taken = fresh, taken
        self.deleted: list[tuple[str, str, str]] = []

    def list_objects(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("not started")

    watch_objects = list_objects

    def get_taskrun(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.fresh)

    def delete_taskrun(self, namespace: str, name: str, uid: str) -> bool:
        self.deleted.append((namespace, name, uid))
        return True

    def create_budget(self, body: Obj) -> None:
        if self.taken:
            raise Taken("PodDisruptionBudget", body["metadata"]["namespace"], body["metadata"]["name"])


def controller(api: FakeApi) -> Controller:
    return Controller(api, Config(), workers=0)  # type: ignore[arg-type]


def test_a_taskrun_past_its_ttl_is_deleted_by_its_uid_after_a_fresh_read() -> None:
    api = FakeApi(fresh=finished())
    assert controller(api).delete_expired(finished())
    assert api.deleted == [("ns", "train", TASKRUN_UID)]


def test_a_taskrun_whose_ttl_grew_since_the_cache_saw_it_is_not_deleted() -> None:
    api = FakeApi(fresh=finished(ttl=3600))
    with pytest.raises(Conflict):  # the next pass decides again, on the fresh TaskRun
        controller(api).delete_expired(finished(ttl=0))
    assert api.deleted == []


@pytest.mark.parametrize("fresh", [None, finished(uid="new-uid")], ids=["gone", "a new TaskRun of the same name"])
def test_a_taskrun_gone_or_replaced_before_its_ttl_deletion_is_left_alone(fresh: Obj | None) -> None:
    api = FakeApi(fresh=fresh)
    assert not controller(api).delete_expired(finished())
    assert api.deleted == []


def test_a_budget_name_held_by_another_starts_the_attempt_with_a_warning() -> None:
    ctl = controller(FakeApi(taken=True))
    budget = child("PodDisruptionBudget")
    assert ctl._ensure_budget(finished(), budget) is False  # status must not name it: nothing deletes it
    (_, kind, reason, message) = ctl.events._queue.get_nowait()  # type: ignore[misc]
    assert (kind, reason) == ("Warning", REASON_BUDGET_TAKEN)
    assert "a drain may evict the pod without waiting for a checkpoint" in message
    assert "PodDisruptionBudget train exists and is not this TaskRun's" in message
