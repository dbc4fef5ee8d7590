"""Retry and backoff policy: how long a failure waits, which budget is used up, where the next attempt runs."""

from __future__ import annotations

from typing import Any

from spotrun_operator import names

Obj = dict[str, Any]


def backoff_seconds(spec: Obj, failures: int) -> float:
    """Delay before the attempt that follows the `failures`-th failure: initial * factor^(n-1), capped."""
    backoff = spec.get("backoff") or {}
    initial = float(backoff.get("initialSeconds", 10))
    factor = float(backoff.get("factor", 2))
    ceiling = float(backoff.get("maxSeconds", 600))
    if failures <= 0:
        return 0.0
    # Exponents past 64 only overflow: the ceiling is reached long before.
    return min(initial * factor ** min(failures - 1, 64), ceiling)


def exhausted_budget(
    spec: Obj, failures: int, interruptions: int, default_retries: int = 0, default_max_interruptions: int = 20
) -> tuple[str, str] | None:
    """(reason, message) when a budget is used up, else None. Unset budgets take the operator's defaults."""
    retries = int(spec.get("retries", default_retries))
    if failures > retries:
        return (
            names.REASON_RETRIES_EXHAUSTED,
            f"{failures} failure{'s' if failures != 1 else ''} used up retries ({retries})",
        )
    limit = int(spec.get("maxInterruptions", default_max_interruptions))
    if interruptions > limit:
        return (
            names.REASON_INTERRUPTIONS_EXHAUSTED,
            f"{interruptions} interruptions exceeded maxInterruptions ({limit})",
        )
    return None


def capacity_for_next_attempt(spec: Obj, interruptions: int, *, no_spot_capacity: bool = False) -> str:
    """spot, on-demand or any. spot and any fall back to on-demand for the rest of the run after
    `fallback.afterInterruptions` interruptions; spot also once an attempt found no spot capacity
    for `fallback.afterPendingSeconds` (`no_spot_capacity`). any needs no such wait: its pods
    prefer spot nodes and the scheduler places them elsewhere when spot has no room."""
    capacity = spec.get("capacity") or {}
    kind = str(capacity.get("type", names.CAPACITY_SPOT))
    if kind == names.CAPACITY_ON_DEMAND:
        return kind
    fallback = capacity.get("fallback") or {}
    after = fallback.get("afterInterruptions")
    if after is not None and interruptions >= int(after):
        return names.CAPACITY_ON_DEMAND
    if kind == names.CAPACITY_SPOT and no_spot_capacity:
        return names.CAPACITY_ON_DEMAND
    return kind
