"""The operator's reads of checkpoint storage: confined to the prefix it assigned, and never inside a pass.

What a pass learns of a TaskRun's checkpoints (the newest one for status, the time of the last
commit for lost work, a fresh one for a drain, a commit for the progress deadline) comes from a
per-TaskRun cache. A small pool of threads beside the workers fills it, with short timeouts and
no retries, so that a hanging S3 holds a few of those threads and never a worker: the pass that
counts an ended attempt and creates the next one does not wait on storage.

A pass that asks for storage (through `View`) is served only a read that began after it (or the
held pass it follows) first asked: a read of a moment before may predate an attempt that ended
since, and its last commit. Otherwise a read is requested and, while storage answers, the pass is
held: the controller drops its decision (decide() is pure) and passes again when the read
lands, at most HOLD_SECONDS later, so that lost work is measured from the checkpoint the attempt
truly committed last. While storage does not answer (a read failed or has been under way longer
than HOLD_SECONDS), nothing is held: the pass goes on as when storage cannot be read (lost work
as an upper bound, a drain waits for its timeout), and recovery is as fast as with S3 up.

Only the prefix the operator assigned (its checkpoint prefix + NAMESPACE/NAME/) is read, with its
own credentials, exactly as only that one is deleted (handlers._delete_checkpoints): a TaskRun's
author chooses spec.checkpoint.uri and must not be able to have another tenant's newest checkpoint
copied into their status. A TaskRun with a URI of its own is never read; its status says so (the
CheckpointsRead condition) and it is passed as one whose storage cannot be read.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import boto3
from botocore.config import Config as BotoConfig
from spotrun import Checkpoint, open_storage

from spotrun_operator.config import Config
from spotrun_operator.podbuild import assigned_uri, checkpoint_uri
from spotrun_operator.status import set_condition

Obj = dict[str, Any]
log = logging.getLogger("spotrun.checkpoints")

HOLD_SECONDS = 1.0  # the longest a pass is held for a read while storage answers
THREADS = 3  # reads at once: each holds a thread for at most its timeouts
QUEUED = 1000  # reads waiting for a thread; beyond that a request is dropped (its pass asks again)
ENTRIES = 20000  # TaskRuns whose last read is kept; the least recently asked go first
CONNECT_TIMEOUT, READ_TIMEOUT = 2.0, 5.0  # per request, one try: a hanging S3 holds a thread ~7 s

COND_CHECKPOINTS_READ = "CheckpointsRead"
REASON_NOT_ASSIGNED = "URINotAssigned"


class NotRead(Exception):
    """Storage was not read for this pass (not yet, not answering, or not ours to read)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One read of a TaskRun's checkpoints: the newest (for status, with the SDK's unrestorable
    record), and the newest of each attempt (for reconcile.Checkpoints.newest_of)."""

    latest: Obj | None
    by_attempt: tuple[Obj, ...] = ()  # newest first, one per attempt

    def newest_of(self, attempt: int) -> Obj | None:
        return next((c for c in self.by_attempt if int(c["attempt"]) <= attempt), None)


class Reader(Protocol):
    def read(self) -> Snapshot: ...


@dataclasses.dataclass
class _Entry:
    uri: str
    reader: Reader | None = None
    snapshot: Snapshot | None = None
    read_at: float = float("-inf")  # when the read of `snapshot` started (monotonic)
    started: float | None = None  # when the read under way was asked for, then begun (None: none is)
    failed: bool = False  # this TaskRun's last read failed: its passes are not held
    asked: float | None = None  # when a held pass first asked for a read (None: no pass is held)


class CheckpointCache:
    """The newest checkpoints of each TaskRun, read by THREADS threads; `wake(key)` passes a
    TaskRun again once a read it was held for has landed."""

    def __init__(
        self,
        wake: Callable[[Hashable], None],
        *,
        open_reader: Callable[[str], Reader] | None = None,
        threads: int = THREADS,
        queued: int = QUEUED,
        entries: int = ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wake, self._open = wake, open_reader or StorageReader
        self._threads_wanted, self._entries_max, self._clock = threads, entries, clock
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Hashable | None] = queue.Queue(maxsize=queued)
        self._threads: list[threading.Thread] = []
        self._begun: dict[object, float] = {}  # the reads under way (at most `threads`): when each began

    # ----- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._open is StorageReader:
            # The first boto3 client of a process loads botocore's models: about a second of CPU,
            # which a first read must not spend inside a pass's hold (its lost work would be estimated).
            threading.Thread(target=_warm, name="checkpoints-warm", daemon=True).start()
        for n in range(self._threads_wanted):
            thread = threading.Thread(target=self._run, name=f"checkpoints-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Lets the threads go once their read ends (a read under way is not waited for)."""
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break  # the threads are daemons: they end with the process
        self._threads.clear()

    def forget(self, key: Hashable) -> None:
        """The TaskRun is gone: its entry goes (a read under way lands nowhere)."""
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    # ----- what a pass sees -------------------------------------------------------------------------

    def view(self, key: Hashable, taskrun: Obj, config: Config) -> View:
        uri, assigned = checkpoint_uri(taskrun, config), assigned_uri(taskrun, config)
        return View(self, key, uri, bool(uri) and uri == assigned, assigned)

    def _serve(self, key: Hashable, uri: str) -> Snapshot:
        """The snapshot a pass may use now, or NotRead (and a read requested)."""
        now = self._clock()
        with self._lock:
            entry = self._entry(key, uri)
            # A read begun after the held pass asked, else after this one: a read of a moment ago may
            # predate what this pass is about (an attempt that ended since, and its last commit).
            fresh_since = now if entry.asked is None else entry.asked
            if entry.snapshot is not None and entry.read_at >= fresh_since:
                return entry.snapshot
            if entry.asked is None:
                entry.asked = now
            if entry.started is None and self._request(key):
                entry.started = now  # queued: counted as under way, so that it is asked for once
        raise NotRead(f"no read of {uri} yet")

    def _hold(self, key: Hashable) -> float | None:
        """How long to hold the pass of `key` for its read, or None to go on with what it had."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.asked is None:
                return None
            waited = now - entry.asked
            if waited < HOLD_SECONDS and entry.started is not None and not entry.failed and self._answering(now):
                return HOLD_SECONDS - waited
            entry.asked = None  # goes on: the next pass that asks starts afresh
            return None

    def _answering(self, now: float) -> bool:
        """Whether storage answers: no read a thread has begun has taken longer than a pass is ever
        held. Per read begun, not per read asked for: a burst's reads waiting in the queue are not S3's
        fault; and a read that failed stops the holds of its own TaskRun only (one TaskRun's storage
        that refuses must not cost every other its exact lost work)."""
        return all(now - began < HOLD_SECONDS for began in self._begun.values())

    @property
    def reading(self) -> int:
        """Reads under way."""
        return len(self._begun)

    def _entry(self, key: Hashable, uri: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or entry.uri != uri:
            entry = self._entries[key] = _Entry(uri)
            while len(self._entries) > self._entries_max:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def _request(self, key: Hashable) -> bool:
        try:
            self._queue.put_nowait(key)
        except queue.Full:
            return False
        return True

    # ----- the readers ------------------------------------------------------------------------------

    def _run(self) -> None:
        while (key := self._queue.get()) is not None:
            self._read(key)

    def _read(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.started = started = self._clock()  # a read that lands has seen all before it
            uri, reader = entry.uri, entry.reader
            token = object()
            self._begun[token] = started
        snapshot: Snapshot | None = None
        try:
            if reader is None:
                reader = self._open(uri)
            snapshot = reader.read()
        except Exception as err:
            log.warning("Reading the checkpoints under %s failed: %s", uri, err)
        finally:
            with self._lock:
                del self._begun[token]
                entry = self._entries.get(key)
                mine = entry is not None and entry.uri == uri and entry.started == started
                held = False
                if entry is not None and mine:
                    entry.started, entry.reader = None, reader
                    entry.failed = snapshot is None
                    if snapshot is not None:
                        entry.snapshot, entry.read_at = snapshot, started
                    held = entry.asked is not None
        if held and snapshot is not None:
            self._wake(key)


class View:
    """reconcile.Checkpoints for one pass of one TaskRun: what the cache holds, never a read."""

    def __init__(self, cache: CheckpointCache, key: Hashable, uri: str, readable: bool, assigned: str) -> None:
        self.cache, self.key, self.uri, self.readable, self.assigned = cache, key, uri, readable, assigned

    def _snapshot(self) -> Snapshot:
        if not self.readable:
            raise NotRead(f"{self.uri} is not the prefix the operator assigned")
        return self.cache._serve(self.key, self.uri)

    def latest(self) -> Obj | None:
        if not self.uri:
            return None
        return self._snapshot().latest

    def newest_of(self, attempt: int) -> Obj | None:
        if not self.uri:
            return None
        return self._snapshot().newest_of(attempt)

    def hold(self) -> float | None:
        """After decide(): seconds to wait for a read this pass asked for (its decision is to be
        dropped), or None to apply it."""
        return self.cache._hold(self.key) if self.readable and self.uri else None

    def explain(self, status: Obj, now: datetime.datetime) -> None:
        """A URI of the TaskRun's own: status shows none of its checkpoints, and says why."""
        conditions = status.get("conditions") or []
        if self.readable or not self.uri:
            if any(c.get("type") == COND_CHECKPOINTS_READ for c in conditions):
                status["conditions"] = [c for c in conditions if c.get("type") != COND_CHECKPOINTS_READ]
            return
        # What an earlier operator may have copied from that prefix goes too.
        status["checkpoint"] = {k: v for k, v in (status.get("checkpoint") or {}).items() if k in ("uri", "resumeFrom")}
        message = (
            f"not reading {self.uri}: the operator reads checkpoints only under the prefix it assigned "
            f"({self.assigned or 'none configured'}), with its own credentials. Status shows no checkpoint of "
            "it, a drain waits its full checkpoint timeout, lost work is an upper bound (lostSecondsEstimated) "
            "and progressDeadlineSeconds is not enforced; the task itself reads and writes it as before"
        )
        set_condition(status, COND_CHECKPOINTS_READ, False, REASON_NOT_ASSIGNED, message, now)


# ----- storage ----------------------------------------------------------------------------------------


class _S3:
    """One S3 client for every read (making a boto3 client costs tens of ms of CPU): short
    timeouts and a single try, so that a hanging S3 holds a reader thread for seconds, not minutes."""

    _lock = threading.Lock()
    _client: Any = None

    @classmethod
    def client(cls) -> Any:
        with cls._lock:
            if cls._client is None:
                # The SDK's addressing rule (spotrun._storage.S3Storage): custom endpoints use paths.
                endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
                style = os.environ.get("SPOTRUN_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
                s3_options: Any = {"addressing_style": style}
                config = BotoConfig(
                    retries={"max_attempts": 1, "mode": "standard"},
                    s3=s3_options,
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                    max_pool_connections=THREADS * 2,
                )
                cls._client = boto3.session.Session().client("s3", config=config)
            return cls._client


def _warm() -> None:
    try:
        _S3.client()
    except Exception as err:  # no credentials or region yet: the first read says so, as it would have
        log.info("Could not make the S3 client ahead of the first read: %s", err)


def _info(info: Any) -> Obj:
    return {"id": info.id, "step": info.step, "attempt": info.attempt, "time": info.time.isoformat(), "size": info.size}


class StorageReader:
    """Reads one prefix through the SDK, as a restore sees it (the manifests it has read are kept)."""

    def __init__(self, uri: str) -> None:
        shared = {"client": _S3.client()} if uri.startswith("s3://") else {}
        self.checkpoint = Checkpoint(open_storage(uri, read_only=True, **shared))

    def read(self) -> Snapshot:
        listed = self.checkpoint.list()  # one listing, newest first; it also finds unrestorable records
        by_attempt: dict[int, Obj] = {}
        for info in listed:
            by_attempt.setdefault(info.attempt, _info(info))
        if not listed:
            return Snapshot(None)
        latest = _info(listed[0])
        record = self.checkpoint.unrestorable()  # a GET only when an attempt left one
        if record:
            latest["unrestorable"] = {"attempt": record.get("attempt"), "message": str(record.get("message", ""))}
        return Snapshot(latest, tuple(by_attempt.values()))
