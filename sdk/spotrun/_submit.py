"""`spotrun submit`: a TaskRun that runs one task of a Python file, its code shipped in a ConfigMap.

As `pyflyte run --remote` ships code without building an image, the file (or, with `--package`,
its directory) travels in a ConfigMap mounted into the pod at CODE_DIR, and the pod runs
`spotrun run CODE_DIR/FILE TASK --arg value ...` in the given image. The task's arguments are
checked against its signature, read from the file's source without importing it (its imports
need not be installed where `submit` runs), and typed as `spotrun run` types them.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

from spotrun._errors import ConfigError

Obj = dict[str, Any]
# Beside the notice volume's /var/run/spotrun, not in it: that one is read-only, and a mount
# inside it could not create its mount point.
CODE_DIR = "/var/run/spotrun-code"
CODE_VOLUME = "spotrun-code"
MOST_CODE_BYTES = 900 * 1024  # a ConfigMap holds at most 1 MiB, metadata included
SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    kind: Any  # int, float, str, bool, or None (JSON: lists, dicts, anything else)
    required: bool


def _function(file: Path, task: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    try:
        tree = ast.parse(file.read_text(), filename=str(file))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {file}: {err}") from None
    except SyntaxError as err:
        raise ConfigError(f"{file} is not valid Python: line {err.lineno}: {err.msg}") from None
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    if task not in functions:
        known = ", ".join(sorted(functions)) or "none"
        raise ConfigError(f"{file} defines no function {task!r} at module level (it defines: {known})")
    return functions[task]


def task_options(file: Path, task: str) -> dict[str, Any]:
    """`retries` and `interruptible` as written in `task`'s `@task(...)` (spotrun's or flytekit's),
    from its source: literals only (a name or an expression is not evaluated, so not taken)."""
    found: dict[str, Any] = {}
    for decorator in _function(file, task).decorator_list:
        if not isinstance(decorator, ast.Call):
            continue
        callee = decorator.func
        name = callee.attr if isinstance(callee, ast.Attribute) else callee.id if isinstance(callee, ast.Name) else ""
        if name != "task":
            continue
        for keyword in decorator.keywords:
            value = keyword.value.value if isinstance(keyword.value, ast.Constant) else None
            if keyword.arg == "retries" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                found["retries"] = value
            if keyword.arg == "interruptible" and isinstance(value, bool):
                found["interruptible"] = value
    return found


def parameters(file: Path, task: str) -> list[Parameter]:
    """The parameters of `task`, a module-level function of `file`, from its source."""
    args = _function(file, task).args
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    found = [
        Parameter(a.arg, _kind(a.annotation), default is None) for a, default in zip(positional, defaults, strict=True)
    ]
    found += [
        Parameter(a.arg, _kind(a.annotation), default is None)
        for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    return found


def _kind(annotation: ast.expr | None) -> Any:
    if annotation is None:
        return str
    name = annotation.value if isinstance(annotation, ast.Constant) else ast.unparse(annotation)
    return _TYPES.get(str(name).strip())


def task_arguments(file: Path, task: str, extra: list[str]) -> list[str]:
    """`extra` (--name value, --name=value) checked against `task`'s parameters and typed as
    `spotrun run` types them; returned as the pod's arguments, --name value each."""
    params = {p.name: p for p in parameters(file, task)}
    given: dict[str, str] = {}
    items = list(extra)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            raise ConfigError(f"task arguments are --name value; got {flag!r}")
        name, has_inline, inline = flag[2:].partition("=")
        name = name.replace("-", "_")
        if name not in params:
            raise ConfigError(f"{task}() has no parameter {name!r}; it takes {', '.join(params) or 'none'}")
        if not has_inline and not items:
            raise ConfigError(f"--{name} needs a value")
        raw = inline if has_inline else items.pop(0)
        _check(raw, params[name])
        given[name] = raw
    missing = [n for n, p in params.items() if p.required and n not in given]
    if missing:
        raise ConfigError(f"{task}() needs {', '.join('--' + n for n in missing)}")
    # --name=value: a value that starts with '-' stays a value in the pod's `spotrun run`.
    return [f"--{name}={raw}" for name, raw in given.items()]


def _check(raw: str, param: Parameter) -> None:
    convert(raw, param.kind if param.kind is not None else list, param.name)


def convert(raw: str, kind: Any, name: str) -> Any:
    """RAW as KIND (bool, int, float, str; anything else from JSON), as `spotrun run` types a task argument."""
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(raw)
        return json.loads(raw)
    except ValueError:
        raise ConfigError(f"--{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def code_files(file: Path, package: Path | None) -> tuple[dict[str, bytes], str]:
    """(relative path -> contents, FILE's path relative to the shipped root): FILE alone, or every
    file under PACKAGE (FILE inside it), at most MOST_CODE_BYTES in all."""
    if not file.is_file():
        raise ConfigError(f"{file} is not a file")
    if package is None:
        files = {file.name: file.read_bytes()}
        entry = file.name
    else:
        root = package.resolve()
        if not root.is_dir():
            raise ConfigError(f"--package {package} is not a directory")
        if root not in file.resolve().parents:
            raise ConfigError(f"{file} is not inside --package {package}")
        chosen: dict[str, Path] = {}
        size = 0
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part in SKIPPED_DIRS or part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if path.suffix in (".pyc", ".pyo") or root not in path.resolve().parents:
                continue  # a symlink out of the package does not take what it points at along
            size += path.stat().st_size
            if size > MOST_CODE_BYTES:
                break
            chosen[rel.as_posix()] = path
        files = {} if size > MOST_CODE_BYTES else {rel: path.read_bytes() for rel, path in chosen.items()}
        entry = file.resolve().relative_to(root).as_posix()
    size = max(size, sum(len(v) for v in files.values())) if package is not None else len(files[entry])
    if size > MOST_CODE_BYTES:
        raise ConfigError(
            f"the code is {size // 1024} KiB; at most {MOST_CODE_BYTES // 1024} KiB travels in a ConfigMap: "
            "leave data out of --package, or build the code into the image"
        )
    return files, entry


def configmap(name: str, namespace: str | None, files: dict[str, bytes]) -> Obj:
    """The ConfigMap that carries the code: keys f0, f1, ... (a key cannot hold '/'), text as data,
    anything else as binaryData; `items` in `volume` map them back to their paths."""
    data, binary = {}, {}
    for index, (_, content) in enumerate(sorted(files.items())):
        try:
            data[f"f{index}"] = content.decode()
        except UnicodeDecodeError:
            binary[f"f{index}"] = base64.b64encode(content).decode()
    body: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "spotrun-submit"}},
        "data": data,
    }
    if namespace:
        body["metadata"]["namespace"] = namespace
    if binary:
        body["binaryData"] = binary
    return body


def volume(configmap_name: str, files: dict[str, bytes]) -> Obj:
    items = [{"key": f"f{i}", "path": rel} for i, rel in enumerate(sorted(files))]
    return {"name": CODE_VOLUME, "configMap": {"name": configmap_name, "items": items}}


@dataclasses.dataclass(frozen=True)
class Submission:
    name: str
    file: Path
    task: str
    image: str
    arguments: list[str]
    package: Path | None = None
    capacity: str = "spot"
    retries: int | None = None
    max_interruptions: int | None = None
    namespace: str | None = None


def taskrun(sub: Submission, files: dict[str, bytes], entry: str) -> Obj:
    """The TaskRun: one container running the task from CODE_DIR, the code ConfigMap mounted there."""
    container: Obj = {
        "name": "task",
        "image": sub.image,
        "command": ["spotrun", "run", f"{CODE_DIR}/{entry}", sub.task, *sub.arguments],
        "env": [{"name": "PYTHONPATH", "value": CODE_DIR}],
        "volumeMounts": [{"name": CODE_VOLUME, "mountPath": CODE_DIR, "readOnly": True}],
    }
    spec: Obj = {
        "capacity": {"type": sub.capacity},
        "template": {"spec": {"containers": [container], "volumes": [volume(code_name(sub.name), files)]}},
    }
    if sub.retries is not None:
        spec["retries"] = sub.retries
    if sub.max_interruptions is not None:
        spec["maxInterruptions"] = sub.max_interruptions
    meta: Obj = {"name": sub.name, "annotations": {"spotrun.dev/submitted-from": f"{sub.file.name}:{sub.task}"}}
    if sub.namespace:
        meta["namespace"] = sub.namespace
    return {"apiVersion": "spotrun.dev/v1alpha1", "kind": "TaskRun", "metadata": meta, "spec": spec}


def code_name(taskrun_name: str) -> str:
    return f"{taskrun_name[:248]}-code"
