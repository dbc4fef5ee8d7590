"""Volumes as the kubelet writes them: the AtomicWriter's layout, and the payload of secret,
configMap, downwardAPI and projected volumes read from the API with the node's credentials."""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from localcluster import podspec
from localcluster.kube import ApiError, Client

Obj = dict[str, Any]
DATA_DIR = "..data"  # the kubelet's AtomicWriter: the symlink to a volume's current payload
Files = dict[str, tuple[bytes, int]]  # a volume's payload: relative path -> (contents, mode)


def write_volume(target: Path, files: Files) -> bool:
    """Writes a volume's payload into TARGET as the kubelet's AtomicWriter does; False when unchanged.

    The files go into a new timestamped directory `..YYYY_MM_DD_HH_MM_SS.N`, then the symlink
    `..data` is pointed at it with one rename, and each top-level name is a symlink `NAME ->
    ..data/NAME`. TARGET itself is never replaced: a container has it bind-mounted (mounter.py),
    and a bind mount holds on to the directory's inode, so only changes inside it are seen there.
    A file is read whole, old or new, never half-written; and a reader that resolves `..data`
    once reads one payload, never a mix of two."""
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / DATA_DIR
    old = os.readlink(data_link) if data_link.is_symlink() else ""
    if old and payload_of(target / old) == files:
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    new = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    new.chmod(0o755)
    for rel, (data, mode) in files.items():
        path = new / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    tmp_link = target / (DATA_DIR + "_tmp")
    tmp_link.unlink(missing_ok=True)
    os.symlink(new.name, tmp_link)
    os.replace(tmp_link, data_link)
    visible = {Path(rel).parts[0] for rel in files}
    for name in visible:
        link, wanted = target / name, f"{DATA_DIR}/{name}"
        if link.is_symlink() and os.readlink(link) == wanted:
            continue
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)  # left by an older layout
        tmp = target / f"..{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(wanted, tmp)
        os.replace(tmp, link)
    # The kubelet removes the previous payload at once; it is kept here until the next write, so
    # that a reader which resolved `..data` just before the swap still finds its file.
    keep = {DATA_DIR, new.name, old}
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            if entry.name not in keep and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)  # older payloads (and any a crash left behind)
        elif entry.name not in visible and entry.is_symlink() and os.readlink(entry).startswith(DATA_DIR + "/"):
            entry.unlink()  # a file the new payload no longer has
    return True


def payload_of(directory: Path) -> Files | None:
    """The payload a timestamped directory holds, as `write_volume` takes it; None when it is gone."""
    if not directory.is_dir():
        return None
    files: Files = {}
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(directory))] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return files


def differs(target: Path, files: Files) -> bool:
    """Whether any of FILES differs from what the volume at TARGET holds now."""
    data_link = target / DATA_DIR
    current = payload_of(target / os.readlink(data_link)) if data_link.is_symlink() else None
    return current is None or any(current.get(rel) != wanted for rel, wanted in files.items())


def metadata_key(pod: Obj) -> str:
    """What a downward-API volume can show of the pod that can change while it runs."""
    meta = pod["metadata"]
    return json.dumps([meta.get("labels") or {}, meta.get("annotations") or {}], sort_keys=True)


class Sources:
    """What a pod's volumes hold, read from the API as the pod's node may (the Node authorizer
    lets a node read only what its pods use)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def lookup(self, namespace: str, kind: str, name: str) -> Obj | None:
        resource = "secrets" if kind == "secret" else "configmaps"
        try:
            return self.client.get(f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def _keyed_files(self, pod: Obj, kind: str, source: Obj, default_mode: int) -> Files:
        name = source.get("secretName") or source.get("name") or ""
        obj = self.lookup(pod["metadata"]["namespace"], kind, name)
        if obj is None:
            if source.get("optional"):
                return {}
            raise podspec.MissingReference(f'{kind} "{name}" not found')
        data: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value) if kind == "secret" else value.encode()
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value)
        items = source.get("items")
        if not items:
            return {k: (v, default_mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise podspec.MissingReference(f'key "{item["key"]}" not found in {kind} "{name}"')
            files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
        return files

    def _downward_files(self, pod: Obj, source: Obj, default_mode: int) -> Files:
        files = {}
        for item in source.get("items") or []:
            value = podspec.field_value(pod, item["fieldRef"]["fieldPath"]) if "fieldRef" in item else "0"
            files[item["path"]] = (value.encode(), item.get("mode", default_mode))
        return files

    def _token_files(self, pod: Obj, source: Obj) -> Files:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [source["audience"]] if source.get("audience") else None,
                "expirationSeconds": source.get("expirationSeconds", 3607),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        answer = self.client.create(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", request)
        return {source.get("path", "token"): (answer["status"]["token"].encode(), 0o644)}

    def downward_part(self, pod: Obj, volume: Obj) -> Files:
        """The downward-API files of a downwardAPI or projected volume; none for other volumes."""
        if "downwardAPI" in volume:
            src = volume["downwardAPI"]
            return self._downward_files(pod, src, src.get("defaultMode", 0o644))
        projected = volume.get("projected") or {}
        files: Files = {}
        for source in projected.get("sources") or []:
            if "downwardAPI" in source:
                files.update(self._downward_files(pod, source["downwardAPI"], projected.get("defaultMode", 0o644)))
        return files

    def files(self, pod: Obj, volume: Obj) -> Files:
        """The payload of a secret, configMap, downwardAPI or projected volume, from POD's version."""
        if "secret" in volume:
            src = volume["secret"]
            return self._keyed_files(pod, "secret", src, src.get("defaultMode", 0o644))
        if "configMap" in volume:
            src = volume["configMap"]
            return self._keyed_files(pod, "configmap", src, src.get("defaultMode", 0o644))
        if "downwardAPI" in volume:
            src = volume["downwardAPI"]
            return self._downward_files(pod, src, src.get("defaultMode", 0o644))
        if "projected" in volume:
            mode = volume["projected"].get("defaultMode", 0o644)
            files: Files = {}
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    files.update(self._token_files(pod, source["serviceAccountToken"]))
                elif "secret" in source:
                    files.update(
                        self._keyed_files(
                            pod, "secret", {**source["secret"], "secretName": source["secret"].get("name")}, mode
                        )
                    )
                elif "configMap" in source:
                    files.update(self._keyed_files(pod, "configmap", source["configMap"], mode))
                elif "downwardAPI" in source:
                    files.update(self._downward_files(pod, source["downwardAPI"], mode))
            return files
        kinds = sorted(k for k in volume if k != "name")
        raise ValueError(f"volume {volume['name']!r} of type {kinds} is not supported by the process kubelet")
