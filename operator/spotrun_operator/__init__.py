"""Spotrun's kopf operator: runs each TaskRun as one pod per attempt on spot capacity.

Modules, one concern each: `names` (every name written to the cluster), `config` (environment,
capacity profiles), `classify` (how a pod ended), `policy` (backoff, budgets, capacity),
`podbuild` (the attempt's pod), `status` (conditions), `reconcile` (the pure decision), `api`
(the only module that calls the Kubernetes API), `handlers` (thin kopf handlers), `metrics`.
"""

__version__ = "0.1.0"
