"""SES transport: the raw MIME and tags reach SES, one request per attempt, errors classified."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.stub import Stubber
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from digest.buckets import bucket_of
from digest.channels.base import SendError
from digest.channels.email.mime import build_message, idempotency_key, make_message_id
from digest.channels.email.ses import (
    SesTransport,
    classify_botocore_error,
    make_client,
)
from digest.channels.http import retry_after
from digest.config import Settings
from digest.models import OutgoingMessage, SendResult

REGION = "eu-west-1"
SENDER = "digest@example.com"
TOKEN = "NDI.abcdefghijklmnopqrstuvwxyz0123456789"
# What a fake SES endpoint needs to sleep past: short, so the file stays fast.
TIMEOUT = 0.3


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and no AWS configuration from this machine (profiles, IMDS, retries)."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SESV2",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CREDENTIAL_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "boto.cfg"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def settings(**overrides: Any) -> Settings:
    """SES settings for tests: a verified-looking sender, a fixed region, a short timeout."""
    values: dict[str, Any] = {"from_address": SENDER, "ses_region": REGION, "ses_timeout": TIMEOUT}
    return Settings(**{**values, **overrides})


def outgoing(run_id: int = 42, attempt: int = 3) -> OutgoingMessage:
    """A fully built digest message for run `run_id`."""
    data = build_message(
        from_name="Digest",
        from_address=SENDER,
        to_name="Ana",
        to_address="ana@example.org",
        subject="Ana, 3 updates",
        html="<p>Hello Ana</p>",
        text="Hello Ana\n",
        message_id=make_message_id(run_id, "example.com"),
        idempotency_key=idempotency_key(run_id),
        list_unsubscribe_url=f"https://app.example.com/u/{TOKEN}",
        list_unsubscribe_mailto=f"mailto:unsubscribe@example.com?subject={TOKEN}",
        date=datetime(2026, 3, 3, 7, 0, tzinfo=UTC),
    )
    return OutgoingMessage(
        run_id=run_id,
        attempt=attempt,
        user_id="u-1",
        to_address="ana@example.org",
        message_id=make_message_id(run_id, "example.com"),
        idempotency_key=idempotency_key(run_id),
        data=data,
        html="<p>Hello Ana</p>",
        bucket=bucket_of("u-1"),
    )


# --- a fake SES endpoint over a real socket -------------------------------------------


@dataclass
class Reply:
    """What the fake endpoint answers to every POST."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: {"MessageId": "fake-message-id"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to stall before answering
    hang_up: bool = False  # read the request, then close without answering


class FakeSesServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that counts POSTs and answers with `reply`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeSesHandler)
        self.reply = Reply()
        self.posts: list[tuple[str, bytes]] = []
        self.release = threading.Event()  # wakes stalled handlers at teardown
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The endpoint URL to give the sesv2 client."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, path: str, body: bytes) -> None:
        """Count one request."""
        with self._lock:
            self.posts.append((path, body))


class _FakeSesHandler(BaseHTTPRequestHandler):
    server: FakeSesServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.record(self.path, body)
        reply = self.server.reply
        if reply.delay:
            self.server.release.wait(reply.delay)
        if reply.hang_up:
            self.close_connection = True
            return
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting (the slow-endpoint test)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture
def fake_ses() -> Iterator[FakeSesServer]:
    """A running fake SES endpoint."""
    server = FakeSesServer()
    # A short poll interval: shutdown() waits for the loop to notice (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def transport(fake_ses: FakeSesServer) -> Iterator[SesTransport]:
    """An SesTransport built from settings alone, pointed at the fake endpoint."""
    ses = SesTransport(settings(ses_endpoint_url=fake_ses.url))
    yield ses
    ses.close()


def error(status: int, code: str, message: str = "boom", **headers: str) -> Reply:
    """A sesv2-shaped (rest-json) error answer: the code in `x-amzn-ErrorType`."""
    return Reply(
        status=status,
        body={"message": message},
        headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/", **headers},
    )


def reply_id(reply: Reply) -> str:
    """A readable test id: the error code, or the bare status."""
    return reply.headers.get("x-amzn-ErrorType", f"HTTP {reply.status}").split(":")[0]


def send_error(transport: SesTransport) -> SendError:
    """The SendError one send raises."""
    with pytest.raises(SendError) as raised:
        transport.send(outgoing())
    return raised.value


# --- moto: the message as SES receives it ---------------------------------------------


def test_raw_message_arrives_with_every_header_and_provider_id() -> None:
    """The exact MIME we built reaches SES, and the MessageId SES returns is the provider id."""
    message = outgoing()
    with mock_aws():
        setup = boto3.client("sesv2", region_name=REGION)
        setup.create_email_identity(EmailIdentity=SENDER)
        setup.close()
        transport = SesTransport(settings())
        result = transport.send(message)
        transport.close()
        [sent] = ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages

    assert result == SendResult("ses", sent.id)
    assert sent.raw_data.encode() == message.data
    received = email.message_from_string(sent.raw_data, policy=email.policy.default)
    assert received["Message-ID"] == "<digest.run-42@example.com>"
    assert received["From"] == "Digest <digest@example.com>"
    assert received["To"] == "Ana <ana@example.org>"
    assert received["Subject"] == "Ana, 3 updates"
    assert received["List-Unsubscribe"] == (
        f"<https://app.example.com/u/{TOKEN}>, <mailto:unsubscribe@example.com?subject={TOKEN}>"
    )
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["X-Digest-Idempotency-Key"] == "digest-run-42"


def test_unverified_sender_is_permanent() -> None:
    """SES refusing the sender (MessageRejected) fails that message, not the transport."""
    with mock_aws():
        transport = SesTransport(settings())
        failure = send_error(transport)
        transport.close()
    assert (failure.kind, failure.down) == ("permanent", False)
    assert "MessageRejected" in failure.reason


# --- what goes on the wire: tags, configuration set, client configuration --------------


def expected_params(message: OutgoingMessage, **extra: Any) -> dict[str, Any]:
    """The send_email parameters SesTransport must send for `message`."""
    return {
        "FromEmailAddress": SENDER,
        "Destination": {"ToAddresses": ["ana@example.org"]},
        "Content": {"Raw": {"Data": message.data}},
        "EmailTags": [
            {"Name": "run_id", "Value": "42"},
            {"Name": "bucket", "Value": str(bucket_of("u-1"))},
            {"Name": "attempt", "Value": "3"},
        ],
        **extra,
    }


def test_tags_and_configuration_set_are_sent() -> None:
    """run_id/bucket/attempt tags and the configuration set go with every send (feedback
    needs them, and the bucket to find the delivery on its shard)."""
    config = settings(ses_configuration_set="digest-events")
    client = make_client(config)
    message = outgoing()
    with Stubber(client) as stub:
        stub.add_response(
            "send_email",
            {"MessageId": "0100-abc"},
            expected_params(message, ConfigurationSetName="digest-events"),
        )
        result = SesTransport(config, client=client).send(message)
        stub.assert_no_pending_responses()
    client.close()
    assert result == SendResult("ses", "0100-abc")


def test_no_configuration_set_parameter_when_unset() -> None:
    """Without a configured set no ConfigurationSetName is sent (SES would reject an empty one)."""
    client = make_client(settings())
    message = outgoing()
    with Stubber(client) as stub:
        stub.add_response("send_email", {"MessageId": "0100-def"}, expected_params(message))
        SesTransport(settings(), client=client).send(message)
        stub.assert_no_pending_responses()
    client.close()


def test_client_has_boto_retries_off_and_our_timeouts() -> None:
    """The client botocore builds for us: one attempt, read timeout = ses_timeout, our region."""
    client = make_client(settings(ses_timeout=12.5, send_concurrency=32))
    config = client.meta.config
    client.close()
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert config.read_timeout == 12.5
    assert config.connect_timeout == 10.0
    assert config.max_pool_connections == 32
    assert client.meta.region_name == REGION


def test_missing_region_is_fatal() -> None:
    """No region anywhere is a configuration error reported at start, naming the setting."""
    with pytest.raises(SendError) as raised:
        make_client(settings(ses_region=None))
    assert raised.value.kind == "fatal"
    assert "DIGEST_SES_REGION" in raised.value.reason


# --- one request per attempt, against a real socket -----------------------------------


def test_slow_endpoint_gets_one_request_and_unknown_outcome(
    fake_ses: FakeSesServer, transport: SesTransport
) -> None:
    """A read timeout is one POST (boto3 must not resend the email) and an unknown outcome."""
    fake_ses.reply = Reply(delay=5.0)
    failure = send_error(transport)
    assert (failure.kind, failure.down) == ("unknown", False)
    assert "Read timeout" in failure.reason
    assert len(fake_ses.posts) == 1


def test_default_boto_retries_would_resend(
    fake_ses: FakeSesServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why retries are off: a default standard-mode client POSTs the same email again."""
    monkeypatch.setattr(
        "botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0
    )
    fake_ses.reply = Reply(delay=5.0)
    client = boto3.client(
        "sesv2",
        region_name=REGION,
        endpoint_url=fake_ses.url,
        config=Config(retries={"mode": "standard"}, read_timeout=TIMEOUT),
    )
    with pytest.raises(ReadTimeoutError):
        client.send_email(**expected_params(outgoing()))
    client.close()
    assert len(fake_ses.posts) == 3


def test_request_is_sesv2_send_email_with_raw_data(
    fake_ses: FakeSesServer, transport: SesTransport
) -> None:
    """Over HTTP the call is sesv2 SendEmail with the MIME base64-encoded in Content.Raw."""
    result = transport.send(outgoing())
    [(path, body)] = fake_ses.posts
    sent = json.loads(body)
    assert path == "/v2/email/outbound-emails"
    assert sent["Content"]["Raw"]["Data"]  # base64 of the MIME
    assert sent["EmailTags"] == [
        {"Name": "run_id", "Value": "42"},
        {"Name": "bucket", "Value": str(bucket_of("u-1"))},
        {"Name": "attempt", "Value": "3"},
    ]
    assert result == SendResult("ses", "fake-message-id")


@pytest.mark.parametrize(
    ("reply", "kind", "down"),
    [
        (error(429, "TooManyRequestsException"), "transient", False),
        (error(400, "LimitExceededException"), "transient", False),
        (error(400, "ThrottlingException"), "transient", False),
        (error(400, "MessageRejected", "Email address is not verified."), "permanent", False),
        (error(400, "MailFromDomainNotVerifiedException"), "permanent", False),
        (error(400, "BadRequestException"), "permanent", False),
        (error(404, "NotFoundException"), "permanent", False),
        (error(400, "SendingPausedException"), "fatal", False),
        (error(400, "AccountSuspendedException"), "fatal", False),
        (error(403, "AccessDeniedException"), "fatal", False),
        (error(403, "UnrecognizedClientException"), "fatal", False),
        (error(500, "InternalFailure"), "transient", True),
        (error(503, "ServiceUnavailable"), "transient", True),
        (Reply(status=502, body={}), "transient", True),
        (error(400, "SomeCodeNotInvented"), "transient", False),
    ],
    ids=lambda value: reply_id(value) if isinstance(value, Reply) else str(value),
)
def test_error_answers_are_classified_after_one_request(
    fake_ses: FakeSesServer, transport: SesTransport, reply: Reply, kind: str, down: bool
) -> None:
    """Each SES error code maps to the right retry decision, and is never retried by boto3."""
    fake_ses.reply = reply
    failure = send_error(transport)
    assert (failure.kind, failure.down) == (kind, down)
    assert str(reply.status) in failure.reason
    assert reply.headers.get("x-amzn-ErrorType", "").split(":")[0] in failure.reason
    assert len(fake_ses.posts) == 1


def test_throttling_honours_retry_after(fake_ses: FakeSesServer, transport: SesTransport) -> None:
    """A Retry-After on a throttling answer becomes the suggested wait."""
    fake_ses.reply = error(429, "TooManyRequestsException", **{"Retry-After": "7"})
    failure = send_error(transport)
    assert (failure.kind, failure.retry_after) == ("transient", 7.0)


@pytest.mark.parametrize("code", ["SendingPausedException", "AccountSuspendedException"])
def test_stopped_account_is_logged_critical_with_code(
    fake_ses: FakeSesServer,
    transport: SesTransport,
    caplog: pytest.LogCaptureFixture,
    code: str,
) -> None:
    """Sending paused or suspended is shouted at CRITICAL with the AWS code, not buried."""
    fake_ses.reply = error(400, code, "Your account's ability to send is paused.")
    with caplog.at_level(logging.CRITICAL, logger="digest.channels.email.ses"):
        failure = send_error(transport)
    assert failure.kind == "fatal"
    assert "paused" in failure.reason
    [record] = caplog.records
    assert record.levelno == logging.CRITICAL
    assert (record.__dict__.get("event"), record.__dict__.get("code")) == (
        "ses_sending_stopped",
        code,
    )


def test_connection_closed_after_request_is_unknown(
    fake_ses: FakeSesServer, transport: SesTransport
) -> None:
    """SES read the request and hung up: it may have the message, so not down, not resent."""
    fake_ses.reply = Reply(hang_up=True)
    failure = send_error(transport)
    assert (failure.kind, failure.down) == ("unknown", False)
    assert len(fake_ses.posts) == 1


def test_nothing_listening_is_transient_and_down() -> None:
    """A refused connection sent nothing: retry later, and a fallback may try the next one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ses = SesTransport(settings(ses_endpoint_url=f"http://127.0.0.1:{port}"))
    failure = send_error(ses)
    ses.close()
    assert (failure.kind, failure.down) == ("transient", True)
    assert "unreachable" in failure.reason


def test_missing_credentials_are_fatal_and_nothing_is_sent(
    fake_ses: FakeSesServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No credentials anywhere stops sending with a reason that says what to configure."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    ses = SesTransport(settings(ses_endpoint_url=fake_ses.url))
    with caplog.at_level(logging.CRITICAL, logger="digest.channels.email.ses"):
        failure = send_error(ses)
    ses.close()
    assert failure.kind == "fatal"
    assert "credentials" in failure.reason
    assert [r.__dict__.get("event") for r in caplog.records] == ["ses_no_credentials"]
    assert fake_ses.posts == []


# --- classification of failures without an answer ------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "down"),
    [
        (EndpointConnectionError(endpoint_url="https://email"), "transient", True),
        (ConnectTimeoutError(endpoint_url="https://email"), "transient", True),
        (ReadTimeoutError(endpoint_url="https://email"), "unknown", False),
        (ConnectionClosedError(endpoint_url="https://email"), "unknown", False),
        (HTTPClientError(error="reset by peer"), "unknown", False),
        (NoCredentialsError(), "fatal", False),
    ],
    ids=lambda value: type(value).__name__,
)
def test_transport_failures_are_classified(exc: Exception, kind: str, down: bool) -> None:
    """Before the request went out: transient and down; after it: unknown, never down."""
    failure = classify_botocore_error(exc)
    assert (failure.kind, failure.down) == (kind, down)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("inf", None),
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    """Retry-After as delta-seconds is used; garbage is ignored rather than trusted."""
    assert retry_after(header) == seconds


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date in the past means: retry now."""
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
