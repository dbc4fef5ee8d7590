"""Spotrun's kopf operator for TaskRun resources (the reconcile arrives with issue 4)."""

__version__ = "0.1.0"
