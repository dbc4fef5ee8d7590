"""Watch caches: what the operator knows of TaskRuns, their pods and the Nodes, kept by list+watch.

An `Informer` per kind lists once, then watches from the list's resourceVersion (bookmarks on,
the server ends each watch after WATCH_SECONDS and it goes on from the last version seen), lists
again when its version is too old (410), and after any other error lists again too, after a backoff
(as client-go's reflector starts ListAndWatch over): a cache that only retries its watch would stay
as it was for as long as the watch fails. A watch that keeps failing shows: `unready()` says so
once it has failed for longer than UNHEALTHY_AFTER (the operator's /readyz), and the metrics
spotrun_informer_failures_total and spotrun_informer_healthy count it. Each change goes into a
`Store` and to a callback that wakes the TaskRuns concerned. Passes read the stores and make no
request.

Objects are trimmed to what the operator reads (`trim_pod`, `node_ready`): a Node's Ready
condition, not its images; a pod's status and identity, not its spec; and their repeated strings
are shared (`compact`). The operator's own writes go in at once (`Store.put`), so that the next
pass never starts from an older copy than the one it wrote; a watch event older than what is
stored is ignored (resourceVersions of one kind compare as integers; KEP-5504).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from spotrun_operator import metrics, names

Obj = dict[str, Any]
Key = tuple[str, str]
log = logging.getLogger("spotrun.cache")

WATCH_SECONDS = 300  # the server ends a watch after this long (it picks 5-10 min itself without it)
# How long an informer's lists and watches may keep failing before it counts as unhealthy: longer
# than the API server takes to restart, shorter than anyone would wait for a stale cache.
UNHEALTHY_AFTER = 60.0


def key_of(obj: Obj) -> Key:
    meta = obj["metadata"]
    return str(meta.get("namespace", "")), str(meta["name"])


def _version(obj: Obj | None) -> int | None:
    try:
        return int((obj or {})["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def newer(candidate: Obj, stored: Obj | None) -> bool:
    """Whether `candidate` replaces `stored`: newer by resourceVersion, or not comparable."""
    mine, theirs = _version(candidate), _version(stored)
    return mine is None or theirs is None or mine > theirs


_POD_META = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


def compact(value: Any) -> Any:
    """The same JSON value with its keys and short strings interned. A JSON decoder makes a new
    string for every key and value of every object, and thousands of cached pods and TaskRuns
    repeat the same keys and most values (namespaces, node names, reasons, timestamps to the
    second): shared, the caches take less than half the memory (bench/cache_memory.py)."""
    if isinstance(value, dict):
        return {sys.intern(k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, str) and len(value) <= _INTERNED_LENGTH:
        return sys.intern(value)
    return value


_INTERNED_LENGTH = 64  # longer strings (messages, termination results) are seldom repeated


def trim_pod(pod: Obj) -> Obj:
    """What reconcile, classify and the metrics read of a pod; the rest (its spec, managedFields) is
    dropped, so that thousands of pods cost little memory."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    trimmed_spec: Obj = {"nodeName": spec["nodeName"]} if spec.get("nodeName") else {}
    # Of containers: native sidecars (classify), and memory (the attempt's history records it).
    for kind in ("initContainers", "containers"):
        kept = [c for c in (_trim_container(c) for c in spec.get(kind) or []) if len(c) > 1]
        if kept:
            trimmed_spec[kind] = kept
    trimmed: Obj = compact(
        {
            "metadata": {k: meta[k] for k in _POD_META if k in meta},
            "spec": trimmed_spec,
            "status": pod.get("status") or {},
        }
    )
    return trimmed


def _trim_container(container: Obj) -> Obj:
    kept: Obj = {"name": container.get("name")}
    if container.get("restartPolicy"):
        kept["restartPolicy"] = container["restartPolicy"]
    resources = container.get("resources") or {}
    memory = {
        k: {"memory": resources[k]["memory"]} for k in ("requests", "limits") if (resources.get(k) or {}).get("memory")
    }
    if memory:
        kept["resources"] = memory
    return kept


def trim_taskrun(taskrun: Obj) -> Obj:
    meta = {k: v for k, v in (taskrun.get("metadata") or {}).items() if k != "managedFields"}
    trimmed: Obj = compact({**taskrun, "metadata": meta})
    return trimmed


def node_ready(node: Obj) -> bool:
    """Whether a Node's Ready condition is True (False, Unknown: its kubelet is not heard)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class Store:
    """Objects by (namespace, name), safe to read and write from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Key, Obj] = {}

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._items.get(key)

    def put(self, obj: Obj) -> tuple[Obj | None, bool]:
        """Stores `obj` unless what is stored is newer; returns (the previous object, whether stored)."""
        key = key_of(obj)
        with self._lock:
            old = self._items.get(key)
            if not newer(obj, old):
                return old, False
            self._items[key] = obj
            return old, True

    def remove(self, key: Key) -> Obj | None:
        with self._lock:
            return self._items.pop(key, None)

    def replace(self, objects: Iterable[Obj], version: str = "") -> tuple[list[Obj], list[Obj]]:
        """After a (re)list at resourceVersion `version`: the store holds `objects`, and keeps what the
        list cannot know. Returns (stored before, stored now).

        A list is a snapshot, and may be older than what the store holds: the operator's own writes
        (put at once) and what the watch saw after the snapshot. A stored object newer than the list's
        version that the list lacks was created (or changed) after it: it is kept until a watch event
        or a later list says otherwise, as client-go's mutation cache keeps a controller's own writes.
        Dropping it would read as "gone", and a pass would count a live pod as deleted."""
        fresh = {key_of(o): o for o in objects}
        listed = _version({"metadata": {"resourceVersion": version}})
        with self._lock:
            before = list(self._items.values())
            for key, obj in fresh.items():
                old = self._items.get(key)
                if old is not None and not newer(obj, old):  # the same version or newer: keep it, unchanged
                    fresh[key] = old
            for key, old in self._items.items():
                stored = _version(old)
                if key not in fresh and listed is not None and stored is not None and stored > listed:
                    fresh[key] = old
            self._items = fresh
            return before, list(fresh.values())

    def all_keys(self) -> list[Key]:
        with self._lock:
            return list(self._items)

    def values(self) -> list[Obj]:
        with self._lock:
            return list(self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class PodStore(Store):
    """Pods, with an index by TaskRun (namespace, TaskRun name) and by node."""

    def __init__(self) -> None:
        super().__init__()
        self._by_taskrun: dict[Key, set[Key]] = {}
        self._by_node: dict[str, set[Key]] = {}

    @staticmethod
    def _owner(pod: Obj) -> Key | None:
        taskrun = names.taskrun_of(pod["metadata"])
        return None if taskrun is None else (str(pod["metadata"].get("namespace", "")), taskrun)

    def _index(self, pod: Obj, add: bool) -> None:
        key, owner, node = key_of(pod), self._owner(pod), pod.get("spec", {}).get("nodeName")
        for table, index in ((self._by_taskrun, owner), (self._by_node, node)):
            if index is None:
                continue
            members = table.setdefault(index, set())  # type: ignore[arg-type]
            if add:
                members.add(key)
            else:
                members.discard(key)
                if not members:
                    del table[index]  # type: ignore[arg-type]

    def put(self, obj: Obj) -> tuple[Obj | None, bool]:
        with self._lock:
            key = key_of(obj)
            old = self._items.get(key)
            if not newer(obj, old):
                return old, False
            if old is not None:
                self._index(old, add=False)
            self._items[key] = obj
            self._index(obj, add=True)
            return old, True

    def remove(self, key: Key) -> Obj | None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._index(old, add=False)
            return old

    def replace(self, objects: Iterable[Obj], version: str = "") -> tuple[list[Obj], list[Obj]]:
        before, now = super().replace(objects, version)
        with self._lock:
            self._by_taskrun, self._by_node = {}, {}
            for pod in self._items.values():
                self._index(pod, add=True)
        return before, now

    def of_taskrun(self, namespace: str, name: str) -> list[Obj]:
        with self._lock:
            return [self._items[k] for k in sorted(self._by_taskrun.get((namespace, name), ()))]

    def taskruns_on_node(self, node: str) -> set[Key]:
        with self._lock:
            owners = (self._owner(self._items[k]) for k in self._by_node.get(node, ()))
            return {o for o in owners if o is not None}


Callback = Callable[[str, Obj | None, Obj | None], None]  # (event type, old, new)


class Informer:
    """list+watch of one kind into a Store, in a thread of its own.

    `source` is the API module's (list_objects, watch_objects); `trim` keeps what is needed of each
    object (the lister applies it page by page); `on_change(type, old, new)` is called after every
    change the store took (also for each object a relist added, changed or dropped). `synced` is
    set once the first list is stored. `failures` counts the lists and watches that failed since
    the last watch that worked, `last_error` says why the last one failed.
    """

    def __init__(
        self,
        kind: str,
        store: Store,
        lister: Callable[..., tuple[list[Obj], str]],
        watcher: Callable[..., Iterable[tuple[str, Obj]]],
        *,
        namespace: str | None = None,
        selector: str = "",
        trim: Callable[[Obj], Obj] = lambda o: o,
        on_change: Callback | None = None,
        gone: type[Exception] = Exception,
        unhealthy_after: float = UNHEALTHY_AFTER,
        backoff: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind, self.store, self.namespace, self.selector = kind, store, namespace, selector
        self.name = f"{kind} in {namespace}" if namespace else kind
        self._list, self._watch, self._trim = lister, watcher, trim
        self._on_change = on_change or (lambda *_: None)
        self._gone = gone
        self._unhealthy_after, self._backoff, self._clock = unhealthy_after, backoff, clock
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.version = ""
        self.failures = 0
        self.last_error = ""
        self._failing_since: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"informer-{kind}-{namespace or 'all'}", daemon=True)

    def start(self) -> None:
        metrics.informer_started(self.kind, self.namespace or "", self.healthy)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def unready(self) -> str:
        """Why this cache cannot be trusted ('' when it can): not listed yet, or its lists and
        watches have kept failing for longer than the bound (a 403 from missing RBAC never heals)."""
        failing_since = self._failing_since
        if not self.synced.is_set():
            because = f"; the last attempt failed: {self.last_error}" if self.last_error else ""
            return f"{self.name}: not listed yet{because}"
        if failing_since is not None and self._clock() - failing_since > self._unhealthy_after:
            return (
                f"{self.name}: {self.failures} lists and watches in a row failed over "
                f"{self._clock() - failing_since:.0f}s; the last: {self.last_error}"
            )
        return ""

    def healthy(self) -> bool:
        return not self.unready()

    def _relist(self) -> None:
        items, self.version = self._list(self.kind, self.namespace, self.selector, trim=self._trim)
        before, now = self.store.replace(items, self.version)
        old = {key_of(o): o for o in before}
        for obj in now:
            previous = old.pop(key_of(obj), None)
            if previous is not obj:
                self._on_change("ADDED" if previous is None else "MODIFIED", previous, obj)
        for previous in old.values():
            self._on_change("DELETED", previous, None)
        self.synced.set()

    def _apply(self, kind: str, raw: Obj) -> None:
        version = str(raw.get("metadata", {}).get("resourceVersion", ""))
        if version:
            self.version = version
        if kind == "BOOKMARK":
            return
        obj = self._trim(raw)
        if kind == "DELETED":
            old = self.store.remove(key_of(obj))
            self._on_change("DELETED", old, None)
            return
        old, stored = self.store.put(obj)
        if stored:
            self._on_change(kind, old, obj)

    def _worked(self) -> None:
        """A watch delivered or ended as the server ends it: the failures are over."""
        if self.failures:
            log.info("Watching %s works again after %d failures", self.name, self.failures)
        self.failures, self._failing_since = 0, None

    def _failed(self, err: Exception) -> float:
        """Counts the failure; returns the pause before the next list (1 s doubling to 30 s, jittered)."""
        self.failures += 1
        self.last_error = describe(err)
        if self._failing_since is None:
            self._failing_since = self._clock()
        metrics.informer_failed(self.kind, self.namespace or "")
        return min(30.0, self._backoff * 2.0 ** min(self.failures, 6)) * random.uniform(0.8, 1.2)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                if not self.version:
                    self._relist()
                for kind, raw in self._watch(self.kind, self.namespace, self.selector, self.version, WATCH_SECONDS):
                    self._apply(kind, raw)
                    self._worked()
                    if self.stopping.is_set():
                        return
                self._worked()
            except self._gone:
                log.info("The watch of %s was too old; listing again", self.name)
                self.version = ""
            except Exception as err:  # a 403, the API server restarts, a connection drops
                delay = self._failed(err)
                # As client-go's reflector: start over with a list, so that whatever the failed
                # watch missed (a node added, a pod deleted) reaches the cache.
                self.version = ""
                log.warning("Watching %s failed (%s); listing again in %.1fs", self.name, self.last_error, delay)
                self.stopping.wait(delay)


def describe(err: Exception) -> str:
    """One line for an error: the API's status, reason and message when it has them (an
    ApiException's own text is several lines, headers included)."""
    status = getattr(err, "status", None)
    if not status:
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    message = ""
    with contextlib.suppress(TypeError, ValueError, KeyError):
        message = str(json.loads(getattr(err, "body", None) or "")["message"])
    return f"{status} {getattr(err, 'reason', '') or ''}: {message}".rstrip(": ")[:300]


def wait_synced(informers: Iterable[Informer], timeout: float | None = None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    for informer in informers:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not informer.synced.wait(left):
            return False
    return True
