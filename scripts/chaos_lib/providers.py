"""The two providers the workers send to, in threads: SMTP (aiosmtpd) and SES (moto).

Both record every message they accepted in a Mailbag, by its Message-ID
(`<digest.run-ID.bBUCKET@…>`); each has a `mode` the SMTP and SES faults switch.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import hashlib
import json
import random
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chaos_lib.records import Received
from chaos_lib.settings import DOMAIN, REGION, SENDER

MESSAGE_ID = re.compile(r"<digest\.run-(\d+)(?:\.b\d+)?@" + re.escape(DOMAIN) + ">")


class Mailbag:
    """Every message both providers accepted, from their threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[Received] = []

    def add(self, provider: str, data: bytes) -> None:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        found = MESSAGE_ID.fullmatch(str(headers.get("Message-ID", "")).strip())
        body = data.replace(b"\r\n", b"\n").rstrip(b"\n")
        item = Received(
            provider,
            int(found.group(1)) if found else None,
            hashlib.sha256(body).hexdigest(),
            time.time(),
        )
        with self._lock:
            self.items.append(item)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.items)


SMTP_MODES = ("refuse", "stall", "451", "550")
REFUSED_SHARE = 0.3  # of the messages the SMTP server refuses for good during a 550 spell


class SmtpServer:
    """aiosmtpd in a thread; `mode` decides how the end of DATA is answered.

    normal: 250, mail kept. stall: mail kept, the reply held past the client's timeout
    (the client cannot know it was delivered). 451: refused, not kept. 550: some messages
    refused for good (REFUSED_SHARE), the rest kept. refuse: not listening at all.
    `handle_DATA` is aiosmtpd's hook name.
    """

    def __init__(self, bag: Mailbag, stall_seconds: float, rand: random.Random) -> None:
        self.bag = bag
        self.rand = rand
        self.stall_seconds = stall_seconds
        self.port = free_port()
        self.mode = "normal"
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def set_mode(self, mode: str) -> None:
        if mode == "refuse":
            self.stop()
        elif self._controller is None:
            self.start()
        self.mode = mode

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        mode = self.mode
        if mode == "451":
            return "451 4.3.0 chaos: try again later"
        if mode == "550" and self.rand.random() < REFUSED_SHARE:
            return "550 5.7.1 chaos: message refused"
        self.bag.add("smtp", bytes(envelope.original_content))
        if mode == "stall":
            await asyncio.sleep(self.stall_seconds)
        return "250 2.0.0 Ok: queued as CHAOS"


SES_MODES = ("slow", "stall", "throttle", "unavailable")


class SesServer(ThreadingHTTPServer):
    """An sesv2 endpoint on 127.0.0.1 backed by moto's SES in this process.

    normal: the message goes to moto, its MessageId comes back. slow/stall: the same,
    but the answer waits `delay` seconds (stall: past the client's timeout, so the client
    cannot know). throttle: 429 TooManyRequestsException; unavailable: 503
    ServiceUnavailable (a fallback moves on); nothing kept.
    """

    daemon_threads = True

    def __init__(self, bag: Mailbag) -> None:
        super().__init__(("127.0.0.1", 0), _SesHandler)
        from moto import mock_aws

        self.bag = bag
        self.mode = "normal"
        self.delay = 0.0
        self.release = threading.Event()  # wakes stalled answers at shutdown
        self.moto_lock = threading.Lock()  # moto's backends are not made for threads
        self._mock = mock_aws()
        self._mock.start()
        import boto3

        self.client: Any = boto3.session.Session().client(
            "sesv2",
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.client.create_email_identity(EmailIdentity=SENDER)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it timed out, or its worker was killed) is no news."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join()
        self.client.close()
        self._mock.stop()


class _SesHandler(BaseHTTPRequestHandler):
    server: SesServer
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sink = self.server
        mode, delay = sink.mode, sink.delay
        if not self.path.startswith("/v2/email/outbound-emails"):
            self._answer(404, {"message": "chaos: unknown path"}, "NotFoundException")
            return
        if mode == "throttle":
            self._answer(429, {"message": "chaos: slow down"}, "TooManyRequestsException")
            return
        if mode == "unavailable":
            self._answer(503, {"message": "chaos: come back later"}, "ServiceUnavailable")
            return
        from botocore.exceptions import ClientError

        try:
            request = json.loads(body)
            raw = base64.b64decode(request["Content"]["Raw"]["Data"])
            with sink.moto_lock:
                response = sink.client.send_email(
                    FromEmailAddress=request["FromEmailAddress"],
                    Destination=request["Destination"],
                    Content={"Raw": {"Data": raw}},
                )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 400)
            self._answer(status, {"message": error.get("Message", "")}, error.get("Code", "?"))
            return
        except (KeyError, TypeError, ValueError) as exc:
            self._answer(400, {"message": f"chaos: bad request: {exc}"}, "BadRequestException")
            return
        sink.bag.add("ses", raw)
        if delay:
            sink.release.wait(delay)
        self._answer(200, {"MessageId": response["MessageId"]})

    def _answer(self, status: int, body: dict[str, Any], error: str | None = None) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if error:
                self.send_header("x-amzn-ErrorType", f"{error}:http://internal.amazon.com/")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def free_port() -> int:
    """A TCP port nothing listens on now (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
