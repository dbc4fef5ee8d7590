"""`python -m spotrun_operator`: the operator, or `uninstall-cleanup`, on the kubeconfig or in-cluster config."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import kopf

from spotrun_operator import (
    cleanup,
    handlers,  # noqa: F401 - registers the handlers with kopf
    names,
)
from spotrun_operator.api import Api
from spotrun_operator.config import Config, ConfigError


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
        "--liveness", default="http://0.0.0.0:8081/healthz", help="kopf's liveness endpoint ('' to disable)"
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
    if args.command == "uninstall-cleanup":
        _logging(config)
        return _uninstall_cleanup(args, config)
    _logging(config)
    kopf.run(
        standalone=True,  # one replica; no kopf peering objects to create or grant
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=args.liveness or None,
    )
    return 0


def _logging(config: Config) -> None:
    handler = logging.StreamHandler()
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
