"""The checkpoint protocol's model-based test against a local directory (tests/protocol_model.py).

`make test-unit` runs the bounded `ci` profile: about 35 s for the protocol machine and 20 s for
the gang's on an idle 2-core machine, twice that beside a build. HYPOTHESIS_PROFILE=soak runs for
hours. The seed is printed first and the statistics last, whatever pytest captures; a failure
names the variables that rerun it (tests/harness.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from spotrun._storage import LocalStorage, Storage

from tests.gang_model import GangMachine
from tests.harness import machine_for, profile, profile_settings, run
from tests.protocol_model import ProtocolMachine


def local(scratch: Path) -> Storage:
    return LocalStorage(scratch / "store")


# pyproject's pytest timeout bounds a ci run, shrinking included; a soak runs for hours.
LIMIT = pytest.mark.timeout(0 if profile() == "soak" else 1200)


@LIMIT
def test_the_protocol_holds_under_faults(say: Callable[[str], None]) -> None:
    run(machine_for(ProtocolMachine, local), name="protocol/local", settings=profile_settings("protocol"), say=say)


@LIMIT
def test_a_gang_commits_together_under_faults(say: Callable[[str], None]) -> None:
    run(machine_for(GangMachine, local), name="gang/local", settings=profile_settings("gang"), say=say)
