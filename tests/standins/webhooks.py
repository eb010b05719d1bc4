"""A Standard Webhooks receiver over real HTTP on loopback: it verifies every request with the
`standardwebhooks` library, as a real receiver would, and records the webhook-ids it took.

Missing or malformed webhook headers get 400; a forged signature or a timestamp more than
five minutes away gets 401 (both recorded in `rejected`, neither in `attempts`). A verified
request takes the next scripted answer: `accept()` (200), `gone()` (410), `slow_down(30)`
(429 with Retry-After), `server_error(500)`, or `stall(seconds)` (accepted after a delay,
so a client with a shorter timeout gives up on a webhook the receiver took).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from standins.server import Served


@dataclass(frozen=True)
class Reply:
    """One scripted reply to a verified webhook: status, headers, and a delay before it."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    text: str = "ok"


def accept() -> Reply:
    return Reply()


def gone() -> Reply:
    """The receiver wants no more webhooks from this source."""
    return Reply(410, text="gone")


def slow_down(retry_after: float | str = 30) -> Reply:
    return Reply(429, {"Retry-After": str(retry_after)}, text="slow down")


def server_error(status: int = 500) -> Reply:
    return Reply(status, text="server error")


def stall(seconds: float) -> Reply:
    """Accepted, but only after `seconds`."""
    return Reply(delay=seconds)


@dataclass(frozen=True)
class Attempt:
    """A webhook whose signature verified, and the status it was answered with."""

    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    payload: Any
    status: int
    path: str


class WebhookReceiver:
    """Receives Standard Webhooks signed with `secret` on any path; a context manager."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.attempts: list[Attempt] = []
        self.rejected: list[tuple[int, str]] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])
        self._served = Served(app)
        self.base = self._served.url

    def url(self, path: str = "hook") -> str:
        return f"{self.base}/{path}"

    def script(self, *replies: Reply) -> None:
        """Answer the next verified webhooks with `replies`, then accept."""
        with self._lock:
            self._script.extend(replies)

    @property
    def ids(self) -> list[str]:
        """The webhook-id of every webhook taken (2xx), repeats included, in order."""
        return [a.webhook_id for a in self.attempts if 200 <= a.status < 300]

    async def _receive(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        headers = dict(request.headers)
        try:
            payload = self.verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            status = 400 if "Missing" in str(exc) or "Invalid" in str(exc) else 401
            self.rejected.append((status, str(exc)))
            return PlainTextResponse(str(exc), status_code=status)
        except ValueError as exc:  # a malformed signature list, bad base64, a non-JSON body
            self.rejected.append((400, f"malformed: {exc}"))
            return PlainTextResponse("malformed webhook", status_code=400)
        with self._lock:
            reply = self._script.popleft() if self._script else accept()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        self.attempts.append(
            Attempt(
                headers["webhook-id"],
                headers["webhook-timestamp"],
                headers["webhook-signature"],
                body,
                payload,
                reply.status,
                request.url.path,
            )
        )
        return PlainTextResponse(reply.text, status_code=reply.status, headers=reply.headers)

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
