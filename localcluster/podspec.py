"""Pure helpers that turn a pod spec into what a host process needs: argv, environment, image entrypoint."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, the rest stays as written."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR.sub(repl, text)


def image_repository(image: str) -> str:
    """`registry:5000/org/app:tag@sha256:..` -> `registry:5000/org/app`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def resolve_argv(container: Obj, env: Mapping[str, str], images: Mapping[str, Obj]) -> list[str]:
    """The process argv as a container runtime builds it from command/args and the image's ENTRYPOINT/CMD."""
    command = container.get("command")
    args = container.get("args")
    image = images.get(image_repository(container.get("image", "")), {})
    if not command:
        if not image:
            raise ValueError(
                f"container {container['name']!r} has no command and image {container.get('image')!r} is not in "
                "the localcluster image map (give the container a command, or add the image to images.json)"
            )
        command = list(image.get("entrypoint", []))
        if args is None:
            args = list(image.get("cmd", []))
    argv = [expand(part, env) for part in [*command, *(args or [])]]
    if not argv:
        raise ValueError(f"container {container['name']!r} resolves to an empty command")
    return argv


def field_value(pod: Obj, path: str) -> str:
    """A downward-API fieldRef value, as the kubelet resolves it."""
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        # The raw value; an absent key is the empty string, as the kubelet gives it.
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        # The kubelet's fieldpath.FormatMap: `key=%q` a line, sorted by key, no final newline.
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f"{k}={go_quote(str(v))}" for k, v in sorted(items.items()))
    raise ValueError(f"unsupported fieldRef {path!r}")


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """Go's strconv.Quote (`%q`): a double-quoted string with Go escapes; printable Unicode stays as is."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char.isprintable():  # Go's IsPrint: letters, marks, numbers, punctuation, symbols, ASCII space
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # not a rune: Go has U+FFFD there
            out.append("\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


class MissingReference(Exception):
    """A secret or config map key the container needs does not exist (the kubelet retries)."""


Lookup = Callable[[str, str], "Obj | None"]


def _decode(kind: str, obj: Obj) -> dict[str, str]:
    if kind == "secret":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def container_env(pod: Obj, container: Obj, base: Mapping[str, str], lookup: Lookup) -> dict[str, str]:
    """The environment of one container: base, then envFrom, then env (later wins), with `$(VAR)` expansion.

    `lookup(kind, name)` returns the secret or configmap (None when it does not exist).
    """
    env = dict(base)
    for source in container.get("envFrom") or []:
        kind = "secret" if "secretRef" in source else "configmap"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        obj = lookup(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise MissingReference(f'{kind} "{ref["name"]}" not found')
        prefix = source.get("prefix", "")
        for key, value in _decode(kind, obj).items():
            env[prefix + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secret" if "secretKeyRef" in source else "configmap"
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
            obj = lookup(kind, ref["name"])
            data = _decode(kind, obj) if obj is not None else None
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = f'{kind} "{ref["name"]}"' if data is None else f'key "{ref["key"]}" in {kind} "{ref["name"]}"'
                raise MissingReference(f"{what} not found")
            env[name] = data[ref["key"]]
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            kind, _, res = resource.partition(".")
            value = (container.get("resources") or {}).get(kind, {}).get(res)
            env[name] = str(value if value is not None else 0)
    return env


def hosts_file(pod: Obj, namespace_pods: list[Obj], cluster_domain: str = "cluster.local") -> str | None:
    """The /etc/hosts of a pod with spec.hostname and spec.subdomain (a gang's): a stand-in for
    cluster DNS, which process nodes do not have. Every process pod's IP is 127.0.0.1, so each pod
    of the subdomain known when the container starts resolves there, by the names CoreDNS would
    give it (HOST.SUBDOMAIN.NAMESPACE.svc.cluster.local, and shorter). None for any other pod."""
    spec = pod.get("spec") or {}
    subdomain = spec.get("subdomain")
    if not spec.get("hostname") or not subdomain:
        return None
    namespace = pod["metadata"]["namespace"]
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    peers = [p for p in namespace_pods if (p.get("spec") or {}).get("subdomain") == subdomain]
    for peer in sorted(peers, key=lambda p: p["spec"].get("hostname") or ""):
        host = peer["spec"].get("hostname")
        if host:
            fqdn = f"{host}.{subdomain}.{namespace}.svc"
            lines.append(f"127.0.0.1\t{fqdn}.{cluster_domain} {fqdn} {host}.{subdomain} {host}")
    return "\n".join(lines) + "\n"
