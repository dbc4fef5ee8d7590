"""`make test-mutations`, the operator's half: reverts each of issue 25's fixes in turn and runs the
tests that guard it.

    python -m tests.operator_mutations [NAME ...]

Each entry puts back what the code was without the fix (one or more replacements, in the working
tree), runs its tests, and restores the files. Defects 2, 3, 5 and 9 are run through the perturbation
harness (tests/perturb: the real operator behind a perturbing proxy, on the local cluster), the rest
through their unit tests. A fix whose tests still pass without it guards nothing: every line must say
CAUGHT. Exits 1 when one is MISSED or STALE.
"""

from __future__ import annotations

import sys

from tests.mutations import Replacement, revert_and_run, verdict

OP = "operator/spotrun_operator"
PERTURB = "tests/integration/test_perturbation.py"

# (name, replacements, pytest arguments)
M: list[tuple[str, list[Replacement], list[str]]] = [
    (
        "2: a missing gang rank counted gone from the cache",
        [
            (
                f"{OP}/reconcile.py",
                "    return [(number, rank) for number in range(first, last + 1) for rank in ranks if (number, rank) not in seen]",
                "    return [(number, 0) for number in range(first, last + 1) if number not in {a for a, _ in seen}]",
            ),
            (f"{OP}/reconcile.py", "        if pod is None and not self.listed:", "        if False:"),
        ],
        [PERTURB, "-k", "defect2"],
    ),
    (
        "2: a relist drops what is newer than the list",
        [
            (
                f"{OP}/cache.py",
                "if key not in fresh and listed is not None and stored is not None and stored > listed:",
                "if False:",
            )
        ],
        ["tests/unit/test_cache.py"],
    ),
    (
        "3: no watchdog on the renew deadline",
        [(f"{OP}/leader.py", "        self.watchdog.start()", "        pass")],
        [PERTURB, "-k", "defect3"],
    ),
    (
        "5: a budget of the TaskRun's name adopted and deleted whoever owns it",
        [
            (
                f"{OP}/api.py",
                "        if not owned_by(existing, _owner_uid(body)):\n            raise Taken(",
                "        if False:\n            raise Taken(",
            ),
            (f"{OP}/api.py", "            if not owned_by(existing, owner):", "            if False:"),
        ],
        [PERTURB, "-k", "defect5"],
    ),
    (
        "9: stop annotations without the pod's resourceVersion",
        [
            (
                f"{OP}/api.py",
                '        patch = {"metadata": {"annotations": {key: value}, "resourceVersion": meta["resourceVersion"]}}',
                '        patch = {"metadata": {"annotations": {key: value}}}',
            )
        ],
        [PERTURB, "-k", "defect9"],
    ),
    (
        "1: a failed watch goes on from its old version",
        [
            (
                f"{OP}/cache.py",
                '                # watch missed (a node added, a pod deleted) reaches the cache.\n                self.version = ""',
                "                # watch missed (a node added, a pod deleted) reaches the cache.\n                pass",
            )
        ],
        ["tests/unit/test_informer_health.py"],
    ),
    (
        "4: any URI read with the operator's credentials",
        [(f"{OP}/checkpoints.py", "bool(uri) and uri == assigned, assigned)", "bool(uri), assigned)")],
        ["tests/unit/test_checkpoints.py"],
    ),
    (
        "6: storage read inside the pass",
        [
            (
                f"{OP}/checkpoints.py",
                "        return self.cache._serve(self.key, self.uri)",
                "        return self.cache._open(self.uri).read()",
            )
        ],
        ["tests/unit/test_checkpoints.py"],
    ),
    (
        "7: interruptions in a row without backoff",
        [(f"{OP}/reconcile.py", "delay = policy.interruption_backoff_seconds(in_a_row)", "delay = 0.0")],
        ["tests/unit/test_reconcile.py"],
    ),
    (
        "8: the Events thread dies on a connection error",
        [
            (
                f"{OP}/controller.py",
                "            except Exception as err:  # a connection error as much as a refusal: the next one may pass",
                "            except ApiException as err:  # noqa: F821",
            )
        ],
        ["tests/unit/test_api_events.py"],
    ),
    (
        "a dropped pass changes the cached TaskRun",
        [
            (
                f"{OP}/reconcile.py",
                '        history: list[Obj] = list(status.get("attempts") or [])',
                '        history: list[Obj] = list(self.written.get("attempts") or [])',
            )
        ],
        ["tests/unit/test_reconcile_disruption.py"],
    ),
    (
        "6: a pass served a storage read from before it asked",
        [
            (
                f"{OP}/checkpoints.py",
                "            fresh_since = now if entry.asked is None else entry.asked",
                "            fresh_since = now - 1.0 if entry.asked is None else min(entry.asked, now - 1.0)",
            )
        ],
        ["tests/unit/test_checkpoints.py"],
    ),
    (
        "10: a withdrawn notice still a preemption in the SDK",
        [("sdk/spotrun/_preemption.py", "                _on_withdrawn()", "                pass")],
        ["tests/unit/test_preemption.py"],
    ),
    (
        "10: an eviction after a drain's notice not Drained",
        [(f"{OP}/attempts.py", "        and outcome.reason == EVICTED_THROUGH_THE_API", "        and False")],
        ["tests/unit/test_disruption.py"],
    ),
    (
        "11: API errors logged with their HTTP dump",
        [(f"{OP}/__main__.py", "    handler.addFilter(_ShortApiErrors())", "    pass")],
        ["tests/unit/test_operator_logging.py"],
    ),
]


def main(only: list[str]) -> int:
    missed = 0
    for name, replacements, tests in M:
        if not only or any(name.startswith(prefix) for prefix in only):
            missed += revert_and_run(name, replacements, tests)
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
