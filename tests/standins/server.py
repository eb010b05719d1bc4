"""Serving a stand-in: an ASGI app under uvicorn in a thread, or a bare socket that reads one
request and hangs up (a reply lost after the request arrived)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class Served:
    """`app` served by uvicorn from a thread on a free 127.0.0.1 port until `stop`."""

    def __init__(self, app: Any) -> None:
        # Bound before uvicorn starts, so the port is ours with no race.
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            ws="none",
            lifespan="off",
            # A stalled answer must not hold the test's teardown for long.
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the stand-in's server thread died")
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in's server did not start in 10 s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.should_exit = True
        self.thread.join(10)
        self.listener.close()

    def __enter__(self) -> Served:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class HangUp:
    """A socket on a free 127.0.0.1 port that reads each request whole (headers and
    Content-Length body), keeps it, and closes the connection without answering."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self.listener.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self.requests.append(_read_request(conn))

    def stop(self) -> None:
        """Stop accepting and close the socket."""
        self._stop.set()
        self.thread.join(5)
        self.listener.close()

    def __enter__(self) -> HangUp:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
