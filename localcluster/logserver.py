"""The process kubelet's /containerLogs endpoint, which the apiserver proxies `kubectl logs` to."""

from __future__ import annotations

import http.server
import logging
import socketserver
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

log = logging.getLogger("kubelet")


class LogHandler(http.server.BaseHTTPRequestHandler):
    """The kubelet's /containerLogs endpoint, which the apiserver proxies `kubectl logs` to."""

    kubelet: Any  # the Kubelet: worker_by_name(namespace, name), node
    protocol_version = "HTTP/1.1"  # chunked responses, which `kubectl logs -f` streams

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("log server: " + format, *args)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if url.path in ("/healthz", "/readyz"):
            self._reply(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"not found")
            return
        _, namespace, name, container = parts
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        worker = self.kubelet.worker_by_name(namespace, name)
        if worker is None:
            self._reply(404, f'pod "{name}" not found on node {self.kubelet.node}'.encode())
            return
        path = worker.log_file(container, previous=query.get("previous") == "true")
        if path is None:
            self._reply(400, f'container "{container}" in pod "{name}" has no logs yet'.encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = path.read_bytes()
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) > 0 else b""
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        sent = 0

        def send(chunk: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                chunk = chunk[: max(limit - sent, 0)]
            if not chunk:
                return limit is None or sent < limit
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
            sent += len(chunk)
            return limit is None or sent < limit

        try:
            more = send(data)
            if query.get("follow") == "true" and more:
                with open(path, "rb") as f:
                    f.seek(len(path.read_bytes()) if "tailLines" in query else len(data))
                    while more:
                        chunk = f.read(65536)
                        if chunk:
                            more = send(chunk)
                        elif not worker.is_running(container) or worker.log_file(container, False) != path:
                            break
                        else:
                            time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ThreadingHTTPSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
