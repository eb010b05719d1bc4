"""The webhook sender over real HTTP against a receiver that verifies Standard Webhooks
signatures with the `standardwebhooks` library: every answer class, the same webhook-id on
a retry, and forged or stale signatures refused by the receiver."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from digest.channels.base import SendError
from digest.channels.webhook import WebhookSender
from digest.channels.webhook_payload import WebhookMessage, webhook_id
from digest.config import Settings
from digest.errors import DigestError
from digest.models import SendResult
from standins.server import HangUp
from standins.webhooks import (
    Reply,
    WebhookReceiver,
    gone,
    server_error,
    slow_down,
    stall,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()
TIMEOUT = 0.5
BODY = json.dumps(
    {"type": "notification.digest", "timestamp": "2026-03-03T01:00:00Z", "data": {"run_id": 7}},
    separators=(",", ":"),
).encode()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def sender_with(secret: str = SECRET) -> WebhookSender:
    return WebhookSender(Settings(webhook_secret=secret, webhook_timeout=TIMEOUT))


def message(url: str, run_id: int = 7, body: bytes = BODY) -> WebhookMessage:
    return WebhookMessage(run_id, url, webhook_id(run_id), body)


def failure(sender: WebhookSender, msg: WebhookMessage) -> SendError:
    with pytest.raises(SendError) as caught:
        sender.send(msg)
    return caught.value


def test_a_signed_webhook_is_taken(receiver: WebhookReceiver) -> None:
    """The receiver verifies the signature with the library and gets the exact body, its
    webhook-id and a current timestamp; 2xx means sent."""
    before = int(time.time())
    result = sender_with().send(message(receiver.url("digest")))
    assert result == SendResult("webhook", "digest_7_webhook")
    (attempt,) = receiver.attempts
    assert (attempt.webhook_id, attempt.body, attempt.path) == ("digest_7_webhook", BODY, "/digest")
    assert before - 1 <= int(attempt.timestamp) <= time.time() + 1
    assert attempt.signature.startswith("v1,")
    assert attempt.payload["data"]["run_id"] == 7


@pytest.mark.parametrize("status", [201, 202, 204])
def test_any_2xx_is_sent(receiver: WebhookReceiver, status: int) -> None:
    """Standard Webhooks: any 2xx is success."""
    receiver.script(Reply(status, text=""))
    assert sender_with().send(message(receiver.url())).transport == "webhook"


def test_a_retry_sends_the_same_id_and_body(receiver: WebhookReceiver) -> None:
    """After a 500 the retry carries the same webhook-id and body (a new timestamp and
    signature): the receiver's idempotency key holds across attempts."""
    receiver.script(server_error(500))
    sender = sender_with()
    error = failure(sender, message(receiver.url()))
    assert (error.kind, error.down) == ("transient", True)
    sender.send(message(receiver.url()))
    first, second = receiver.attempts
    assert first.webhook_id == second.webhook_id == "digest_7_webhook"
    assert first.body == second.body == BODY
    assert receiver.ids == ["digest_7_webhook"]


def test_gone_is_permanent_and_marks_the_endpoint(receiver: WebhookReceiver) -> None:
    """410: the endpoint wants nothing more: permanent, marked gone."""
    receiver.script(gone())
    error = failure(sender_with(), message(receiver.url()))
    assert (error.kind, error.gone) == ("permanent", True)
    assert "410" in error.reason


def test_too_many_requests_is_transient_with_retry_after(receiver: WebhookReceiver) -> None:
    """429 with Retry-After: transient, the earliest retry from the header."""
    receiver.script(slow_down(45))
    error = failure(sender_with(), message(receiver.url()))
    assert (error.kind, error.retry_after) == ("transient", 45.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(receiver: WebhookReceiver, status: int) -> None:
    """5xx: the receiver did not take it; try again with backoff."""
    receiver.script(server_error(status))
    error = failure(sender_with(), message(receiver.url()))
    assert error.kind == "transient"
    assert f"HTTP {status}" in error.reason


@pytest.mark.parametrize("status", [302, 307, 400, 404])
def test_other_answers_are_transient_and_redirects_are_not_followed(
    receiver: WebhookReceiver, status: int
) -> None:
    """Any other non-2xx is a failure to retry (bounded by max attempts); a redirect is not
    followed (Standard Webhooks: update the URL instead)."""
    receiver.script(Reply(status, {"Location": receiver.url("elsewhere")}, text="no"))
    error = failure(sender_with(), message(receiver.url()))
    assert (error.kind, error.gone) == ("transient", False)
    assert f"HTTP {status}" in error.reason
    assert [a.path for a in receiver.attempts] == ["/hook"]


def test_a_wrong_secret_is_refused_by_the_receiver(receiver: WebhookReceiver) -> None:
    """Signed with a secret the receiver does not hold: 401 there, transient here."""
    error = failure(sender_with(OTHER_SECRET), message(receiver.url()))
    assert (error.kind, "HTTP 401" in error.reason) == ("transient", True)
    assert receiver.attempts == []
    assert receiver.rejected[0][0] == 401


def test_a_stall_after_the_body_left_is_unknown(receiver: WebhookReceiver) -> None:
    """No answer within the timeout after the request went out: unknown outcome; the
    receiver took it, and the retry's same id lets it drop the repeat."""
    receiver.script(stall(TIMEOUT + 0.7))
    sender = sender_with()
    error = failure(sender, message(receiver.url()))
    assert error.kind == "unknown"
    deadline = time.monotonic() + 5
    while not receiver.attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    sender.send(message(receiver.url()))
    assert receiver.ids == ["digest_7_webhook", "digest_7_webhook"]


def test_a_reply_lost_after_the_request_is_unknown() -> None:
    """The receiver read the request and hung up: unknown, one request."""
    with HangUp() as server:
        assert failure(sender_with(), message(f"{server.url}/hook")).kind == "unknown"
        assert len(server.requests) == 1
        assert b"webhook-id: digest_7_webhook" in server.requests[0].lower()


def test_connection_refused_is_transient_and_down() -> None:
    """Nothing listens: transient, down."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    error = failure(sender_with(), message(f"http://127.0.0.1:{port}/hook"))
    assert (error.kind, error.down) == ("transient", True)


def test_a_connect_timeout_is_transient_before_anything_is_sent() -> None:
    """The endpoint never accepts the connection (its queue is full): a timeout before the
    request went out is transient, not unknown."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the accept queue until a connect waits: later SYNs are dropped.
        fillers: list[socket.socket] = []
        try:
            for _ in range(16):
                try:
                    fillers.append(socket.create_connection(("127.0.0.1", port), timeout=0.3))
                except TimeoutError:
                    break
            else:
                pytest.skip("this kernel never let the accept queue fill")
            error = failure(sender_with(), message(f"http://127.0.0.1:{port}/hook"))
        finally:
            for filler in fillers:
                filler.close()
    assert (error.kind, error.down) == ("transient", True)


def test_a_url_that_is_not_https_is_never_called() -> None:
    """Plain http to another machine is permanent before any connection."""
    error = failure(sender_with(), message("http://hooks.example.com/digest"))
    assert error.kind == "permanent"
    assert "plain http" in error.reason


def test_no_secret_is_refused_at_start() -> None:
    """Without DIGEST_WEBHOOK_SECRET (or with a malformed one) no sender is made."""
    with pytest.raises(DigestError, match="DIGEST_WEBHOOK_SECRET must be set"):
        WebhookSender(Settings())
    with pytest.raises(DigestError, match="DIGEST_WEBHOOK_SECRET must be a Standard Webhooks"):
        WebhookSender(Settings(webhook_secret="whsec_short"))


def test_an_old_digest_still_verifies() -> None:
    """The timestamp header is the attempt's, not the content's: a run retried hours after
    it was frozen still passes the receiver's five-minute window."""
    with WebhookReceiver(SECRET) as receiver:
        stale_body = json.dumps({"timestamp": "2020-01-01T00:00:00Z"}).encode()
        sender_with().send(message(receiver.url(), body=stale_body))
        assert receiver.ids == ["digest_7_webhook"]


# -- the receiver refuses what a real one must refuse ----------------------------------------


def post(receiver: WebhookReceiver, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", int(receiver.base.rsplit(":", 1)[1]), timeout=5)
    try:
        conn.request("POST", "/hook", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def signed(body: bytes, *, secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign("msg_1", at, body.decode())
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def test_receiver_takes_a_correctly_signed_webhook(receiver: WebhookReceiver) -> None:
    """The control case: signed with the secret, now."""
    assert post(receiver, BODY, signed(BODY)) == 200
    assert receiver.ids == ["msg_1"]


@pytest.mark.parametrize(
    ("case", "status"),
    [("forged", 401), ("stale", 401), ("future", 401), ("tampered", 401), ("unsigned", 400)],
)
def test_receiver_refuses_forged_stale_and_tampered_webhooks(
    receiver: WebhookReceiver, case: str, status: int
) -> None:
    """Another secret, a timestamp ten minutes old or ahead, a changed body, or no signature
    at all: refused, nothing taken."""
    now = datetime.now(UTC)
    headers = {
        "forged": signed(BODY, secret=OTHER_SECRET),
        "stale": signed(BODY, at=now - timedelta(minutes=10)),
        "future": signed(BODY, at=now + timedelta(minutes=10)),
        "tampered": signed(BODY.replace(b"7", b"8")),
        "unsigned": {"webhook-id": "msg_1"},
    }[case]
    assert post(receiver, BODY, headers) == status
    assert receiver.attempts == []
    assert receiver.rejected


def test_receiver_refuses_a_malformed_signature(receiver: WebhookReceiver) -> None:
    """A signature header that is not `v1,<base64>` is a 400, not a crash."""
    headers = {**signed(BODY), "webhook-signature": "garbage"}
    assert post(receiver, BODY, headers) in (400, 401)
    assert receiver.attempts == []
