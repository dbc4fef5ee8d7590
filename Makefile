# Spotrun: one Makefile; `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install torch test-ddp build build-real toolchain up down status image demo demo-real demo-down build-kind kind-demo kind-down lint format test test-unit test-soak test-mutations test-perturb-soak test-unit-and-harnesses test-cluster test-integration test-e2e test-real test-kind bench bench-io bench-recovery bench-lost-work bench-scale bench-memory bench-real-nodes clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,dev]'
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the package, the operator extra and the dev tools.

# torch for the DDP example: PyPI's Linux wheel, which brings its CUDA libraries (about 7 GB; gloo on
# CPU is all it uses here), installed once per version outside the tree. Pods on process nodes and
# the reference run put it on PYTHONPATH.
TORCH_VERSION := 2.9.1
TORCH_DIR := $(HOME)/.cache/spotrun/torch-$(TORCH_VERSION)

$(TORCH_DIR)/.installed:
	rm -rf $(TORCH_DIR)
	$(PY) -m pip install --quiet --target $(TORCH_DIR) torch==$(TORCH_VERSION) 'numpy>=2,<3'
	touch $@

torch: $(STAMP) $(TORCH_DIR)/.installed ## torch for the DDP example (PyPI's wheel, about 7 GB) into ~/.cache/spotrun, once per version.

build: $(STAMP) ## Build the local cluster's binaries into ~/.cache/spotrun (reused when cached).
	$(PY) -m localcluster build

build-real: $(STAMP) ## Also real nodes' pieces: kubelet, kube-proxy, containerd, CNI plugins, Debian packages.
	$(PY) -m localcluster build --real-nodes

up: $(STAMP) ## Start the local cluster (builds first when needed); REAL=1: real nodes. Then: . .localcluster/env
	$(PY) -m localcluster up $(if $(REAL),--real-nodes)

image: $(STAMP) ## Build the Dockerfile's image and the examples' image daemonless; import into running real nodes.
	$(PY) -m localcluster image

down: $(STAMP) ## Stop every process of the local cluster.
	$(PY) -m localcluster down

status: $(STAMP) ## Show the local cluster's processes and nodes.
	$(PY) -m localcluster status

demo: $(STAMP) ## The mission on the local cluster: install, train on spot, preempt, resume. REAL=1: real nodes.
	$(PY) examples/demo.py $(if $(REAL),--real)

demo-real: $(STAMP) ## The demo on real nodes (kubelet, containerd, runc) with the image built from the Dockerfile.
	$(PY) examples/demo.py --real

demo-down: $(STAMP) ## Stop the demo's local cluster (the next `make demo` starts a fresh one).
	$(PY) -m localcluster down

# Every build in turn (they share the cache and apt), while `torch`'s download, mostly waiting on the
# network and the disk, runs beside them: on a cold machine that overlaps its minutes with the Go builds.
toolchain: $(STAMP)
	$(PY) -m localcluster build
	$(PY) -m localcluster build --real-nodes
	$(PY) -m localcluster build --kind

build-kind: $(STAMP) ## Also kind's pieces: kind, kubeadm, crictl, CoreDNS, Debian's docker.io (when no Docker runs).
	$(PY) -m localcluster build --kind

kind-demo: $(STAMP) ## The demo on kind (kind/cluster.yaml): spot pools, the built images, a drain mid-run, resume.
	$(PY) examples/demo.py --kind

kind-down: $(STAMP) ## Delete the kind cluster and stop the stand-in Docker engine.
	$(PY) -m localcluster kind down

lint: $(STAMP) ## ruff (lint and format check), mypy --strict, import-linter, hadolint.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile examples/Dockerfile

format: $(STAMP) ## Apply ruff's fixes and formatting.
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-unit: $(STAMP) ## Unit tests and flytekit's own checkpoint tests (tests/compat): no cluster, seconds.
	$(PY) -m pytest tests/unit tests/compat

test-soak: $(STAMP) build ## The checkpoint protocol's model under faults, for a night: HYPOTHESIS_PROFILE=soak, a directory and S3.
	HYPOTHESIS_PROFILE=soak $(PY) -m pytest tests/unit/test_protocol_model.py tests/integration/test_protocol_model_s3.py

test-mutations: $(STAMP) build ## Revert each checkpoint-protocol and operator fix in turn: its tests must fail (about 6 minutes).
	$(PY) -m tests.mutations
	$(PY) -m tests.operator_mutations

# The operator under perturbation (tests/perturb): `make test` runs one schedule per test; this runs
# SOAK (default 20) seeds of each, printed and replayable with SPOTRUN_PERTURB_SEED.
test-perturb-soak: $(STAMP) build ## The operator under perturbation: SOAK=20 schedules per defect class and random ones.
	SPOTRUN_PERTURB_SOAK=$(or $(SOAK),20) $(PY) -m pytest tests/integration/test_perturbation.py

# The integration tests that need S3 alone, on a private versitygw, and so no cluster.
S3_ONLY := tests/integration/test_checkpoint_s3.py tests/integration/test_protocol_model_s3.py tests/integration/test_bad_input_cli_s3.py

# The operator's harnesses (perturbation, every install variant) start a cluster of their own beside
# the unit tests, as the scale test (its own kwok cluster) and the image builds (no cluster) need no
# session cluster: the unit tests are CPU, these mostly wait, and the two halves of `make test` then
# take about as long as each other.
HARNESSES := tests/integration/test_perturbation.py tests/integration/test_install_variants.py \
	tests/integration/test_scale.py tests/integration/test_images.py

test-unit-and-harnesses: $(STAMP) build
	$(PY) -m pytest tests/unit tests/compat $(S3_ONLY) $(HARNESSES)

test-cluster: $(STAMP) build
	$(PY) -m pytest tests/integration $(addprefix --ignore=,$(S3_ONLY) $(HARNESSES))

test-integration: $(STAMP) build ## Integration tests against the local cluster (started by the tests).
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) build torch ## End-to-end: the examples on an installed Spotrun (the local cluster by default).
	SPOTRUN_E2E_TORCH=$(TORCH_DIR) $(PY) -m pytest tests/e2e

test-ddp: $(STAMP) build torch ## Only the DDP example (replicas: 2, gloo): rank 1's node preempted, the gang resumes.
	SPOTRUN_E2E_TORCH=$(TORCH_DIR) $(PY) -m pytest tests/e2e -k ddp

test-real: $(STAMP) build-real torch ## tests/e2e on real nodes with the built image, once per node preempt, reclaim and kill.
	SPOTRUN_E2E_TORCH=$(TORCH_DIR) $(PY) -m tests.real_nodes

test-kind: $(STAMP) build-kind ## On kind: the demo, then tests/e2e with kubectl drain as the disruption; host checked after.
	$(PY) -m tests.kind --e2e

# The unit tests, the S3-only integration tests and the operator's harnesses (CPU: the protocol
# model; the harnesses on a cluster of their own) run beside the cluster's other integration tests
# (mostly waiting on its controllers and timers), each with its output kept together. tests/e2e runs on real
# nodes (three disruptions) and on kind, not again on process nodes: `make test-e2e` does that alone.
test: $(STAMP) ## The whole suite: lint, unit beside integration, tests/e2e on real nodes and on kind. CI runs this.
	$(MAKE) --no-print-directory -j2 torch toolchain
	$(PY) -m pip check
	$(MAKE) lint
	@echo "make test: $$(date -u +%T) unit, S3-only and the harnesses beside the cluster's integration tests"
	$(MAKE) --no-print-directory -j2 --output-sync=target test-unit-and-harnesses test-cluster
	@echo "make test: $$(date -u +%T) tests/e2e on real nodes"
	SPOTRUN_E2E_TORCH=$(TORCH_DIR) $(PY) -m tests.real_nodes
	@echo "make test: $$(date -u +%T) the demo and tests/e2e on kind"
	$(PY) -m tests.kind --e2e
	@echo "make test: $$(date -u +%T) done"

bench: $(STAMP) up ## Both benchmarks below (about 15 minutes).
	$(PY) bench/checkpoint_io.py
	$(PY) bench/recovery_latency.py

bench-io: $(STAMP) up ## Checkpoint I/O: the SDK against raw boto3 on the local S3 server.
	$(PY) bench/checkpoint_io.py

bench-recovery: $(STAMP) up ## Recovery after preemption: a TaskRun against a batch/v1 Job, five rounds.
	$(PY) bench/recovery_latency.py

bench-lost-work: $(STAMP) up ## Lost work per interruption: no notice, a 20 s notice, kubectl drain with Checkpoint and Allow (~10 min).
	$(PY) bench/lost_work.py

bench-scale: $(STAMP) build ## TaskRuns against Jobs on kwok nodes, a cluster of its own: burst, storm, cost, failover (TASKRUNS=1000).
	$(PY) bench/scale.py $(if $(TASKRUNS),--taskruns $(TASKRUNS))

bench-memory: $(STAMP) build ## Operator memory at 5,000 TaskRuns: the caches (decoded, trimmed, shared); a restart on them.
	$(PY) bench/cache_memory.py
	$(PY) bench/restart_memory.py

bench-real-nodes: $(STAMP) build-real ## Real nodes against process nodes: up, idle memory, node add, pod start; recovery on real nodes.
	$(PY) bench/real_nodes.py
	$(PY) -m localcluster down
	$(PY) -m localcluster up --real-nodes
	$(PY) -m localcluster image
	$(PY) bench/recovery_latency.py --disruption preempt
	$(PY) bench/recovery_latency.py --disruption reclaim
	$(PY) -m localcluster down

clean: down kind-down ## Stop the clusters and remove .localcluster, .kind and caches in the tree (not the binary cache).
	rm -rf .localcluster .kind .pytest_cache .mypy_cache .ruff_cache
