"""The Events thread outlives any failure to post one (defect 8 of issue 25), and liveness sees it."""

from __future__ import annotations

import threading
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from spotrun_operator import metrics
from spotrun_operator.config import Config
from spotrun_operator.controller import Controller, Events

Obj = dict[str, Any]
TASKRUN = {"metadata": {"namespace": "ns", "name": "train", "uid": "u", "resourceVersion": "1"}}


class FlakyApi:
    """Fails the first Events with `errors`, then posts."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.posted: list[str] = []
        self.done = threading.Event()

    def post_event(self, taskrun: Obj, kind: str, reason: str, message: str) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.posted.append(reason)
        self.done.set()

    def list_objects(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("not started")

    watch_objects = list_objects


def failed() -> float:
    return metrics.EVENTS_FAILED._value.get()  # type: ignore[no-any-return]


def test_the_events_thread_outlives_a_connection_error() -> None:
    refused = urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/ns/events", "Connection refused")  # type: ignore[arg-type]
    api = FlakyApi(refused, ApiException(status=500, reason="Internal Server Error"), OSError("reset"))
    events = Events(api)  # type: ignore[arg-type]
    before = failed()
    events.start()
    try:
        for reason in ("First", "Second", "Third", "Fourth"):
            events.post(TASKRUN, "Normal", reason, "m")
        assert api.done.wait(10), "the Events thread died on the first failures"
        assert api.posted == ["Fourth"]
        assert events.alive()
        assert failed() - before == 3
    finally:
        events.stop()
        events.thread.join(5)


def test_liveness_covers_the_events_thread() -> None:
    ctl = Controller(FlakyApi(), Config(), workers=0)  # type: ignore[arg-type]
    ctl.informers = []  # never started here: only the Events thread is in question
    assert ctl.alive()  # a standby's: not started yet
    ctl.events.start()
    assert ctl.alive()
    ctl.events.stop()
    ctl.events.thread.join(5)
    assert not ctl.alive()


class SlowApi(FlakyApi):
    """Each post takes 50 ms, as Events at 20 a second do."""

    def post_event(self, taskrun: Obj, kind: str, reason: str, message: str) -> None:
        threading.Event().wait(0.05)
        super().post_event(taskrun, kind, reason, message)


def test_a_stopped_events_thread_drops_what_waits_instead_of_posting_it() -> None:
    """A replica that stops leading must stop writing: a full queue of Events is dropped, not posted
    for minutes (nor does a full queue lose the stop)."""
    api = SlowApi()
    events = Events(api, size=50)  # type: ignore[arg-type]
    for n in range(60):  # ten more than fit: the queue is full
        events.post(TASKRUN, "Normal", f"E{n}", "m")
    events.start()
    events.stop()
    events.thread.join(1.0)
    assert not events.thread.is_alive(), "the Events thread kept posting after stop()"
    assert len(api.posted) <= 1
