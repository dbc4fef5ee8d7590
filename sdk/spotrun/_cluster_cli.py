"""`spotrun` on a cluster's TaskRuns (also `kubectl spotrun`): submit, get, describe, logs, suspend, resume, delete."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotrun import _argtypes, _submit, _yaml
from spotrun._cluster import RESOURCE, ClusterError, Kubectl, NotFoundError
from spotrun._errors import ConfigError

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
POLL_SECONDS = 1.0
DELETE_CHECKPOINTS = "spotrun.dev/delete-checkpoints"  # the operator's annotation (names.py)
OPERATOR_FINALIZER = "spotrun.dev/finalizer"  # the operator's (kopf's) on annotated TaskRuns (names.py)
TAKEN_IN_CHARGE_SECONDS = 30.0

EXAMPLES = {
    "submit": (
        "examples:\n  spotrun submit examples/checkpoint_seed.py use_checkpoint --n_iterations 10 \\\n"
        "      --image ghcr.io/spotrun/spotrun:0.1.0 --retries 3 --wait\n"
        "  spotrun submit train.py train --image my-task:1 --package . --epochs 10 --lr 0.01\n"
        "  spotrun submit train.py train --image my-task:1 --dry-run    # print the YAML, create nothing\n"
        "  spotrun submit t.py t --image i -- --name x   # a task parameter named like an option: after --"
    ),
    "completion": (
        "examples:\n  source <(spotrun completion bash)          # this shell\n"
        "  spotrun completion bash > /etc/bash_completion.d/spotrun\n  source <(spotrun completion zsh)"
    ),
    "get": "examples:\n  spotrun get\n  spotrun get train -n ml\n  spotrun get -o yaml train",
    "describe": "examples:\n  spotrun describe train\n  kubectl spotrun describe train --context prod -n ml",
    "logs": (
        "examples:\n  spotrun logs train             # the current attempt\n"
        "  spotrun logs train -f          # follow, through preemptions, until the run ends\n"
        "  spotrun logs train --attempt 1\n  spotrun logs train --all -f     # every attempt, lines prefixed"
    ),
    "suspend": "examples:\n  spotrun suspend train          # the pod is stopped gracefully; checkpoints are kept",
    "resume": "examples:\n  spotrun resume train           # a new attempt resumes from the newest checkpoint",
    "delete": (
        "examples:\n  spotrun delete train                 # checkpoints are kept\n"
        "  spotrun delete train --checkpoints   # and the operator deletes them"
    ),
}


def cluster_flags() -> argparse.ArgumentParser:
    """-n/--namespace, --context, --kubeconfig, as kubectl takes them."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("cluster (as kubectl)")
    group.add_argument("-n", "--namespace", type=_argtypes.object_name, help="the namespace (default: the context's)")
    group.add_argument("--context", help="the kubeconfig context (default: the current one)")
    group.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    return flags


def kubectl(args: argparse.Namespace) -> Kubectl:
    return Kubectl(namespace=args.namespace, context=args.context, kubeconfig=args.kubeconfig)


def add_commands(sub: Any, flags: argparse.ArgumentParser) -> None:
    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace, list[str]], int], *, cluster: bool = True
    ) -> Any:
        parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[flags] if cluster else [],
            allow_abbrev=False,  # submit's task arguments are not its own options shortened
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=handler)
        return parser

    submit = command("submit", "run a task of a Python file as a TaskRun, its code shipped in a ConfigMap", _submit_run)
    submit.add_argument("file", type=Path, help="the Python file that defines the task")
    submit.add_argument("task", help="the function's name; its arguments follow as --name value")
    submit.add_argument("--image", help="an image with the spotrun SDK and the task's dependencies (required)")
    submit.add_argument(
        "--capacity",
        choices=["spot", "on-demand", "any"],
        help="default: on-demand for @task(interruptible=False), else spot",
    )
    submit.add_argument(
        "--retries",
        type=_argtypes.whole(0),
        help="failures retried (default: the task's @task(retries=N), else the operator's)",
    )
    submit.add_argument(
        "--max-interruptions", type=_argtypes.whole(0), help="interruptions tolerated (default: the operator's)"
    )
    submit.add_argument(
        "--name", dest="run_name", type=_argtypes.object_name, help="the TaskRun's name (default: FILE-TASK-xxxxx)"
    )
    submit.add_argument(
        "--package", type=Path, help=f"ship this directory (FILE in it), at most {_submit.MOST_CODE_BYTES // 1024} KiB"
    )
    submit.add_argument("--wait", action="store_true", help="follow it to its end; exit 0 only when it Succeeded")
    submit.add_argument(
        "--dry-run", action="store_true", help="print the ConfigMap and TaskRun as YAML; create nothing"
    )
    completion = command("completion", "print a shell completion script", _completion, cluster=False)
    completion.add_argument("shell", choices=["bash", "zsh"])
    get = command("get", "list TaskRuns, or show one (kubectl's columns)", _get)
    get.add_argument("name", nargs="?", type=_argtypes.object_name, help="a TaskRun (default: all in the namespace)")
    get.add_argument("-o", "--output", choices=["wide", "json", "yaml", "name"], help="as kubectl get -o")
    describe = command("describe", "a TaskRun's attempts, conditions and Events", _describe)
    describe.add_argument("name", type=_argtypes.object_name)
    logs = command("logs", "the logs of a TaskRun's attempts, across pods", _logs)
    logs.add_argument("name", type=_argtypes.object_name)
    logs.add_argument("-f", "--follow", action="store_true", help="keep following, into the next attempts")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--attempt", type=_argtypes.whole(1), help="this attempt's logs (default: the current one)")
    which.add_argument("--all", action="store_true", help="every attempt whose pod is kept, each line prefixed")
    for name, help_text, handler in (
        ("suspend", "stop the pod gracefully; keep the checkpoints", _suspend),
        ("resume", "start a new attempt from the newest checkpoint", _resume),
    ):
        command(name, help_text, handler).add_argument("name", type=_argtypes.object_name)
    delete = command("delete", "delete a TaskRun (its checkpoints are kept unless --checkpoints)", _delete)
    delete.add_argument("name", type=_argtypes.object_name)
    delete.add_argument("--checkpoints", action="store_true", help="also delete its checkpoints (by the operator)")
    delete.add_argument("--wait", action="store_true", help="until it is gone")


def _completion(args: argparse.Namespace, extra: list[str]) -> int:
    from spotrun._cli import _parser  # noqa: PLC0415 - the whole command line, built there

    print(completion_script(_parser(), args.shell), end="")
    return 0


# ----- get, describe ---------------------------------------------------------------------------


def _get(args: argparse.Namespace, extra: list[str]) -> int:
    cluster = kubectl(args)
    argv = ["get", RESOURCE, *([args.name] if args.name else [])]
    if args.output:
        argv += ["-o", args.output]
    out = cluster.run(*argv, what=f"TaskRun {args.name}" if args.name else "TaskRuns")
    print(out, end="")
    if not out and args.output in (None, "wide"):
        print(f"No TaskRuns in {cluster.where()}", file=sys.stderr)
    return 0


def _age(stamp: str | None, now: datetime.datetime) -> str:
    if not stamp:
        return "-"
    seconds = int((now - datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def describe_text(taskrun: Obj, events: list[Obj], now: datetime.datetime) -> str:
    """What `spotrun describe` prints, from the TaskRun and its Events."""
    meta, st = taskrun["metadata"], taskrun.get("status") or {}
    checkpoint = st.get("checkpoint") or {}
    newest = checkpoint.get("id")
    lines = [
        f"Name:           {meta['name']}",
        f"Namespace:      {meta['namespace']}",
        f"Phase:          {st.get('phase', 'Pending')}: {st.get('message', '')}".rstrip(": "),
        f"Attempt:        {st.get('attempt', 0)} (failures {st.get('failures', 0)}, "
        f"interruptions {st.get('interruptions', 0)})",
        f"Capacity:       {st.get('capacity', (taskrun['spec'].get('capacity') or {}).get('type', 'spot'))}",
        f"Checkpoints:    {checkpoint.get('uri', '-')}"
        + (f" (newest {newest}, step {checkpoint.get('step')}, attempt {checkpoint.get('attempt')})" if newest else ""),
    ]
    if "lostSeconds" in st:
        lines.append(f"Lost work:      {st['lostSeconds']}s")
    if (st.get("cost") or {}).get("savedPercent") is not None:
        lines.append(f"Saved:          {st['cost']['savedPercent']}% against on-demand")
    if "result" in st:
        lines.append(f"Result:         {json.dumps(st['result'])}")
    attempts = list(st.get("attempts") or [])
    current = int(st.get("attempt", 0))
    if current and all(int(a["attempt"]) != current for a in attempts) and st.get("phase") not in TERMINAL:
        attempts.append(
            {
                "attempt": current,
                "pod": st.get("podName", ""),
                "node": st.get("nodeName", ""),
                "capacity": st.get("capacity", ""),
                "outcome": f"({st.get('phase', 'Pending')})",
                "resumedFrom": (st.get("startCheckpoint") or {}).get("id")
                if int((st.get("startCheckpoint") or {}).get("attempt", 0)) == current
                else None,
            }
        )
    lines += ["", "Attempts:"]
    header = ["ATTEMPT", "POD", "NODE", "CAPACITY", "OUTCOME", "REASON", "EXIT", "LOST", "RESUMED FROM"]
    rows = [header] + [
        [
            str(a.get("attempt", "")),
            a.get("pod") or "-",
            a.get("node") or "-",
            a.get("capacity") or "-",
            a.get("outcome") or "-",
            a.get("reason") or "-",
            str(a["exitCode"]) if "exitCode" in a else "-",
            f"{a['lostSeconds']}s" if "lostSeconds" in a else "-",
            a.get("resumedFrom") or "-",
        ]
        for a in attempts
    ]
    lines += _table(rows) if attempts else ["  none yet"]
    conditions = st.get("conditions") or []
    lines += ["", "Conditions:"]
    rows = [["TYPE", "STATUS", "REASON", "MESSAGE"]] + [
        [c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", "")] for c in conditions
    ]
    lines += _table(rows) if conditions else ["  none"]
    lines += ["", "Events:"]
    rows = [["AGE", "TYPE", "REASON", "MESSAGE"]] + [
        [
            _age(e.get("lastTimestamp") or e.get("eventTime"), now),
            e.get("type", ""),
            e.get("reason", ""),
            e.get("message", ""),
        ]
        for e in events
    ]
    lines += _table(rows) if events else ["  none (Events are kept for an hour)"]
    return "\n".join(lines)


def _describe(args: argparse.Namespace, extra: list[str]) -> int:
    cluster = kubectl(args)
    taskrun = cluster.taskrun(args.name)
    print(describe_text(taskrun, cluster.events(args.name), datetime.datetime.now(datetime.UTC)))
    return 0


# ----- suspend, resume, delete -------------------------------------------------------------------


def _suspend(args: argparse.Namespace, extra: list[str]) -> int:
    kubectl(args).patch_spec(args.name, {"suspend": True})
    print(f"taskrun/{args.name} suspended: its pod is stopped gracefully, its checkpoints are kept")
    return 0


def _resume(args: argparse.Namespace, extra: list[str]) -> int:
    kubectl(args).patch_spec(args.name, {"suspend": False})
    print(f"taskrun/{args.name} resumed: a new attempt starts from its newest checkpoint")
    return 0


def _delete(args: argparse.Namespace, extra: list[str]) -> int:
    cluster = kubectl(args)
    taskrun = cluster.taskrun(args.name)  # a clear "not found" before anything else
    annotated = (taskrun["metadata"].get("annotations") or {}).get(DELETE_CHECKPOINTS) == "true"
    if args.checkpoints and not annotated:
        # The operator deletes them from its finalizer, which it adds once it sees the annotation:
        # a TaskRun deleted before that would go without its checkpoints being deleted.
        cluster.annotate(args.name, DELETE_CHECKPOINTS, "true")
        deadline = time.monotonic() + TAKEN_IN_CHARGE_SECONDS
        while OPERATOR_FINALIZER not in (cluster.taskrun(args.name)["metadata"].get("finalizers") or []):
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the operator did not take up the deletion of {args.name}'s checkpoints within "
                    f"{TAKEN_IN_CHARGE_SECONDS:.0f}s (is it running?): the TaskRun is not deleted; it is "
                    f"annotated {DELETE_CHECKPOINTS}=true, so deleting it later deletes them too"
                )
            time.sleep(POLL_SECONDS / 4)
    cluster.delete(args.name, wait=args.wait)
    if args.checkpoints or annotated:
        custom = ((taskrun["spec"].get("checkpoint") or {}).get("uri")) is not None
        what = (
            "the operator deletes its checkpoints if they are under the prefix it assigned (spec.checkpoint.uri "
            "is set: if it is another, delete them with your own credentials)"
            if custom
            else "the operator deletes its checkpoints"
        )
        if annotated and not args.checkpoints:
            what += f", as its annotation {DELETE_CHECKPOINTS}=true asks"
    else:
        what = "its checkpoints are kept"
    print(f"taskrun/{args.name} deleted; {what}")
    return 0


# ----- logs --------------------------------------------------------------------------------------


def attempt_pods(taskrun: Obj) -> dict[int, str]:
    """Attempt -> its pod's name, from the history and the current attempt."""
    st = taskrun.get("status") or {}
    pods = {int(a["attempt"]): str(a["pod"]) for a in st.get("attempts") or [] if a.get("pod")}
    if st.get("attempt") and st.get("podName"):
        pods[int(st["attempt"])] = str(st["podName"])
    return pods


def _print_logs(cluster: Kubectl, pod: str, prefix: str, *, follow: bool, skip: int) -> tuple[bool, int, str]:
    """Prints a pod's logs past their first `skip` lines (those printed already), following while it
    runs: (whether kubectl read them, how many lines it printed, kubectl's last error line)."""
    process = cluster.logs(pod, follow=follow)
    assert process.stdout is not None
    printed = 0
    for index, line in enumerate(process.stdout):
        if index < skip:
            continue
        sys.stdout.write(prefix + line)
        sys.stdout.flush()
        printed += 1
    process.wait()
    error = process.stderr.read().strip().splitlines()[-1:] if process.stderr is not None else []
    return process.returncode == 0, printed, error[0] if error else ""


def _logs(args: argparse.Namespace, extra: list[str]) -> int:
    """One attempt's logs (--attempt, or the current one), or every attempt's in order (--all); with
    -f, the live attempt's are followed and then the next attempts' as the operator creates them,
    until the run ends. A stream that ends while its pod still runs (a broken connection) is taken
    up again past the lines printed already."""
    cluster = kubectl(args)
    taskrun = cluster.taskrun(args.name)
    pods = attempt_pods(taskrun)
    if not pods:
        raise ClusterError(f"TaskRun {args.name} has no attempt yet: `spotrun describe {args.name}` says why")
    if args.attempt is not None and args.attempt not in pods:
        raise NotFoundError(f"TaskRun {args.name} has no attempt {args.attempt}; its attempts: {sorted(pods)}")
    shown = min(pods) if args.all else (args.attempt or max(pods))
    across = args.all or (args.follow and args.attempt is None)  # go on to the attempts after it
    seen: dict[int, int] = {}  # attempt -> lines printed
    while True:
        live = shown == max(pods) and (taskrun.get("status") or {}).get("phase") not in TERMINAL
        prefix = f"[attempt {shown}] " if args.all else ""
        follow = args.follow and live
        ok, printed, error = _print_logs(cluster, pods[shown], prefix, follow=follow, skip=seen.get(shown, 0))
        seen[shown] = seen.get(shown, 0) + printed
        phase = cluster.pod_phase(pods[shown]) if follow or not ok else "Done"
        if follow and phase in ("Pending", "Running"):  # not started yet, or the stream broke
            time.sleep(POLL_SECONDS)
            taskrun = cluster.taskrun(args.name)
            pods = attempt_pods(taskrun)
            continue
        if not ok and phase is None:
            print(f"spotrun: the logs of attempt {shown} ({pods[shown]}) are gone with its pod", file=sys.stderr)
        elif not ok:
            print(f"spotrun: the logs of attempt {shown} ({pods[shown]}) cannot be read: {error}", file=sys.stderr)
        if not across:
            return 0
        while True:  # the next attempt, once the operator has created it
            taskrun = cluster.taskrun(args.name)
            pods = attempt_pods(taskrun)
            following = [n for n in sorted(pods) if n > shown]
            if following:
                shown = following[0]
                if not args.all:
                    print(f"--- attempt {shown} ({pods[shown]}) ---", flush=True)
                break
            if not args.follow or (taskrun.get("status") or {}).get("phase") in TERMINAL:
                return 0
            time.sleep(POLL_SECONDS)


# ----- submit ------------------------------------------------------------------------------------

# What says the image will not come: a single ErrImagePull may pass (the registry hiccups); these do not.
IMAGE_ERRORS = ("ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
WAIT_ERRORS_SECONDS = 60.0  # how long --wait rides out a cluster it cannot read


def _run_name(file: Path, task: str) -> str:
    """FILE-TASK-xxxxx as a DNS name: lower case, '-' for anything else, at most 63 characters."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{file.stem}-{task}".lower()).strip("-")[:50].strip("-") or "task"
    return f"{base}-{uuid.uuid4().hex[:5]}"


def _submit_run(args: argparse.Namespace, extra: list[str]) -> int:
    if not args.image:
        raise ConfigError(
            "--image IMAGE is required: an image with the spotrun SDK and the task's dependencies, "
            "e.g. ghcr.io/spotrun/spotrun:0.1.0 (the code itself travels in a ConfigMap)"
        )
    task_args = _submit.task_arguments(args.file, args.task, [a for a in extra if a != "--"])
    files, entry = _submit.code_files(args.file, args.package)
    name = args.run_name or _run_name(args.file, args.task)
    written = _submit.task_options(args.file, args.task)  # @task(retries=..., interruptible=...)
    capacity = args.capacity or ("on-demand" if written.get("interruptible") is False else "spot")
    submission = _submit.Submission(
        name=name,
        file=args.file,
        task=args.task,
        image=args.image,
        arguments=task_args,
        package=args.package,
        capacity=capacity,
        retries=args.retries if args.retries is not None else written.get("retries"),
        max_interruptions=args.max_interruptions,
        namespace=args.namespace,
    )
    code = _submit.configmap(_submit.code_name(name), args.namespace, files)
    taskrun = _submit.taskrun(submission, files, entry)
    if args.dry_run:
        print(_yaml.dump_all([code, taskrun]), end="")
        return 0
    cluster = kubectl(args)
    try:
        cluster.taskrun(name)
    except NotFoundError:
        pass
    else:
        raise ConfigError(f"TaskRun {name} exists already in {cluster.where()}: choose another --name")
    created = cluster.create(taskrun)
    # The code goes second, owned by the TaskRun from the start: nothing is left without an owner,
    # and the kubelet waits for a ConfigMap volume that is not there yet.
    owner = {"apiVersion": "spotrun.dev/v1alpha1", "kind": "TaskRun", "name": name, "uid": created["metadata"]["uid"]}
    code["metadata"]["ownerReferences"] = [owner]
    try:
        cluster.create(code)
    except BaseException:
        with contextlib.suppress(ClusterError):
            cluster.delete(name, wait=False)
        raise
    print(f"taskrun/{name} submitted ({len(files)} file(s) of code); follow it: spotrun logs {name} -f", flush=True)
    if not args.wait:
        return 0
    return _wait(cluster, name)


def _wait(cluster: Kubectl, name: str) -> int:
    """Until the TaskRun ends: prints each new phase, then its result; 0 only when it Succeeded."""
    said, failing_since = "", None
    while True:
        try:
            st = cluster.taskrun(name).get("status") or {}
        except NotFoundError:
            raise
        except ClusterError as err:  # an API server restarting, a network blip: the run goes on
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > WAIT_ERRORS_SECONDS:
                raise
            print(f"spotrun: reading {name} failed, trying again: {err}", file=sys.stderr)
            time.sleep(POLL_SECONDS)
            continue
        failing_since = None
        phase, message = st.get("phase", "Pending"), st.get("message", "")
        line = f"{phase}: {message}" if message else phase
        if line != said:
            print(f"taskrun/{name}: {line}", flush=True)
            said = line
        if phase in TERMINAL:
            if phase == "Succeeded":
                print(json.dumps(st.get("result")))
                return 0
            return 1
        ready: Obj = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        if ready.get("reason") in IMAGE_ERRORS:
            print(
                f"spotrun: the image of {name} cannot be pulled ({ready['reason']}): check --image; "
                f"the TaskRun is left as it is (`spotrun delete {name}`)",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL_SECONDS)


# ----- completion --------------------------------------------------------------------------------

NAMED = ("describe", "logs", "suspend", "resume", "delete", "get")  # commands whose argument is a TaskRun


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash (or zsh, through bashcompinit) completion of `spotrun` and `kubectl-spotrun`, from
    PARSER: commands, each command's options, and TaskRun names from the cluster."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, command in sub.choices.items():
        options = sorted(o for a in command._actions for o in a.option_strings)
        inner = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        words = " ".join([*options, *(inner.choices if inner else [])])
        names = (
            '$([[ "$cur" != -* ]] && kubectl get taskruns.spotrun.dev -o name --request-timeout=2s "${ns[@]}" '
            '2>/dev/null | sed "s|.*/||")'
            if name in NAMED
            else ""
        )
        cases.append(f'        {name}) words="{words} {names}" ;;')
    body = "\n".join(cases)
    script = f"""# spotrun completion ({shell}): source <(spotrun completion {shell})
_spotrun() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="${{COMP_WORDS[1]}}" words ns=()
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -n|--namespace|--context|--kubeconfig) ns+=("${{COMP_WORDS[i]}}" "${{COMP_WORDS[i+1]}}") ;;
        esac
    done
    if [[ $COMP_CWORD -eq 1 ]]; then
        words="{" ".join(sub.choices)}"
    else
        case "$command" in
{body}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _spotrun spotrun kubectl-spotrun
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script
