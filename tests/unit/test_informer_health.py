"""An informer whose watch fails lists again, and one that keeps failing shows: in /readyz and metrics."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from spotrun_operator.__main__ import _serve_liveness
from spotrun_operator.cache import Informer, Store, describe

Obj = dict[str, Any]


class Gone(Exception):
    """410: the watch's version is too old."""


class Forbidden(Exception):
    """As the API module raises it: status, reason and the JSON body of a Status."""

    status, reason = 403, "Forbidden"
    body = '{"kind": "Status", "message": "nodes is forbidden: cannot watch resource \\"nodes\\""}'


def node(name: str, version: int) -> Obj:
    return {"metadata": {"name": name, "resourceVersion": str(version)}}


class Server:
    """Lists always work and return what `nodes` holds now; each watch takes the next script entry
    (an exception to raise, or events), and once the script is done the watch blocks."""

    def __init__(self, nodes: list[Obj], watches: list[Any]) -> None:
        self.nodes, self.watches = nodes, watches
        self.listed = 0
        self.watched_from: list[str] = []
        self.idle = threading.Event()

    def list(self, kind: str, namespace: str | None, selector: str, trim: Any = None) -> tuple[list[Obj], str]:
        self.listed += 1
        return list(self.nodes), str(100 + self.listed)

    def watch(self, kind: str, namespace: str | None, selector: str, version: str, timeout: int) -> Iterator[Any]:
        self.watched_from.append(version)
        if not self.watches:
            self.idle.set()
            threading.Event().wait(10)
            return
        step = self.watches.pop(0)
        if callable(step):
            step = step()
        if isinstance(step, Exception):
            raise step
        yield from step


def test_a_failed_watch_lists_again_so_a_node_added_meanwhile_reaches_the_cache() -> None:
    def node_added_then_forbidden() -> Exception:
        server.nodes.append(node("b", 2))  # added while the watch fails: only a list can bring it
        return Forbidden()

    server = Server([node("a", 1)], [node_added_then_forbidden, Forbidden()])
    store = Store()
    informer = Informer("nodes", store, server.list, server.watch, backoff=0.001, gone=Gone)
    informer.start()
    assert server.idle.wait(10)
    informer.stop()
    assert server.listed == 3  # the first list, and one after each failed watch
    assert server.watched_from == ["101", "102", "103"]  # each watch from its list's version
    assert sorted(store.all_keys()) == [("", "a"), ("", "b")]
    assert informer.failures == 2
    assert informer.last_error == '403 Forbidden: nodes is forbidden: cannot watch resource "nodes"'


def _healthy_sample(kind: str) -> float | None:
    return REGISTRY.get_sample_value("spotrun_informer_healthy", {"kind": kind, "namespace": "watched"})


def _failures_sample(kind: str) -> float:
    return REGISTRY.get_sample_value("spotrun_informer_failures_total", {"kind": kind, "namespace": "watched"}) or 0.0


def test_an_informer_whose_watch_keeps_failing_is_unready_after_the_bound_and_ready_once_it_works() -> None:
    now = [0.0]
    server = Server([node("a", 1)], [Forbidden()] * 5 + [[("MODIFIED", node("a", 7))]])
    failures_before = _failures_sample("failing-things")
    informer = Informer(
        "failing-things",
        Store(),
        server.list,
        server.watch,
        namespace="watched",
        unhealthy_after=60.0,
        backoff=0.001,
        clock=lambda: now[0],
        gone=Gone,
    )
    assert informer.unready() == "failing-things in watched: not listed yet"
    informer.start()
    assert server.idle.wait(10)
    informer.stop()
    # Every watch failed but the last: within the bound it is still ready; the metrics count each.
    assert _failures_sample("failing-things") == failures_before + 5
    assert informer.unready() == ""
    assert _healthy_sample("failing-things") == 1.0

    failing = Informer(
        "failing-things",
        Store(),
        Server([node("a", 1)], []).list,
        Server([], [Forbidden()] * 3).watch,
        namespace="watched",
        unhealthy_after=60.0,
        backoff=0.001,
        clock=lambda: now[0],
        gone=Gone,
    )
    failing._relist()
    for _ in range(3):
        failing._failed(Forbidden())
    assert failing.unready() == ""
    now[0] = 61.0  # the failures have lasted longer than the bound: it says so, and why
    assert failing.unready() == (
        "failing-things in watched: 3 lists and watches in a row failed over 61s; the last: 403 Forbidden: "
        'nodes is forbidden: cannot watch resource "nodes"'
    )
    failing.start()  # the series belongs to the started informer
    failing.stop()
    assert _healthy_sample("failing-things") == 0.0
    failing._worked()
    assert failing.unready() == ""
    assert _healthy_sample("failing-things") == 1.0


def test_a_list_that_never_worked_says_why_it_is_not_ready() -> None:
    def forbidden_list(*_: Any, **__: Any) -> tuple[list[Obj], str]:
        raise Forbidden()

    informer = Informer("pods", Store(), forbidden_list, Server([], []).watch, namespace="tasks", backoff=0.001)
    informer._failed(Forbidden())
    assert informer.unready() == (
        "pods in tasks: not listed yet; the last attempt failed: 403 Forbidden: nodes is forbidden: cannot watch "
        'resource "nodes"'
    )


def test_describe_keeps_one_line_of_any_error() -> None:
    assert describe(ConnectionResetError("reset by peer\nmore")) == "reset by peer"
    assert describe(TimeoutError()) == "TimeoutError"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_readyz_beside_healthz_fails_with_the_reasons_while_a_cache_is_unready() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reasons = ["nodes: not listed yet; the last attempt failed: 403 Forbidden"]
    _serve_liveness(f"http://127.0.0.1:{port}/healthz", lambda: True, lambda: list(reasons))
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")  # a restart would not mend RBAC
    assert _get(f"http://127.0.0.1:{port}/readyz") == (503, reasons[0] + "\n")
    reasons.clear()
    assert _get(f"http://127.0.0.1:{port}/readyz") == (200, "ok\n")
    assert _get(f"http://127.0.0.1:{port}/other")[0] == 500
