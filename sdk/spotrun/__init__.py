"""Spotrun's in-pod SDK: checkpoints that survive preemption (the API arrives with issue 3)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
