"""`python -m spotrun_operator`: the operator, or `uninstall-cleanup`, on the kubeconfig or in-cluster config.

The operator's life: the informers fill the caches at once (a standby keeps them warm too), the
replica stands by until it holds the leader Lease, then the controller's workers and kopf (the
checkpoint-deletion handler) start. SIGTERM: the passes under way finish, kopf and the Events
thread stop, and only then is the Lease given up (a standby takes over on its next try); if they do
not stop within STOP_TIMEOUT, the process exits without giving it up and the standby waits out the
Lease's duration. A leader that loses the Lease exits at once (status 1), so that it never writes
while another replica leads; its Deployment starts it again as a standby. A Lease that cannot be
taken as the cluster stands (no such namespace, RBAC) ends the process with one line saying what
to do, as controller-runtime does.
"""

from __future__ import annotations

import argparse
import ast
import http.server
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from spotrun_operator import cleanup, handlers, metrics, names
from spotrun_operator.api import Api, describe, lease_api
from spotrun_operator.config import Config, ConfigError
from spotrun_operator.controller import Controller
from spotrun_operator.leader import Elector, LeaseRefused

log = logging.getLogger("spotrun.operator")
EVENTS_QPS = 20
STOP_TIMEOUT = 15.0  # for the writers to stop on SIGTERM, within the pod's default grace of 30 s


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotrun_operator", description="The Spotrun TaskRun operator.")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="where to serve the liveness probe ('' to disable); 200 while the caches and the leader "
        "election run, standby or not",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    clean = commands.add_parser(
        "uninstall-cleanup",
        help="before uninstalling: stop the operator, remove Spotrun's finalizers (keeps all data)",
        description=(
            f"Removes {names.FINALIZER} from every TaskRun and {names.POD_FINALIZER} from every pod of a "
            "TaskRun, so that TaskRuns, pods, namespaces and the CRD can be deleted once the operator is "
            "gone. Deletes nothing: pods keep running, TaskRuns and checkpoints stay."
        ),
    )
    clean.add_argument(
        "--namespaces",
        help="comma-separated namespaces (default: SPOTRUN_NAMESPACES; empty: the whole cluster)",
    )
    clean.add_argument(
        "--stop-operator",
        metavar="NAMESPACE/DEPLOYMENT",
        default="",
        help="first scale this operator Deployment to 0 and wait for its pods to go (a running operator "
        "puts its finalizers back)",
    )
    clean.add_argument("--timeout", type=float, default=120.0, help="seconds for each of the two steps")
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as err:
        print(f"spotrun-operator: {err}", file=sys.stderr)
        return 2
    _logging(config)
    if args.command == "uninstall-cleanup":
        return _uninstall_cleanup(args, config)
    return run(config, args.liveness)


def run(config: Config, liveness: str) -> int:
    terminating = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: terminating.set())
    identity = f"{config.identity}_{uuid.uuid4().hex[:6]}"
    agent = f"spotrun-operator ({identity})"
    api = Api(qps=config.api_qps, burst=config.api_burst, pool=config.workers + 8, user_agent=agent)
    # Events have a budget of their own (as client-go's event broadcaster has its own spam filter),
    # so that a burst of them never slows the creation of pods.
    events = Api(qps=EVENTS_QPS, burst=2 * EVENTS_QPS, pool=2, user_agent=agent)
    controller = Controller(api, config, workers=config.workers, events_api=events)
    handlers.use(controller, config)
    metrics.start(config.metrics_port)
    controller.start_informers()
    elector = None
    if config.leader_election:
        # Its own client and rate limiter: a renewal never waits behind the workers' requests.
        elector = Elector(
            lease_api(agent),
            config.lease_namespace,
            config.lease_name,
            identity,
            on_lost=_lost,
            on_change=lambda leading, holder: metrics.leadership(identity, leading, holder),
        )
        elector.start()
    _serve_liveness(
        liveness,
        lambda: controller.alive() and (elector is None or elector.thread.is_alive()),
        lambda: [why for i in controller.informers if (why := i.unready())],
    )
    log.info(
        "Started as %s with capacity profile %s, checkpoint prefix %r; %s",
        identity,
        config.profile_name,
        config.checkpoint_prefix,
        f"standing by for the Lease {config.lease_namespace}/{config.lease_name}" if elector else "no leader election",
    )
    while elector is not None and not elector.leading.wait(0.5):
        if elector.refused is not None:
            log.error("%s", _refused(config, elector.refused))
            return 1
        if terminating.is_set():
            elector.stop(release=True)
            return 0
    while not controller.synced(timeout=0.5):
        if terminating.is_set():
            return _stop(controller, elector, None)
    if terminating.is_set():  # told to stop just as the Lease came: lead no further
        return _stop(controller, elector, None)
    controller.start_workers()
    log.info("Reconciling %d TaskRuns with %d workers", len(controller.taskruns), config.workers)
    # kopf in a thread of its own (kopf's "embedding"): it then leaves the signals to this one, and
    # stopping never waits on kopf's own shutdown.
    kopf_thread = threading.Thread(target=_run_kopf, args=(config, terminating), name="kopf", daemon=True)
    kopf_thread.start()
    while not terminating.wait(1.0):
        if not kopf_thread.is_alive():
            log.error("kopf stopped; exiting")
            _stop(controller, elector, None)
            return 1
    return _stop(controller, elector, kopf_thread)


class _SignalsAreOurs(logging.Filter):
    """kopf warns, run in any thread but the main one, that it ignores OS signals: by design here
    (SIGTERM is this process's: it hands the Lease over), so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("OS signals are ignored: running not in the main thread")


def _run_kopf(config: Config, stop: threading.Event) -> None:
    logging.getLogger("kopf._core.reactor.running").addFilter(_SignalsAreOurs())
    kopf.run(
        standalone=True,  # no kopf peering: the Lease says who leads
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=None,
        stop_flag=stop,
    )


def _stop(controller: Controller, elector: Elector | None, kopf_thread: threading.Thread | None) -> int:
    """Every writer stops (the passes under way finish; kopf, told by the same flag, and the Events
    thread end), then the Lease is given up: a standby takes over at its next try. Given up only if
    they all stopped within STOP_TIMEOUT: one still writing when the standby takes over would make
    two leaders; kept, the standby waits out the Lease's duration instead. The elector renews all the
    while, and its watchdog still ends the process at the renew deadline."""
    deadline = time.monotonic() + STOP_TIMEOUT
    controller.stop(timeout=0.0)  # tells them all to stop; stopped() waits for them, against one deadline
    stopped = controller.stopped(timeout=max(0.0, deadline - time.monotonic()))
    if kopf_thread is not None:
        kopf_thread.join(max(0.0, deadline - time.monotonic()))
        stopped = stopped and not kopf_thread.is_alive()
    if not stopped:
        log.error("Writers still ran %.0fs after SIGTERM; exited without giving up the Lease", STOP_TIMEOUT)
        _exit_now(1)
    if elector is not None:
        elector.stop(release=True)
    log.info("Stopped")
    return 0


def _lost() -> None:
    """Another replica may lead now: stop writing at once."""
    _exit_now(1)


def _exit_now(status: int) -> None:
    """Ends the process at once: the one way to stop every writer together (workers, kopf's handler
    threads, the Events thread, a request stuck in a socket); Python cannot stop a thread, and an
    orderly exit would wait for kopf's executor threads."""
    logging.shutdown()
    os._exit(status)


def _refused(config: Config, err: LeaseRefused) -> str:
    """One line saying what to do about a Lease that cannot be taken (controller-runtime's way)."""
    where = f"{config.lease_namespace}/{config.lease_name}"
    single = "or set SPOTRUN_LEADER_ELECTION=false to run a single replica without leader election"
    if err.status == 403:
        return (
            f"Could not take the Lease {where} ({err}): grant the operator's ServiceAccount get, create "
            f"and update on leases.coordination.k8s.io in namespace {config.lease_namespace} (a Role and "
            f"RoleBinding), set SPOTRUN_LEASE_NAMESPACE to a namespace where it has them, {single}"
        )
    return (
        f"Could not take the Lease {where} ({err}): create the namespace {config.lease_namespace} "
        f"(kubectl create namespace {config.lease_namespace}), set SPOTRUN_LEASE_NAMESPACE to an existing "
        f"namespace, {single}"
    )


def _serve_liveness(url: str, healthy: Callable[[], bool], unready: Callable[[], list[str]] = list) -> None:
    """The liveness probe at URL's path (200 while `healthy()`: a restart would not mend the rest),
    and beside it /readyz: 200 once every watch cache is listed and none has kept failing (a missing
    RBAC rule, an API server out of reach), else 503 with one line per cache that says why."""
    if not url:
        return
    parsed = urllib.parse.urlparse(url)
    live = parsed.path or "/"
    ready = live.rsplit("/", 1)[0] + "/readyz"

    class Probe(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == ready:
                reasons = unready()
                code, body = (503, "".join(f"{r}\n" for r in reasons)) if reasons else (200, "ok\n")
            else:
                ok = path == live and healthy()
                code, body = (200, "ok\n") if ok else (500, "not healthy\n")
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 8081), Probe)
    threading.Thread(target=server.serve_forever, name="liveness", daemon=True).start()


_DUMP = re.compile(
    r"\((\d+)\)\nReason: ([^\n]*)\n(?:HTTP response headers: [^\n]*\n)?(?:HTTP response body: ([^\n]*)\n?)?"
)


def _one_line(text: str) -> str:
    """`text` with every ApiException str() in it (status, reason, headers, body) as one line."""

    def short(match: re.Match[str]) -> str:
        try:  # the body as the exception printed it: the repr of the bytes of a Status
            raw = ast.literal_eval(match.group(3) or "")
            status = json.loads(raw)
        except (ValueError, SyntaxError, TypeError):
            status = {}
        if not isinstance(status, dict):
            status = {}
        reason = status.get("reason") or match.group(2)
        return f"HTTP {match.group(1)} {reason}" + (f": {status['message']}" if status.get("message") else "")

    return _DUMP.sub(short, text)


class _ShortApiErrors(logging.Filter):
    """The kubernetes client's ApiException renders as the whole HTTP response, headers and body: in
    a log line's arguments, its message or its traceback, from any logger (kopf's too), it becomes
    one line, `HTTP 404 NotFound: namespaces "x" not found`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(describe(a) if isinstance(a, ApiException) else a for a in record.args)
        message = record.getMessage()
        if "HTTP response headers" in message or "\nReason: " in message:
            record.msg, record.args = _one_line(message), ()
        if record.exc_info and record.exc_info[1] is not None and _api_error_in(record.exc_info[1]):
            error = record.exc_info[1]
            tb = record.exc_info[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            at = f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""
            chain: list[str] = []
            cause = error.__cause__ or error.__context__
            while cause is not None and len(chain) < 5:
                chain.append(f"{type(cause).__name__}: {describe(cause)}")
                cause = cause.__cause__ or cause.__context__
            caused = "".join(f"; from {c}" for c in chain)
            record.exc_text = f"{type(error).__name__}: {describe(error)}{at}{caused}"
        return True


def _api_error_in(error: BaseException) -> bool:
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, ApiException):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _logging(config: Config) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ShortApiErrors())
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _uninstall_cleanup(args: argparse.Namespace, config: Config) -> int:
    if args.namespaces is None:
        namespaces = list(config.namespaces)
    else:
        namespaces = [n.strip() for n in args.namespaces.split(",") if n.strip()]
    api = Api()
    try:
        if args.stop_operator:
            namespace, _, deployment = args.stop_operator.partition("/")
            if not namespace or not deployment:
                print("spotrun-operator: --stop-operator must be NAMESPACE/DEPLOYMENT", file=sys.stderr)
                return 2
            cleanup.stop_operator(api, namespace, deployment, args.timeout)
        released = cleanup.release_all(api, namespaces, args.timeout)
    except cleanup.CleanupError as err:
        print(f"spotrun-operator: {err}", file=sys.stderr)
        return 1
    print(
        f"Removed Spotrun's finalizers from {len(released.taskruns)} TaskRun(s) and {len(released.pods)} pod(s) "
        f"in {', '.join(namespaces) or 'every namespace'}; no TaskRun, pod or checkpoint was deleted."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
