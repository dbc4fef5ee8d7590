"""A stub transport under the real `kubernetes` client: Api's requests are built, serialised and sent
as in production, and answered by a test's function instead of an API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import kubernetes
from kubernetes.client.exceptions import ApiException
from spotrun_operator.api import Api

Obj = dict[str, Any]


@dataclass
class Request:
    method: str
    path: str
    body: Any
    content_type: str


Answer = tuple[int, Obj]  # (HTTP status, body)


class _Response:
    def __init__(self, status: int, body: Obj) -> None:
        self.status, self.reason, self.data = status, "Stub", json.dumps(body).encode()

    def getheaders(self) -> dict[str, str]:
        return {"content-type": "application/json"}

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.getheaders().get(name.lower(), default)


class StubTransport(kubernetes.client.rest.RESTClientObject):  # type: ignore[misc]
    """Records every request; `answer(request)` says what the server replies (2xx: that body)."""

    def __init__(self, answer: Callable[[Request], Answer]) -> None:
        super().__init__(kubernetes.client.Configuration())
        self.answer = answer
        self.requests: list[Request] = []

    def request(
        self,
        method: str,
        url: str,
        query_params: Any = None,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _preload_content: bool = True,
        _request_timeout: Any = None,
    ) -> Any:
        seen = Request(method, urlsplit(url).path, body, (headers or {}).get("Content-Type", ""))
        self.requests.append(seen)
        status, answer = self.answer(seen)
        response = _Response(status, answer)
        if not 200 <= status < 300:
            raise ApiException(http_resp=response)
        return kubernetes.client.rest.RESTResponse(response)

    def sent(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]


def stub_api(answer: Callable[[Request], Answer]) -> tuple[Api, StubTransport]:
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration())
    transport = StubTransport(answer)
    client.rest_client = transport
    return Api(client), transport
