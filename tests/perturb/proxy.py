"""A perturbing proxy in front of the real kube-apiserver: plain HTTP towards the operator (its
kubeconfig points here, with its ServiceAccount's token, which is passed through), TLS towards the
API server. It runs an asyncio loop (aiohttp, which kopf already brings) in a thread of its own; the
runner turns perturbations on from its thread (`apply`), each for a while.

Watch streams are newline-delimited JSON, one event a line: the proxy reads them from the API
server, records them (with every list answer) as the collection's history, and writes them on,
delayed, jittered, cut or ended with an ERROR 410 as the perturbations in force say. A stale relist
answers the next list of the collection from that history, as it was before its newest object came.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import json
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from tests.perturb import schedule
from tests.perturb.schedule import Action

Obj = dict[str, Any]
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
PASSED_HEADERS = ("Authorization", "Content-Type", "Accept", "User-Agent")


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    resource: str  # pods, pods/status, taskruns/status, leases, ... ("" for non-resource paths)
    name: str
    collection: str  # the path without the name: what a list or watch reads
    watch: bool
    selector: str

    @property
    def write(self) -> bool:
        return self.method in WRITES

    def matches(self, target: str) -> bool:
        return target == "*" or self.resource.split("/")[0] == target


def parse(method: str, path: str, query: dict[str, str]) -> Request:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return Request(method, "", "", path, False, "")
    prefix = parts[: len(parts) - len(rest)]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        prefix, rest = prefix + rest[:2], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    collection = "/" + "/".join([*prefix, rest[0]]) if rest else path
    watch = query.get("watch", "").lower() in ("true", "1")
    return Request(method, resource, name, collection, watch, query.get("labelSelector", ""))


def _version(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class History:
    """One collection's list answers and watch events, as the API server sent them."""

    def __init__(self) -> None:
        self.base: dict[str, Obj] = {}
        self.base_version = -1
        self.events: dict[int, tuple[str, Obj]] = {}  # by resourceVersion: watches of it repeat each other
        self.watched = False  # an informer's collection (not a one-off list)

    def listed(self, answer: Obj) -> None:
        if self.base_version < 0:
            self.base = {_key(o): o for o in answer.get("items") or []}
            self.base_version = int((answer.get("metadata") or {}).get("resourceVersion") or 0)

    def event(self, kind: str, obj: Obj) -> None:
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.events[_version(obj)] = (kind, obj)

    def before_newest(self) -> tuple[list[Obj], int] | None:
        """The collection as it was just before its newest object was added, and that version."""
        added = [v for v, (kind, _) in self.events.items() if kind == "ADDED" and v > self.base_version]
        if self.base_version < 0 or not added:
            return None
        until = max(added) - 1
        state = dict(self.base)
        for version in sorted(v for v in self.events if self.base_version < v <= until):
            kind, obj = self.events[version]
            if kind == "DELETED":
                state.pop(_key(obj), None)
            else:
                state[_key(obj)] = obj
        return list(state.values()), until


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclasses.dataclass
class Active:
    action: Action
    until: float  # monotonic


class Proxy:
    """One replica's proxy. `port` once started; `log` lists what it did, for the report."""

    def __init__(self, upstream: str, ca: Path, name: str, seed: int = 0, started: float | None = None) -> None:
        self.upstream, self.name = upstream.rstrip("/"), name
        self._ssl = ssl.create_default_context(cafile=str(ca))
        self._lock = threading.Lock()
        self._active: list[Active] = []
        self._stale: dict[str, float] = {}  # collection -> how long the watch after a stale list is held
        self._held_watch: dict[str, float] = {}
        self._generation: dict[str, int] = {}  # bumped to end (410) the open watches of a resource
        self._cuts: dict[str, int] = {}
        self._histories: dict[tuple[str, str], History] = {}
        self._rng = random.Random(seed)
        self.port = 0
        self.watches: set[str] = set()  # the resources it has had a watch of (a replica's caches are listed)
        self.log: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{name}", daemon=True)
        self._runner: web.AppRunner | None = None
        self._relays: list[asyncio.Server] = []
        self._session: ClientSession | None = None
        self.started = time.monotonic() if started is None else started  # the log's time origin

    # ----- control, from the runner's thread ------------------------------------------------------

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"proxy {self.name} did not start")
        return self.port

    def stop(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)

    def apply(self, action: Action) -> None:
        """Puts a proxy action in force now (for its SECONDS)."""
        with self._lock:
            self._note(f"applied {action}")
            if action.kind in (schedule.RELIST, schedule.STALE_RELIST):
                self._generation[action.target] = self._generation.get(action.target, 0) + 1
                if action.kind == schedule.STALE_RELIST:
                    self._stale[action.target] = action.seconds
            elif action.kind == schedule.CUT:
                self._cuts[action.target] = self._cuts.get(action.target, 0) + 1
            else:
                self._active.append(Active(action, time.monotonic() + action.seconds))

    def _note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:7.2f}s {self.name}: {what}")

    def _in_force(self, kind: str, request: Request) -> list[Action]:
        now = time.monotonic()
        with self._lock:
            return [
                a.action
                for a in self._active
                if a.action.kind == kind and a.until > now and request.matches(a.action.target)
            ]

    # ----- S3: bytes relayed, or stalled -------------------------------------------------------------

    def relay_s3(self, endpoint: str) -> str:
        """A TCP relay to the S3 server at ENDPOINT (http://host:port) that S3_STALL holds up; its URL."""
        host, _, port = endpoint.removeprefix("http://").rstrip("/").partition(":")
        future = asyncio.run_coroutine_threadsafe(self._start_relay(host, int(port or 80)), self._loop)
        return f"http://127.0.0.1:{future.result(15)}"

    async def _start_relay(self, host: str, port: int) -> int:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

        server = await asyncio.start_server(connected, "127.0.0.1", 0)
        self._relays.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s3 = Request("GET", "s3", "", "", False, "")
        try:
            while chunk := await reader.read(65536):
                if self._in_force(schedule.S3_STALL, s3):
                    self._note("stalled S3")
                    while self._in_force(schedule.S3_STALL, s3):
                        await asyncio.sleep(0.05)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    # ----- serving -----------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        self._session = ClientSession(
            connector=TCPConnector(ssl=self._ssl, limit=0), timeout=ClientTimeout(total=None, sock_connect=10)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        for relay in self._relays:
            relay.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, incoming: web.Request) -> web.StreamResponse:
        query = dict(parse_qsl(incoming.query_string))
        request = parse(incoming.method, incoming.path, query)
        body = await incoming.read()
        for hole in self._in_force(schedule.BLACKHOLE, request):
            self._note(f"held {request.method} {incoming.path}")
            await self._wait_until(hole, request)
            if incoming.transport is None or incoming.transport.is_closing():
                self._note(f"dropped {request.method} {incoming.path}: its client gave up")
                return web.Response(status=499)
            self._note(f"forwarded held {request.method} {incoming.path}")
        if request.write:
            for fault in self._in_force(schedule.FAIL_WRITES, request):
                self._note(f"answered {fault.detail} to {request.method} {incoming.path}")
                return _status(int(fault.detail or 500), f"perturbation: {fault.detail}")
        if request.watch:
            return await self._watch(incoming, request, body)
        if incoming.method == "GET" and not request.name and request.collection in self._stale_lists():
            answer = self._stale_answer(request)
            if answer is not None:
                return web.json_response(answer)
        status, headers, data = await self._forward(incoming, body)
        if request.write and self._in_force(schedule.TIMEOUT_WRITES, request):
            self._note(f"applied {request.method} {incoming.path}, answered 504 after 5 s")
            await asyncio.sleep(5)
            return _status(504, "perturbation: the request timed out (it may have been applied)")
        if incoming.method == "GET" and not request.name and status == 200:
            self._record_list(request, data)
        return web.Response(body=data, status=status, headers=headers)

    async def _wait_until(self, _: Action, request: Request) -> None:
        while self._in_force(schedule.BLACKHOLE, request):
            await asyncio.sleep(0.05)

    def _stale_lists(self) -> set[str]:
        with self._lock:
            wanted = set(self._stale)
        return {c for (c, _), h in self._histories.items() if h.watched and any(c.endswith("/" + t) for t in wanted)}

    def _stale_answer(self, request: Request) -> Obj | None:
        """A list answered from history, once per stale relist; the watch after it is held."""
        resource = request.resource.split("/")[0]
        with self._lock:
            hold = self._stale.pop(resource, None)
        if hold is None:
            return None
        history = self._histories.get((request.collection, request.selector))
        old = history.before_newest() if history and history.watched else None
        if old is None:
            return None
        items, version = old
        with self._lock:
            self._held_watch[request.collection] = time.monotonic() + hold
        self._note(f"answered a list of {request.collection} as of version {version} ({len(items)} items)")
        return {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)}, "items": items}

    def _record_list(self, request: Request, data: bytes) -> None:
        if request.resource.split("/")[0] not in ("pods", "taskruns"):
            return
        try:
            answer = json.loads(data)
        except ValueError:
            return
        if not (answer.get("metadata") or {}).get("continue"):
            self._histories.setdefault((request.collection, request.selector), History()).listed(answer)

    async def _forward(self, incoming: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {h: incoming.headers[h] for h in PASSED_HEADERS if h in incoming.headers}
        async with self._session.request(
            incoming.method, self.upstream + incoming.path_qs, data=body or None, headers=headers
        ) as answer:
            data = await answer.read()
            kept = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
            return answer.status, kept, data

    async def _watch(self, incoming: web.Request, request: Request, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        resource = request.resource.split("/")[0]
        with self._lock:
            generation = self._generation.get(resource, 0)
            cuts = self._cuts.get(resource, 0)
            held_until = self._held_watch.pop(request.collection, 0.0)
        history = self._histories.setdefault((request.collection, request.selector), History())
        history.watched = True
        self.watches.add(resource)
        headers = {h: incoming.headers[h] for h in PASSED_HEADERS if h in incoming.headers}
        upstream = await self._session.request(
            "GET", self.upstream + incoming.path_qs, headers=headers, timeout=ClientTimeout(total=None)
        )
        if upstream.status != 200:
            data = await upstream.read()
            upstream.release()
            return web.Response(body=data, status=upstream.status, content_type="application/json")
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(incoming)
        queue: list[tuple[float, int, bytes]] = []
        order = itertools.count()
        last_release: dict[str, float] = {}
        done = asyncio.Event()

        async def read() -> None:
            buffer = b""
            try:
                async for chunk in upstream.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            self._enqueue(line, request, history, queue, order, last_release, held_until)
            finally:
                done.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                with self._lock:
                    ended = self._generation.get(resource, 0) != generation
                    cut = self._cuts.get(resource, 0) != cuts
                if cut:
                    self._note(f"cut a watch of {request.collection}")
                    break
                if ended:
                    self._note(f"ended a watch of {request.collection} with 410")
                    await response.write(_gone_line())
                    break
                now = time.monotonic()
                while queue and queue[0][0] <= now:
                    await response.write(heapq.heappop(queue)[2] + b"\n")
                if done.is_set() and not queue:
                    break
                await asyncio.sleep(0.02)
        finally:
            reader.cancel()
            upstream.release()
        if not cut:
            await response.write_eof()
        elif incoming.transport is not None:
            incoming.transport.close()
        return response

    def _enqueue(
        self,
        line: bytes,
        request: Request,
        history: History,
        queue: list[tuple[float, int, bytes]],
        order: itertools.count[int],
        last_release: dict[str, float],
        held_until: float,
    ) -> None:
        """Records an event and queues it for when the perturbations in force let it through."""
        try:
            event = json.loads(line)
        except ValueError:
            event = {}
        obj = event.get("object") or {}
        history.event(str(event.get("type", "")), obj)
        name = str((obj.get("metadata") or {}).get("name", ""))
        now = time.monotonic()
        release = max(now, held_until)
        for delay in self._in_force(schedule.DELAY, request):
            if name.endswith(delay.detail):
                release = max(release, now + delay.seconds)
        for jitter in self._in_force(schedule.JITTER, request):
            release = max(release, now + self._rng.uniform(0, float(jitter.detail or 1)))
        # Never reordered within one object: a watch keeps each object's order.
        release = max(release, last_release.get(name, 0.0))
        last_release[name] = release
        heapq.heappush(queue, (release, next(order), line))


def _status(code: int, message: str) -> web.Response:
    reasons = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 504: "Timeout"}
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reasons.get(code, "InternalError"),
        "code": code,
    }
    headers = {"Retry-After": "1"} if code == 429 else {}
    return web.json_response(body, status=code, headers=headers)


def _gone_line() -> bytes:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410}
    status["message"] = "perturbation: too old resource version"
    return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"
