"""Catch OpenEMR's redirect after login on a loopback address (RFC 8252 §7.3).

``meoring openemr login`` binds the port *before* printing the URL, so the redirect cannot
arrive before anyone listens. Only ``GET <path>`` is answered; the page the browser shows
says nothing about the code or the state.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit

from hub.errors import HubError

__all__ = ["RedirectCatcher"]

_DONE = b"<!doctype html><title>Meoring Hub</title><p>Login finished. You can close this window.</p>"
_FAILED = b"<!doctype html><title>Meoring Hub</title><p>Login failed. See the terminal.</p>"


class RedirectCatcher:
    """A one-shot HTTP listener: :meth:`wait` returns the first redirect's query parameters."""

    def __init__(self, host: str, port: int, *, path: str = "/callback") -> None:
        self.host = host
        self.path = path
        self._result: dict[str, str] | None = None
        self._arrived = threading.Event()
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != catcher.path or catcher._arrived.is_set():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                params = dict(parse_qsl(parts.query, keep_blank_values=True))
                body = _FAILED if "error" in params or "code" not in params else _DONE
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                catcher._result = params
                catcher._arrived.set()

            def log_message(self, format: str, *args: object) -> None:
                return  # the query string holds the code: never log it

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise HubError(f"cannot listen on {host}:{port} for the login redirect ({exc.strerror}); "
                           "free the port or change openemr.redirect_port (and register again)") from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openemr-login", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def wait(self, timeout: float) -> dict[str, str]:
        """The redirect's query parameters; :class:`HubError` if none arrives in ``timeout`` seconds."""
        if not self._arrived.wait(timeout):
            raise HubError(f"no login redirect arrived within {int(timeout)} s")
        assert self._result is not None
        return self._result
