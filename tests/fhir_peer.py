"""A scripted FHIR server on a loopback port that misbehaves on cue.

Why it exists: the FHIR client's retry, timeout and error handling must be tested over a
real wire (httpx's own connection pool, sockets, timeouts, keep-alive), but the real HAPI
server cannot be made to answer 429 with ``Retry-After``, 503 then 200, hang after
accepting a connection, or drop the connection mid-request when a test asks for it. This
peer does exactly that, and counts what it received, so a test can assert "the 400 was
sent once" or "nothing left the client". It is not a FHIR server: behaviour that HAPI can
produce is tested against HAPI (project rule: mocking an HTTP call to a server we can run
is a defect).

Usage::

    with FhirPeer(Reply(503), Reply(200, {"resourceType": "Patient", "id": "a"})) as peer:
        FhirClient(peer.base_url, ...).read("Patient", "a")
        assert peer.count == 2

Actions are consumed in order, one per request; the last one repeats. An action is a
:class:`Reply`, :data:`HANG` (read the request, never answer), :data:`DROP` (read the
request, close the connection without answering) or a callable ``(ReceivedRequest) ->
Reply`` for answers that depend on the request.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DROP", "HANG", "FhirPeer", "ReceivedRequest", "Reply", "outcome", "refused_url"]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/fhir+json;charset=UTF-8"


@dataclass(frozen=True)
class _Special:
    name: str


HANG = _Special("hang")
DROP = _Special("drop")

Action = Reply | _Special | Callable[["ReceivedRequest"], Reply]


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    def json(self) -> Any:
        return json.loads(self.body)


def outcome(diagnostics: str, *, code: str = "processing", severity: str = "error") -> dict[str, Any]:
    """A one-issue OperationOutcome."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


class FhirPeer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> answering from a script."""

    def __init__(self, *actions: Action) -> None:
        self._actions: list[Action] = list(actions) or [Reply(200, {"resourceType": "Bundle"})]
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.requests: list[ReceivedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fhir-peer", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> FhirPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()  # let hanging handlers go
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_action(self, request: ReceivedRequest) -> Action:
        with self._lock:
            self.requests.append(request)
            return self._actions.pop(0) if len(self._actions) > 1 else self._actions[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = ReceivedRequest(self.command, self.path, dict(self.headers.items()), body)
                action = peer._next_action(request)
                if action is HANG:
                    peer._released.wait(timeout=60)
                    self.close_connection = True
                    return
                if action is DROP:
                    self.close_connection = True
                    return
                reply = action(request) if callable(action) else action
                assert isinstance(reply, Reply)
                payload = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else b""
                    if reply.body is None
                    else json.dumps(reply.body).encode()
                )
                self.send_response_only(reply.status)
                if "Date" not in reply.headers:
                    self.send_header("Date", self.date_time_string())
                if payload:
                    self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        return Handler


@contextmanager
def refused_url() -> Iterator[str]:
    """A base URL whose port refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    finally:
        sock.close()
