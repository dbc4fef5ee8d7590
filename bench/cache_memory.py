"""Memory of the operator's watch caches: N TaskRuns and their pods as decoded, as trimmed, and as
trimmed and shared (what the caches keep now), each against the one before in the same run.

The objects are a TaskRun and its pod as the API server sent them (managedFields and all)
during `bench/scale.py` on kwok nodes, captured in bench/data/. Each copy is made unique (name,
uid, resourceVersion, node among 200) and decoded from its own JSON text, as each watch event is;
tracemalloc counts what the kept objects hold. The baseline "trimmed" is `trim_pod`/`trim_taskrun`
with `compact` (the sharing of repeated strings) turned off.

    python bench/cache_memory.py [--taskruns 5000]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from spotrun_operator import cache

DATA = Path(__file__).resolve().parent / "data"
Obj = dict[str, Any]


def copies(n: int) -> list[tuple[str, str]]:
    """N (TaskRun, pod) JSON texts, each pair with its own names, uids and versions."""
    taskrun_text, pod_text = (DATA / "taskrun.json").read_text(), (DATA / "pod.json").read_text()
    taskrun, pod = json.loads(taskrun_text), json.loads(pod_text)
    name, pod_name, uid, pod_uid = (
        taskrun["metadata"]["name"],
        pod["metadata"]["name"],
        taskrun["metadata"]["uid"],
        pod["metadata"]["uid"],
    )
    node = pod["spec"]["nodeName"]
    texts = []
    for i in range(n):
        new_name, new_uid = f"sweep-{i:05d}", f"{i:08x}-0000-4000-8000-000000000000"
        pair = []
        for original in (taskrun_text, pod_text):
            text = original.replace(pod_name, f"{new_name}-a1").replace(name, new_name)
            text = text.replace(pod_uid, f"{i:08x}-1111-4000-8000-000000000000").replace(uid, new_uid)
            text = text.replace(f'"{node}"', f'"kwok-spot-{i % 200}"')
            obj = json.loads(text)
            obj["metadata"]["resourceVersion"] = str(100000 + 2 * i + len(pair))
            pair.append(json.dumps(obj))
        texts.append((pair[0], pair[1]))
    return texts


def held(texts: list[tuple[str, str]], keep: Callable[[Obj, Obj], tuple[Obj, Obj]]) -> float:
    """MiB that the kept objects hold, each pair decoded from its own texts."""
    gc.collect()
    tracemalloc.start()
    kept = [keep(json.loads(a), json.loads(b)) for a, b in texts]
    gc.collect()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taskruns", type=int, default=5000)
    args = parser.parse_args()
    n = args.taskruns
    texts = copies(n)

    def cached(taskrun: Obj, pod: Obj) -> tuple[Obj, Obj]:
        return cache.trim_taskrun(taskrun), cache.trim_pod(pod)

    decoded = held(texts, lambda taskrun, pod: (taskrun, pod))
    with mock.patch.object(cache, "compact", lambda value: value):
        trimmed = held(texts, cached)
    shared = held(texts, cached)
    print(f"the operator's caches: {n} TaskRuns and their pods (bench/data/, each copy decoded apart)")
    print(f"  {'as decoded (the API server JSON)':44} {decoded:7.1f} MiB  {decoded * 1024 / n:5.1f} KiB a TaskRun")
    print(
        f"  {'trimmed (trim_pod, trim_taskrun)':44} {trimmed:7.1f} MiB  {trimmed * 1024 / n:5.1f} KiB a TaskRun"
        f"  {trimmed / decoded:.2f} of decoded"
    )
    print(
        f"  {'trimmed and shared (compact): the caches':44} {shared:7.1f} MiB  {shared * 1024 / n:5.1f} KiB a TaskRun"
        f"  {shared / trimmed:.2f} of trimmed, {shared / decoded:.2f} of decoded"
    )


if __name__ == "__main__":
    main()
