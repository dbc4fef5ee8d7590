"""Perturbation tests of the operator, as Sieve (OSDI'22) and Acto (SOSP'23) do for controllers.

The real operator runs, as its own ServiceAccount, against the real API server of the local cluster
through a proxy (`proxy.py`) that follows a schedule (`schedule.py`) drawn from a seed: it delays,
reorders and cuts watch streams, ends them with 410 (a relist, answered fresh or from an older
snapshot, as an HA API server with a lagging watch cache does), answers writes with 409/429/500 or a
timeout, black-holes requests; the runner (`runner.py`) also restarts operators, hands leadership
over, and asks for stops (suspend). Ground truth comes from the API server directly (`truth.py`), and
after every run the invariants (`invariants.py`) are checked:

- never two live pods for one (attempt, rank);
- failures and interruptions counted exactly once (against the pods that failed on their own and the
  pods the harness itself deleted), attempts counted once each;
- no object deleted that the TaskRun does not own (by UID);
- no write by a replica received after another took the Lease (the apiserver's audit log);
- every TaskRun reaches its terminal phase.

A violation names the invariant, the TaskRun and the schedule, which replays with
SPOTRUN_PERTURB_SEED=<seed>.
"""
