# Spotrun: one Makefile; `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install build up down status demo demo-down kind-demo lint format test test-unit test-integration test-e2e bench bench-io bench-recovery clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,dev]'
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the package, the operator extra and the dev tools.

build: $(STAMP) ## Build the local cluster's binaries into ~/.cache/spotrun (reused when cached).
	$(PY) -m localcluster build

up: $(STAMP) ## Start the local cluster (builds first when needed); then: . .localcluster/env
	$(PY) -m localcluster up

down: $(STAMP) ## Stop every process of the local cluster.
	$(PY) -m localcluster down

status: $(STAMP) ## Show the local cluster's processes and nodes.
	$(PY) -m localcluster status

demo: $(STAMP) ## The mission on the local cluster: install, train on spot, preempt mid-run, resume, succeed.
	$(PY) examples/demo.py

demo-down: $(STAMP) ## Stop the demo's local cluster (the next `make demo` starts a fresh one).
	$(PY) -m localcluster down

kind-demo: ## On kind with Docker (NOT run here: no Docker engine): build, load, install, run the e2e suite.
	kind create cluster --name spotrun --config kind/cluster.yaml
	docker build -t ghcr.io/spotrun/spotrun:0.1.0 .
	kind load docker-image ghcr.io/spotrun/spotrun:0.1.0 --name spotrun
	@echo "Install an S3 endpoint and a spotrun-s3 secret, then:"
	@echo "  helm install spotrun charts/spotrun -n spotrun-system --create-namespace --set checkpoint.prefix=s3://BUCKET/spotrun/ --set checkpoint.secret=spotrun-s3"
	@echo "  SPOTRUN_E2E_KUBECONFIG=~/.kube/config SPOTRUN_E2E_PREEMPT='kubectl drain {node} --ignore-daemonsets --delete-emptydir-data' make test-e2e"

lint: $(STAMP) ## ruff (lint and format check), mypy --strict, import-linter, hadolint.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile

format: $(STAMP) ## Apply ruff's fixes and formatting.
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-unit: $(STAMP) ## Unit tests: no cluster, seconds.
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) build ## Integration tests against the local cluster (started by the tests).
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) build ## End-to-end: the examples on an installed Spotrun (the local cluster by default).
	$(PY) -m pytest tests/e2e

test: $(STAMP) build ## The whole suite: pip check, lint, unit, integration and e2e tests. CI runs this.
	$(PY) -m pip check
	$(MAKE) lint
	$(PY) -m pytest tests/unit tests/integration
	$(PY) -m pytest tests/e2e

bench: $(STAMP) up ## Both benchmarks below (about 15 minutes).
	$(PY) bench/checkpoint_io.py
	$(PY) bench/recovery_latency.py

bench-io: $(STAMP) up ## Checkpoint I/O: the SDK against raw boto3 on the local S3 server.
	$(PY) bench/checkpoint_io.py

bench-recovery: $(STAMP) up ## Recovery after preemption: a TaskRun against a batch/v1 Job, five rounds.
	$(PY) bench/recovery_latency.py

clean: down ## Stop the cluster and remove .localcluster and caches in the tree (not the binary cache).
	rm -rf .localcluster .pytest_cache .mypy_cache .ruff_cache
