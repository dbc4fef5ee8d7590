"""A small JSON client for the Kubernetes API, authenticated with a client certificate."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import urllib3

Obj = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the apiserver, with its HTTP status and Status message."""

    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path} -> HTTP {status}: {message}")


class Client:
    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        self.server = server.rstrip("/")
        self._http = urllib3.PoolManager(ssl_context=context, maxsize=8, retries=False)

    def request(
        self,
        method: str,
        path: str,
        body: Obj | list[Any] | None = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        url = self.server + path + (("?" + urlencode(params)) if params else "")
        data = None if body is None else json.dumps(body).encode()
        response = self._http.request(
            method,
            url,
            body=data,
            headers={"Content-Type": content_type, "Accept": "application/json"},
            timeout=urllib3.Timeout(connect=5, read=timeout),
        )
        text = response.data.decode()
        if response.status >= 300:
            raise ApiError(response.status, text, method, path)
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            return {"text": text}  # /readyz, /livez and logs answer in plain text
        return json.loads(text) if text else {}

    def get(self, path: str, **params: Any) -> Obj:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def evict(self, namespace: str, name: str) -> Obj:
        """Asks the Eviction API to evict pod NAMESPACE/NAME (HTTP 429 while a PodDisruptionBudget says not yet)."""
        return self.create(
            f"/api/v1/namespaces/{namespace}/pods/{name}/eviction",
            {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}},
        )

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60, **params: Any) -> Iterator[Obj]:
        """Yields watch events until the server closes the stream (after timeout_seconds)."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            **params,
        }
        response = self._http.request(
            "GET",
            self.server + path + "?" + urlencode(query),
            preload_content=False,
            timeout=urllib3.Timeout(connect=5, read=timeout_seconds + 10),
        )
        try:
            if response.status >= 300:
                raise ApiError(response.status, response.data.decode(), "WATCH", path)
            buffer = b""
            for chunk in response.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()
