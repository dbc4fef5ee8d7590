"""Watch caches: stores that never go back in time, informers that list, watch, relist and recover."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from spotrun_operator import names
from spotrun_operator.api import Gone, RateLimiter
from spotrun_operator.cache import Informer, PodStore, Store, compact, node_ready, trim_pod

Obj = dict[str, Any]


def obj(name: str, version: int, ns: str = "ns", **extra: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(version)}, **extra}


def pod(name: str, version: int, taskrun: str, node: str = "", ns: str = "ns") -> Obj:
    meta = {
        "name": name,
        "namespace": ns,
        "resourceVersion": str(version),
        "labels": {names.LABEL_TASKRUN: taskrun},
        "ownerReferences": [
            {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": taskrun, "uid": "u", "controller": True}
        ],
        "managedFields": [{"big": "x" * 1000}],
    }
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "c"}]}, "status": {"phase": "Running"}}


def test_a_store_keeps_the_newer_copy_so_an_own_write_is_not_undone_by_an_older_event() -> None:
    store = Store()
    assert store.put(obj("a", 5)) == (None, True)
    store.put(obj("a", 7, status={"attempt": 2}))  # what the operator wrote
    old, stored = store.put(obj("a", 6))  # the watch delivers an intermediate version late
    assert not stored
    assert old is not None
    assert old["metadata"]["resourceVersion"] == "7"
    assert store.put(obj("a", 7))[1] is False  # the same version again: nothing changed
    assert store.put(obj("a", 8))[1] is True


def test_a_relist_drops_what_is_gone_and_keeps_newer_own_writes() -> None:
    store = Store()
    store.put(obj("a", 5))
    store.put(obj("b", 9))
    before, now = store.replace([obj("b", 8), obj("c", 3)])
    assert {o["metadata"]["name"] for o in before} == {"a", "b"}
    assert {(o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in now} == {("b", "9"), ("c", "3")}
    assert store.get(("ns", "a")) is None


def test_a_relist_from_an_older_snapshot_does_not_drop_a_newer_pod() -> None:
    store = PodStore()
    store.put(trim_pod(pod("t-a1-r0", 10, "t", node="n1")))
    store.put(trim_pod(pod("t-a1-r1", 12, "t", node="n2")))  # created by the operator after the list's snapshot
    store.put(trim_pod(pod("old", 4, "t")))
    _, now = store.replace([trim_pod(pod("t-a1-r0", 10, "t", node="n1"))], "11")
    assert {p["metadata"]["name"] for p in now} == {"t-a1-r0", "t-a1-r1"}  # "old" (4 <= 11) is gone
    assert [p["metadata"]["name"] for p in store.of_taskrun("ns", "t")] == ["t-a1-r0", "t-a1-r1"]
    assert store.taskruns_on_node("n2") == {("ns", "t")}
    # A later list that knows the pod's version and lacks it says it is gone.
    store.replace([trim_pod(pod("t-a1-r0", 10, "t", node="n1"))], "12")
    assert [p["metadata"]["name"] for p in store.of_taskrun("ns", "t")] == ["t-a1-r0"]


def test_an_informers_relist_keeps_what_the_operator_wrote_after_the_lists_snapshot() -> None:
    store = PodStore()
    store.put(trim_pod(pod("t-a1", 20, "t")))  # the operator's create, from its response
    lists = iter([([trim_pod(pod("u-a1", 5, "u"))], "15")])
    informer = Informer("pods", store, lambda *a, **k: next(lists), lambda *a: iter(()))
    informer._relist()
    assert {p["metadata"]["name"] for p in store.values()} == {"t-a1", "u-a1"}


def test_the_pod_store_indexes_pods_by_taskrun_and_node_and_follows_moves() -> None:
    store = PodStore()
    store.put(trim_pod(pod("t-a1", 1, "t")))
    store.put(trim_pod(pod("t-a2", 2, "t", node="n1")))
    store.put(trim_pod(pod("u-a1", 3, "u", node="n1")))
    assert [p["metadata"]["name"] for p in store.of_taskrun("ns", "t")] == ["t-a1", "t-a2"]
    assert store.taskruns_on_node("n1") == {("ns", "t"), ("ns", "u")}
    store.put(trim_pod(pod("t-a1", 4, "t", node="n2")))  # scheduled
    assert store.taskruns_on_node("n2") == {("ns", "t")}
    store.remove(("ns", "u-a1"))
    assert store.taskruns_on_node("n1") == {("ns", "t")}
    store.replace([])
    assert store.of_taskrun("ns", "t") == []
    assert store.taskruns_on_node("n2") == set()


def test_a_trimmed_pod_keeps_what_the_operator_reads_and_drops_the_rest() -> None:
    full = pod("t-a1", 1, "t", node="n1")
    full["spec"]["initContainers"] = [{"name": "sync", "restartPolicy": "Always", "image": "i"}]
    trimmed = trim_pod(full)
    assert "managedFields" not in trimmed["metadata"]
    assert trimmed["spec"] == {"nodeName": "n1", "initContainers": [{"name": "sync", "restartPolicy": "Always"}]}
    assert trimmed["status"] == full["status"]
    assert trimmed["metadata"]["labels"] == full["metadata"]["labels"]


def test_a_trimmed_pod_keeps_its_containers_memory_and_nothing_else_of_them() -> None:
    full = pod("t-a1", 1, "t", node="n1")
    full["spec"]["containers"] = [
        {
            "name": "task",
            "image": "i",
            "env": [{"name": "A", "value": "1"}],
            "resources": {
                "requests": {"memory": "1Gi", "cpu": "2"},
                "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
            },
        },
        {"name": "plain", "image": "i", "resources": {"limits": {"cpu": "1"}}},
    ]
    trimmed = trim_pod(full)
    assert trimmed["spec"]["containers"] == [
        {"name": "task", "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}}
    ]


def test_cached_objects_decoded_apart_share_their_keys_and_short_strings_and_keep_their_values() -> None:
    # As two watch events decode them: equal strings, different objects.
    first, second = (json.loads(json.dumps(pod(f"t-a{n}", n, "t", node="n1"))) for n in (1, 2))
    a, b = trim_pod(first), trim_pod(second)
    assert a == trim_pod(json.loads(json.dumps(first)))
    key_a, key_b = (next(k for k in x["status"] if k == "phase") for x in (a, b))
    assert key_a is key_b
    assert a["metadata"]["namespace"] is b["metadata"]["namespace"]
    assert a["spec"]["nodeName"] is b["spec"]["nodeName"]
    long = "x" * 1000
    assert compact({"m": long, "n": [1, None, True, 2.5]}) == {"m": long, "n": [1, None, True, 2.5]}


def test_node_readiness_is_the_ready_condition() -> None:
    assert node_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not node_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    assert not node_ready({})


class Source:
    """An API server's lists and watches, scripted: each watch call takes the next script entry."""

    def __init__(self, lists: list[tuple[list[Obj], str]], watches: list[list[tuple[str, Obj]] | Exception]) -> None:
        self.lists, self.watches = lists, watches
        self.listed: list[str] = []
        self.watched_from: list[str] = []
        self.done = threading.Event()

    def list(
        self, kind: str, namespace: str | None, selector: str, trim: Callable[[Obj], Obj] = lambda o: o
    ) -> tuple[list[Obj], str]:
        items, version = self.lists.pop(0)
        self.listed.append(version)
        return [trim(o) for o in items], version

    def watch(self, kind: str, namespace: str | None, selector: str, version: str, timeout: int) -> Iterator[Any]:
        self.watched_from.append(version)
        if not self.watches:
            self.done.set()
            threading.Event().wait(10)
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


def test_an_informer_lists_watches_from_the_last_version_and_lists_again_when_too_old() -> None:
    source = Source(
        lists=[([obj("a", 1), obj("b", 2)], "10"), ([obj("b", 12), obj("c", 13)], "20")],
        watches=[
            [("MODIFIED", obj("a", 11)), ("BOOKMARK", {"metadata": {"resourceVersion": "15"}})],
            [("DELETED", obj("a", 16))],
            Gone("too old"),
        ],
    )
    store = Store()
    changes: list[tuple[str, str]] = []
    informer = Informer(
        "things",
        store,
        source.list,
        source.watch,
        on_change=lambda kind, old, new: changes.append((kind, (new or old or {})["metadata"]["name"])),
        gone=Gone,
    )
    informer.start()
    assert source.done.wait(10)
    informer.stop()
    assert source.listed == ["10", "20"]
    assert source.watched_from == ["10", "15", "16", "20"]  # the bookmark moved the version on
    assert changes == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
        ("MODIFIED", "b"),  # the relist: b changed, c is new
        ("ADDED", "c"),
    ]
    assert sorted(store.all_keys()) == [("ns", "b"), ("ns", "c")]
    assert informer.synced.is_set()


def test_an_informer_has_its_list_trimmed_page_by_page_and_stores_each_object_trimmed_once() -> None:
    # A relist of thousands must never be held as the server sent it: the lister trims as pages come.
    source = Source(lists=[([obj("a", 1), obj("b", 2)], "10")], watches=[])
    trimmed: list[str] = []

    def trim(o: Obj) -> Obj:
        trimmed.append(o["metadata"]["name"])
        return {"metadata": o["metadata"], "trimmed": True}

    store = Store()
    informer = Informer("things", store, source.list, source.watch, trim=trim, gone=Gone)
    informer.start()
    assert source.done.wait(10)
    informer.stop()
    assert trimmed == ["a", "b"]
    assert all(store.get(key) == {"metadata": store.get(key)["metadata"], "trimmed": True} for key in store.all_keys())


def test_the_rate_limiter_allows_a_burst_then_spaces_requests_at_qps() -> None:
    now = [0.0]
    limiter = RateLimiter(10, 5, clock=lambda: now[0])
    assert [limiter.reserve() for _ in range(5)] == [0.0] * 5
    waits = [limiter.reserve() for _ in range(3)]
    assert waits == [0.1, 0.2, 0.30000000000000004] or [round(w, 6) for w in waits] == [0.1, 0.2, 0.3]
    now[0] = 10.0  # idle: the bucket fills up to the burst again, no more
    assert [limiter.reserve() for _ in range(5)] == [0.0] * 5
    assert round(limiter.reserve(), 6) == 0.1
    assert RateLimiter(0, 1).reserve() == 0.0
