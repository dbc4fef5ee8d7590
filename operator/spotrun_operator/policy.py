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


INTERRUPTION_BACKOFF = (5.0, 300.0)  # first wait and cap, doubling per interruption in a row after the first


def interruption_backoff_seconds(in_a_row: int) -> float:
    """Delay before the attempt that follows `in_a_row` interruptions in a row of attempts whose task
    never started (a node that rejects every pod): the first is replaced at once, then 5 s, 10 s, ...
    up to 5 min, so that a broken node cannot use up maxInterruptions in a minute."""
    if in_a_row <= 1:
        return 0.0
    first, cap = INTERRUPTION_BACKOFF
    return float(min(first * 2 ** min(in_a_row - 2, 64), cap))


AVOID_SECONDS = 1800  # a node that rejected a pod is avoided this long
MOST_AVOIDED = 8  # nodes avoided at once: the newest rejections


def avoid_node(avoided: list[Obj], node: str, until: str) -> list[Obj]:
    """status.avoidNodes with `node` avoided until `until` (ISO time): one entry per node, the newest
    MOST_AVOIDED kept, so that the list stays bounded however many nodes reject."""
    kept = [e for e in avoided if e.get("node") != node] + [{"node": node, "until": until}]
    return kept[-MOST_AVOIDED:]


def avoided_nodes(avoided: list[Obj], now: str) -> list[str]:
    """The nodes still avoided at `now` (ISO times compare as text: both are UTC, to the second)."""
    return [str(e["node"]) for e in avoided if str(e.get("until", "")) > now]


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
