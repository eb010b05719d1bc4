"""A stand-in for Slack's Web API `chat.postMessage`, over real HTTP on loopback.

Point `DIGEST_SLACK_BASE_URL` (or `WebClient(base_url=…)`) at `SlackStandIn.base_url`. Each
request takes the next scripted answer for its channel, else the next one for any channel,
else `ok()`. Answers are what Slack sends: `ok()`, `rate_limited(30)` (HTTP 429 with
Retry-After), `error("channel_not_found")` (HTTP 200, ok false), `server_error(500)`, and
`stall(seconds)` (answers after a delay, so a client with a shorter timeout gives up on a
message that Slack then posts). A request without the expected bearer token gets
`invalid_auth`, as Slack answers it.

`requests` records every request (channel, text, blocks, arrival time); `posted` only the
messages Slack would show in the channel.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import Served


@dataclass(frozen=True)
class Answer:
    """One scripted reply: HTTP status, JSON body, headers, a delay before it, and whether
    the message counts as posted."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    posts: bool = True


def ok() -> Answer:
    """Posted."""
    return Answer()


def rate_limited(retry_after: float | str = 30) -> Answer:
    """HTTP 429 with Retry-After: not posted."""
    return Answer(
        429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}, posts=False
    )


def error(code: str, status: int = 200) -> Answer:
    """An `ok: false` answer with Slack's error code (HTTP 200, as Slack sends most)."""
    return Answer(status, {"ok": False, "error": code}, posts=False)


def server_error(status: int = 500, code: str = "internal_error", posts: bool = False) -> Answer:
    """A 5xx; Slack documents that some of the work may have been done (`posts`)."""
    return Answer(status, {"ok": False, "error": code}, posts=posts)


def stall(seconds: float, then: Answer | None = None) -> Answer:
    """`then` (posted by default) after `seconds`: past the client's timeout, a message the
    client gave up on still appears in the channel."""
    answer = then or ok()
    return Answer(answer.status, answer.body, answer.headers, seconds, answer.posts)


@dataclass(frozen=True)
class Received:
    """One chat.postMessage request as the stand-in read it."""

    channel: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    authorization: str | None
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]


@dataclass(frozen=True)
class Posted:
    """A message the channel shows."""

    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None


class SlackStandIn:
    """Slack's chat.postMessage on a loopback port; use as a context manager."""

    def __init__(self, token: str = "xoxb-standin-token") -> None:
        self.token = token
        self.requests: list[Received] = []
        self.posted: list[Posted] = []
        self._scripts: dict[str | None, deque[Answer]] = {}
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        app = Starlette(routes=[Route("/api/chat.postMessage", self._post, methods=["POST"])])
        self._served = Served(app)
        self.url = self._served.url
        self.base_url = f"{self.url}/api/"

    def script(self, *answers: Answer, channel: str | None = None) -> None:
        """Answer the next requests (to `channel`, or to any channel) with `answers`."""
        with self._lock:
            self._scripts.setdefault(channel, deque()).extend(answers)

    def posted_to(self, channel: str) -> list[Posted]:
        """The messages `channel` shows."""
        return [p for p in self.posted if p.channel == channel]

    def _next(self, channel: str) -> Answer:
        with self._lock:
            for key in (channel, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
        return ok()

    async def _post(self, request: Request) -> JSONResponse:
        at = time.monotonic()
        body: dict[str, Any] = await request.json()
        channel = str(body.get("channel", ""))
        authorization = request.headers.get("authorization")
        self.requests.append(
            Received(channel, body.get("text"), body.get("blocks"), authorization, at, body)
        )
        if authorization != f"Bearer {self.token}":
            code = "not_authed" if authorization is None else "invalid_auth"
            return JSONResponse({"ok": False, "error": code})
        answer = self._next(channel)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        reply = dict(answer.body)
        if answer.posts:
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            self.posted.append(Posted(channel, ts, body.get("text"), body.get("blocks")))
            if reply.get("ok"):
                reply.update(channel=channel, ts=ts)
        return JSONResponse(reply, status_code=answer.status, headers=answer.headers)

    def stop(self) -> None:
        """Stop serving."""
        self._served.stop()

    def __enter__(self) -> SlackStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
