"""`python -m spotrun_operator`: runs the operator against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import kopf

from spotrun_operator import handlers  # noqa: F401 - registers the handlers with kopf
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
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as err:
        print(f"spotrun-operator: {err}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    kopf.run(
        standalone=True,  # one replica; no kopf peering objects to create or grant
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
