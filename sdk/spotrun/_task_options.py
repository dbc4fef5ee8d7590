"""flytekit's `@task` keywords under `@spotrun.task`: which ones Spotrun honours, which it accepts
and ignores (with one warning saying where the setting belongs here), and the checks of their values.

Flyte code runs with only its import changed: `from flytekit import task` -> `from spotrun import task`.
A keyword flytekit does not have either is a TypeError, as Python raises for any function.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import warnings
from typing import Any

HONOURED = ("retries", "timeout", "interruptible")

_NO_CACHE = "Spotrun keeps no cache of task outputs: the task runs every time"
_POD = "set it in the TaskRun's pod template (spec.template), or with `spotrun submit`'s options"
_FLYTE_ONLY = "it configures Flyte's own machinery, which Spotrun has no counterpart of"

IGNORED: dict[str, str] = {
    "cache": _NO_CACHE,
    "cache_version": _NO_CACHE,
    "cache_serialize": _NO_CACHE,
    "cache_ignore_input_vars": _NO_CACHE,
    "requests": _POD,
    "limits": _POD,
    "resources": _POD,
    "accelerator": _POD,
    "shared_memory": _POD,
    "container_image": "the image is the TaskRun's (`spotrun submit --image`)",
    "environment": _POD,
    "secret_requests": _POD,
    "pod_template": _POD,
    "pod_template_name": _POD,
    "labels": _POD,
    "annotations": _POD,
    "task_config": _FLYTE_ONLY,
    "execution_mode": _FLYTE_ONLY,
    "node_dependency_hints": _FLYTE_ONLY,
    "task_resolver": _FLYTE_ONLY,
    "docs": _FLYTE_ONLY,
    "disable_deck": _FLYTE_ONLY,
    "enable_deck": _FLYTE_ONLY,
    "deck_fields": _FLYTE_ONLY,
    "pickle_untyped": _FLYTE_ONLY,
    "deprecated": "",  # a warning of its own: the task's deprecation message
}


class IgnoredTaskOptionWarning(UserWarning):
    """A flytekit `@task` keyword that has no effect under Spotrun; the message says where it belongs."""


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    retries: int = 0
    timeout: float | None = None  # seconds per attempt; None: no limit
    interruptible: bool | None = None  # False: `spotrun submit` asks for on-demand capacity
    ignored: tuple[str, ...] = ()
    deprecated: str = ""


def parse(retries: object = 0, timeout: object = 0, interruptible: object = None, **others: Any) -> TaskOptions:
    """The options of `@spotrun.task(...)`, checked: TypeError for a keyword flytekit has not either
    or a value of the wrong type, ValueError for one out of range. Nothing else happens here."""
    unknown = sorted(set(others) - set(IGNORED))
    if unknown:
        raise TypeError(
            f"task() got an unexpected keyword argument {unknown[0]!r}; it takes {', '.join(HONOURED)}, "
            f"and accepts (without effect) flytekit's {', '.join(sorted(IGNORED))}"
        )
    deprecated = others.get("deprecated", "")
    if not isinstance(deprecated, str):
        raise TypeError(f"task(deprecated=...) takes the deprecation message as a str, not {type(deprecated).__name__}")
    ignored = tuple(name for name in others if name != "deprecated")
    return TaskOptions(_retries(retries), _timeout(timeout), _interruptible(interruptible), ignored, deprecated)


def _retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"task(retries=...) takes a whole number, not {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"retries must be 0 or more, not {value}")
    return value


def _timeout(value: object) -> float | None:
    """flytekit's timeout: a timedelta or seconds (int); 0 means none. A float is taken too."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"task(timeout=...) takes seconds or a datetime.timedelta, not {type(value).__name__} {value!r}"
        )
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be 0 (no limit) or more seconds, not {value!r}")
    return seconds or None


def _interruptible(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"task(interruptible=...) takes True, False or None, not {type(value).__name__} {value!r}")
    return value


def warn(options: TaskOptions, task_name: str, stacklevel: int) -> None:
    """One warning for the keywords without effect (naming each and where it belongs), and one for
    `deprecated`, pointing at the decorated function's line."""
    if options.ignored:
        reasons = "; ".join(f"{name}: {IGNORED[name]}" for name in options.ignored)
        warnings.warn(
            f"@spotrun.task on {task_name} ignores {', '.join(options.ignored)} ({reasons})",
            IgnoredTaskOptionWarning,
            stacklevel=stacklevel + 1,
        )
    if options.deprecated:
        warnings.warn(f"task {task_name} is deprecated: {options.deprecated}", FutureWarning, stacklevel=stacklevel + 1)
