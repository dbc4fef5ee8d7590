"""Lost work, usage and cost per attempt, and the prices they are computed from."""

from __future__ import annotations

from typing import Any

import pytest
from spotrun_operator import accounting
from spotrun_operator.config import ConfigError, Prices

Obj = dict[str, Any]
START, END = "2026-12-02T12:00:00Z", "2026-12-02T12:10:00Z"  # an attempt of 600 s


def entry(outcome: str = "Interrupted", capacity: str = "spot", **extra: Any) -> Obj:
    return {"startTime": START, "endTime": END, "outcome": outcome, "capacity": capacity, **extra}


@pytest.mark.parametrize(
    ("last_commit", "lost"),
    [
        (None, 600.0),  # nothing committed: the whole attempt is lost
        ("2026-12-02T12:09:30.400000+00:00", 29.6),  # 29.6 s after the last commit
        ("2026-12-02T11:50:00+00:00", 600.0),  # an earlier attempt's commit: this attempt's whole run
        ("2026-12-02T12:10:05+00:00", 0.0),  # clocks a little apart: never negative
    ],
)
def test_lost_work_runs_from_the_last_commit_or_the_start_to_the_end(last_commit: str | None, lost: float) -> None:
    assert accounting.lost_seconds(entry(), last_commit) == lost


def test_an_attempt_adds_its_lost_work_usage_and_cost_once() -> None:
    prices = Prices(spot=0.3, on_demand=1.0, currency="USD")
    status: Obj = {}
    first = entry()
    accounting.account(status, first, "2026-12-02T12:09:00+00:00", prices)
    assert first["lostSeconds"] == 60.0
    second = entry("Succeeded", "on-demand")
    accounting.account(status, second, "2026-12-02T12:09:00+00:00", prices)
    assert "lostSeconds" not in second  # a success loses nothing
    assert status["lostSeconds"] == 60.0
    assert status["usage"] == {"spotSeconds": 600.0, "onDemandSeconds": 600.0}
    # spent 600 s at 0.3/h + 600 s at 1.0/h; on demand both at 1.0/h
    assert status["cost"]["spent"] == pytest.approx(0.05 + 0.166667, abs=1e-5)
    assert status["cost"]["onDemand"] == pytest.approx(0.333333, abs=1e-5)
    assert status["cost"]["savedPercent"] == 35.0
    assert status["cost"]["currency"] == "USD"


def test_instance_type_prices_win_and_no_prices_means_no_cost() -> None:
    prices = Prices.parse(
        '{"spot": 0.3, "on-demand": 1.0, "instanceTypes": {"m5.large": {"spot": 0.02, "on-demand": 0.1}}}'
    )
    status: Obj = {}
    accounting.account(status, entry(instanceType="m5.large"), None, prices)
    assert status["cost"]["savedPercent"] == 80.0
    bare: Obj = {}
    accounting.account(bare, entry(), None, Prices())
    assert "cost" not in bare
    assert bare["usage"]["spotSeconds"] == 600.0


def test_an_attempt_that_never_started_costs_and_loses_nothing() -> None:
    status: Obj = {}
    never = entry(startTime="")
    accounting.account(status, never, None, Prices(spot=1, on_demand=2))
    assert never["lostSeconds"] == 0.0
    assert status["usage"]["spotSeconds"] == 0.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"spot": "cheap"}', "spot must be a price per hour"),
        ('{"spot": -1}', "spot must be a price per hour"),
        ('{"ondemand": 1}', "unknown keys ['ondemand']"),
        ('{"instanceTypes": {"m5.large": {"spot": 1, "reserved": 2}}}', "instanceTypes.m5.large must be"),
    ],
)
def test_bad_prices_are_refused_saying_what_to_fix(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="SPOTRUN_PRICES") as err:
        Prices.parse(text)
    assert says in str(err.value)
