"""SMTP transport against a real SMTP server (aiosmtpd in a thread): TLS, AUTH, errors, reuse."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import logging
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from digest import channels as transports
from digest import logs
from digest.buckets import bucket_of
from digest.channels.base import SendError
from digest.channels.email.mime import (
    build_message,
    idempotency_key,
    make_message_id,
    validate_email,
)
from digest.channels.email.smtp import SmtpTransport
from digest.channels.fallback import FallbackTransport
from digest.config import Settings
from digest.models import OutgoingMessage

SENDER = "digest@example.com"
DATE = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
TOKEN = "NDI.abcdefghijklmnopqrstuvwxyz0123456789"
USER, PASSWORD = "digest", "s3cret-Pa55word!"


# -- a real SMTP server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message body as the server got it, and the reply it gave."""

    peer: tuple[str, int]
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    reply: str
    tls: bool


class Handler:
    """Records every session and body; answers MAIL/RCPT/DATA from a script, else 250.

    The upper-case `handle_*` names are aiosmtpd's hook names (hence the noqa: N802).
    """

    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}
        self.received: list[Received] = []
        self.ehlo_peers: list[tuple[str, int]] = []
        self.quits = 0
        self.stall = 0.0  # seconds to sit on a body before replying
        self.after_data: str | None = None  # "close", or a reply to push and then close

    @property
    def delivered(self) -> list[Received]:
        """Bodies the server accepted."""
        return [r for r in self.received if r.reply.startswith("250")]

    def _scripted(self, command: str) -> str | None:
        queue = self.script.get(command)
        return queue.pop(0) if queue else None

    async def handle_EHLO(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_peers.append(session.peer)
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to the handler
        return responses

    async def handle_MAIL(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if reply := self._scripted("MAIL"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if reply := self._scripted("RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        reply = self._scripted("DATA") or "250 OK"
        self.received.append(
            Received(
                session.peer,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                reply,
                server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.after_data:
            # Runs once the reply below has been written: the server then hangs up.
            server.loop.call_soon(_hang_up, server.transport, self.after_data)
            self.after_data = None
        return reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.quits += 1
        return "221 Bye"


def _hang_up(transport: asyncio.Transport, how: str) -> None:
    if how != "close":
        transport.write(how.encode() + b"\r\n")
    transport.close()


def free_port() -> int:
    """A TCP port nothing listens on right now (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve(handler: Handler, port: int | None = None, **options: Any) -> Iterator[int]:
    """An SMTP server on 127.0.0.1 for the duration; yields its port."""
    port = port or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def settings(port: int, **overrides: Any) -> Settings:
    """Transport settings for the local test server."""
    base = Settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_timeout=5.0,
        from_address=SENDER,
    )
    return base.with_(**overrides)


def outgoing(
    run_id: int = 7,
    *,
    to_address: str = "ana@example.com",
    to_name: str | None = "Ana",
    subject: str = "Ana commented on your post",
    text: str = "Hello Ana\n",
) -> OutgoingMessage:
    """A digest message as the worker hands it to a transport."""
    address = validate_email(to_address)
    message_id = make_message_id(run_id, "example.com")
    html = f"<p>{text}</p>"
    data = build_message(
        from_name="Digest",
        from_address=SENDER,
        to_name=to_name,
        to_address=address,
        subject=subject,
        html=html,
        text=text,
        message_id=message_id,
        idempotency_key=idempotency_key(run_id),
        list_unsubscribe_url=f"https://app.example.com/u/{TOKEN}",
        list_unsubscribe_mailto=f"mailto:unsubscribe@example.com?subject={TOKEN}",
        date=DATE,
    )
    return OutgoingMessage(
        run_id=run_id,
        attempt=1,
        user_id="42",
        to_address=address,
        message_id=message_id,
        idempotency_key=idempotency_key(run_id),
        data=data,
        html=html,
        bucket=bucket_of("42"),
    )


def parse(data: bytes) -> EmailMessage:
    """`data` as a receiving mail client sees it."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def send_error(transport: SmtpTransport, message: OutgoingMessage) -> SendError:
    """The SendError `transport.send(message)` raises."""
    with pytest.raises(SendError) as caught:
        transport.send(message)
    return caught.value


# -- certificates made for the test -------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""

    ca: Path
    other_ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    """A CA certificate (no issuer: self-signed) or a server certificate signed by `issuer`."""
    now = datetime.now(UTC)
    signer_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), False
        )
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        ).add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates written once for this module."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("digest test CA", ca_key, None)
    other = _certificate("some other CA", other_key, None)
    server = _certificate("localhost", server_key, (ca, ca_key))
    paths = Pki(
        directory / "ca.pem",
        directory / "other-ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    paths.ca.write_bytes(_pem(ca))
    paths.other_ca.write_bytes(_pem(other))
    paths.cert.write_bytes(_pem(server))
    paths.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def tls_server(pki: Pki, security: str) -> dict[str, Any]:
    """Controller options for a server that speaks `security` (starttls: required)."""
    if security == "tls":
        return {"ssl_context": pki.server_context()}
    return {"tls_context": pki.server_context(), "require_starttls": True}


# -- plain delivery and connection reuse ---------------------------------------------------


def test_plain_delivery_keeps_envelope_bytes_and_headers() -> None:
    """The envelope is from_address -> to_address and the built bytes arrive unchanged."""
    handler = Handler()
    message = outgoing()
    with serve(handler) as port, closing(SmtpTransport(settings(port))) as transport:
        result = transport.send(message)

    [got] = handler.delivered
    assert (got.mail_from, got.rcpt_tos) == (SENDER, ["ana@example.com"])
    assert got.data == message.data
    parsed = parse(got.data)
    assert parsed["From"] == "Digest <digest@example.com>"
    assert parsed["To"] == "Ana <ana@example.com>"
    assert parsed["Subject"] == "Ana commented on your post"
    assert parsed["Message-ID"] == "<digest.run-7@example.com>"
    assert parsed["List-Unsubscribe"] == (
        f"<https://app.example.com/u/{TOKEN}>, <mailto:unsubscribe@example.com?subject={TOKEN}>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (result.transport, result.provider_message_id) == ("smtp", "<digest.run-7@example.com>")


def test_queue_id_in_the_reply_is_the_provider_id() -> None:
    """A "250 ... queued as ID" reply makes ID the provider message id."""
    handler = Handler()
    handler.script["DATA"] = ["250 2.0.0 Ok: queued as 4Q8X2K1b2Fz"]
    with serve(handler) as port, closing(SmtpTransport(settings(port))) as transport:
        assert transport.send(outgoing()).provider_message_id == "4Q8X2K1b2Fz"


def test_one_connection_is_reused_for_sends_from_one_thread() -> None:
    """Several sends from one thread share one connection; close() QUITs it once."""
    handler = Handler()
    with serve(handler) as port:
        transport = SmtpTransport(settings(port))
        for run_id in (1, 2, 3):
            transport.send(outgoing(run_id))
        transport.close()
        transport.close()  # a second close has nothing left to do

        assert len(handler.delivered) == 3
        assert len({r.peer for r in handler.delivered}) == 1
        assert len(handler.ehlo_peers) == 1
        assert handler.quits == 1


def test_each_sending_thread_gets_its_own_connection() -> None:
    """Concurrent senders get one connection each, every message arrives, close() QUITs all."""
    handler = Handler()
    threads, per_thread = 4, 3
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    with serve(handler) as port:
        transport = SmtpTransport(settings(port))

        def sender(index: int) -> None:
            try:
                barrier.wait(timeout=5)
                for i in range(per_thread):
                    transport.send(outgoing(index * 100 + i))
            except BaseException as exc:  # reported below, in the test thread
                errors.append(exc)

        workers = [threading.Thread(target=sender, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=10)
        transport.close()  # from another thread than the senders
        quits = handler.quits

    assert errors == []
    peers: dict[int, set[tuple[str, int]]] = {}
    for got in handler.delivered:
        run_id = int(parse(got.data)["Message-ID"].split("-")[1].split("@")[0])
        peers.setdefault(run_id // 100, set()).add(got.peer)
    assert len(handler.delivered) == threads * per_thread
    assert all(len(p) == 1 for p in peers.values()), peers
    assert len(set().union(*peers.values())) == threads
    assert quits == threads


# -- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_the_trusted_ca_delivers(pki: Pki, security: str) -> None:
    """STARTTLS and implicit TLS deliver, encrypted, when the server's CA is smtp_ca_file."""
    handler = Handler()
    config = {"smtp_security": security, "smtp_ca_file": pki.ca}
    with (
        serve(handler, **tls_server(pki, security)) as port,
        closing(SmtpTransport(settings(port, **config))) as transport,
    ):
        transport.send(outgoing())
        transport.send(outgoing(8))

    assert [r.tls for r in handler.delivered] == [True, True]
    assert len({r.peer for r in handler.delivered}) == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_an_untrusted_certificate_sends_nothing(pki: Pki, security: str) -> None:
    """A certificate not signed by smtp_ca_file is refused: down, says so, nothing is sent."""
    handler = Handler()
    config = {"smtp_security": security, "smtp_ca_file": pki.other_ca}
    with (
        serve(handler, **tls_server(pki, security)) as port,
        closing(SmtpTransport(settings(port, **config))) as transport,
    ):
        error = send_error(transport, outgoing())

    assert (error.kind, error.down) == ("transient", True)
    assert "certificate verification failed" in error.reason
    assert handler.received == []


def test_starttls_not_offered_never_falls_back_to_plaintext() -> None:
    """A server without STARTTLS gets nothing in plaintext: down, reason names STARTTLS."""
    handler = Handler()
    with (
        serve(handler) as port,
        closing(SmtpTransport(settings(port, smtp_security="starttls"))) as transport,
    ):
        error = send_error(transport, outgoing())

    assert (error.kind, error.down) == ("transient", True)
    assert "does not offer STARTTLS" in error.reason
    assert handler.received == []


def test_missing_ca_file_fails_at_construction(tmp_path: Path) -> None:
    """A smtp_ca_file that cannot be read is a configuration error, found before any send."""
    with pytest.raises(SendError) as caught:
        SmtpTransport(settings(1, smtp_security="starttls", smtp_ca_file=tmp_path / "none.pem"))
    assert caught.value.kind == "fatal"
    assert "smtp_ca_file" in caught.value.reason


# -- AUTH ------------------------------------------------------------------------------------


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    """Accepts USER/PASSWORD only."""
    ok = isinstance(auth_data, LoginPassword) and auth_data == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


def auth_server(pki: Pki) -> dict[str, Any]:
    """Controller options: STARTTLS required, then AUTH required."""
    return {**tls_server(pki, "starttls"), "auth_required": True, "authenticator": authenticator}


def test_auth_with_the_right_password_delivers(pki: Pki) -> None:
    """With smtp_username/smtp_password the transport logs in (after STARTTLS) and delivers."""
    handler = Handler()
    config = {
        "smtp_security": "starttls",
        "smtp_ca_file": pki.ca,
        "smtp_username": USER,
        "smtp_password": PASSWORD,
    }
    with (
        serve(handler, **auth_server(pki)) as port,
        closing(SmtpTransport(settings(port, **config))) as transport,
    ):
        transport.send(outgoing())
    assert len(handler.delivered) == 1


def test_auth_with_a_wrong_password_is_down_and_never_shows_the_password(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login is down with a clear reason; no log record or error text has the password."""
    caplog.set_level(logging.DEBUG)
    handler = Handler()
    wrong = "wr0ng-Pa55word!"
    config = {
        "smtp_security": "starttls",
        "smtp_ca_file": pki.ca,
        "smtp_username": USER,
        "smtp_password": wrong,
    }
    with (
        serve(handler, **auth_server(pki)) as port,
        closing(SmtpTransport(settings(port, **config))) as transport,
    ):
        error = send_error(transport, outgoing())

    assert (error.kind, error.down) == ("transient", True)
    assert "AUTH" in error.reason
    assert "535" in error.reason
    assert handler.received == []
    assert [r.__dict__.get("event") for r in caplog.records].count("smtp_auth_refused") == 1
    texts = [logs.TextFormatter().format(r) for r in caplog.records]
    texts += [logs.JsonFormatter().format(r) for r in caplog.records]
    texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    assert not [t for t in texts if wrong in t or PASSWORD in t]


def test_password_over_plaintext_is_refused() -> None:
    """smtp_security=none with a username is refused before the password could leave."""
    with pytest.raises(SendError) as caught:
        SmtpTransport(settings(1, smtp_username=USER, smtp_password=PASSWORD))
    assert caught.value.kind == "fatal"
    assert PASSWORD not in caught.value.reason


# -- replies and failures ------------------------------------------------------------------


def test_4xx_is_transient_and_the_next_send_delivers() -> None:
    """A 451 fails that send as transient; the next one goes through on the same connection."""
    handler = Handler()
    handler.script["RCPT"] = ["451 4.7.1 Greylisted, try again later"]
    with serve(handler) as port, closing(SmtpTransport(settings(port))) as transport:
        error = send_error(transport, outgoing())
        transport.send(outgoing())

    assert (error.kind, error.down) == ("transient", False)
    assert error.reason.startswith("451 4.7.1 Greylisted, try again later")
    assert len(handler.delivered) == 1
    assert len(handler.ehlo_peers) == 1


@pytest.mark.parametrize(
    ("command", "reply", "kind", "down"),
    [
        ("RCPT", "550 5.1.1 <ana@example.com>: user unknown", "permanent", False),
        ("DATA", "554 5.7.1 Message rejected as spam", "permanent", False),
        ("DATA", "452 4.3.1 Insufficient system storage", "transient", False),
        ("MAIL", "451 4.3.0 Local error, try later", "transient", False),
        ("MAIL", "553 5.7.1 Sender address rejected", "transient", True),
        ("RCPT", "421 4.3.2 Service shutting down", "transient", True),
        ("DATA", "421 4.3.2 Service shutting down", "transient", True),
    ],
)
def test_replies_are_classified(command: str, reply: str, kind: str, down: bool) -> None:
    """Each refusal maps to its kind and `down`; the reason is the SMTP code and text."""
    handler = Handler()
    # A 421 makes the transport reconnect once if the connection was reused: script it twice.
    handler.script[command] = [reply, reply]
    with serve(handler) as port, closing(SmtpTransport(settings(port))) as transport:
        error = send_error(transport, outgoing())
        handler.script.clear()
        transport.send(outgoing())  # the transport recovers for the next message

    assert (error.kind, error.down) == (kind, down)
    assert error.reason.startswith(reply)
    assert len(handler.delivered) == 1


def test_server_down_is_transient_down_and_quick() -> None:
    """Nothing listening: transient, down, reported at once."""
    port = free_port()
    with closing(SmtpTransport(settings(port, smtp_timeout=1.0))) as transport:
        started = time.monotonic()
        error = send_error(transport, outgoing())
    assert time.monotonic() - started < 1.0
    assert (error.kind, error.down) == ("transient", True)
    assert "cannot connect" in error.reason


def test_silent_server_times_out_as_down() -> None:
    """A server that accepts but never greets is down after smtp_timeout, not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts the connection; nobody ever answers
        port = listener.getsockname()[1]
        with closing(SmtpTransport(settings(port, smtp_timeout=0.3))) as transport:
            started = time.monotonic()
            error = send_error(transport, outgoing())
    assert time.monotonic() - started < 2.0
    assert (error.kind, error.down) == ("transient", True)
    assert "did not answer within 0.3 s" in error.reason


def test_no_reply_after_the_final_dot_is_unknown() -> None:
    """A server that takes the body but never replies: outcome unknown, never down."""
    handler = Handler()
    handler.stall = 3.0  # the deliberate stall, well past the client's timeout
    message = outgoing()
    with (
        serve(handler) as port,
        closing(SmtpTransport(settings(port, smtp_timeout=0.5))) as transport,
    ):
        error = send_error(transport, message)

    assert (error.kind, error.down) == ("unknown", False)
    assert "may have accepted" in error.reason
    assert [r.data for r in handler.received] == [message.data]


@pytest.mark.parametrize("hang_up", ["close", "421 4.4.2 Idle timeout, closing connection"])
def test_reconnects_when_the_server_dropped_the_connection(hang_up: str) -> None:
    """A connection the server closed between sends is replaced and the send delivers."""
    handler = Handler()
    handler.after_data = hang_up
    with serve(handler) as port, closing(SmtpTransport(settings(port))) as transport:
        transport.send(outgoing(1))
        transport.send(outgoing(2))

    assert len(handler.delivered) == 2
    assert len({r.peer for r in handler.delivered}) == 2


def test_reconnects_after_a_server_restart() -> None:
    """After the server restarts on the same port the next send reconnects and delivers."""
    handler = Handler()
    port = free_port()
    with closing(SmtpTransport(settings(port))) as transport:
        with serve(handler, port=port):
            transport.send(outgoing(1))
        with serve(handler, port=port):
            transport.send(outgoing(2))
            transport.close()  # QUIT while this server still listens

    assert len(handler.delivered) == 2
    assert handler.quits == 1


# -- what goes over the wire ---------------------------------------------------------------


def test_unusual_headers_and_bodies_arrive_intact() -> None:
    """Emoji names, IDN domains, long non-ASCII subjects, CR/LF attempts and lone dots survive."""
    handler = Handler()
    subject = "Ünïcødé 🎉 " * 25 + "\r\nBcc: victim@example.com"
    text = "first line\n.\n..two dots\n.leading dot\nlast line\n"
    message = outgoing(
        to_address="Ana@Bücher.Example",
        to_name="Ana 🎉 Müller\r\nBcc: victim@example.com",
        subject=subject,
        text=text,
    )
    with serve(handler) as port, closing(SmtpTransport(settings(port))) as transport:
        transport.send(message)

    [got] = handler.delivered
    assert got.rcpt_tos == ["Ana@xn--bcher-kva.example"]
    assert got.data == message.data
    # Compared with the built bytes parsed back, not the in-memory header: the stdlib folder
    # can put the space between two encoded words outside them, where parsers drop it.
    parsed, built = parse(got.data), parse(message.data)
    assert parsed["Subject"] == built["Subject"]
    assert parsed["Subject"].startswith("Ünïcødé 🎉")
    assert parsed["To"].addresses[0].display_name == built["To"].addresses[0].display_name
    assert parsed["To"].addresses[0].display_name.startswith("Ana 🎉 Müller")
    assert parsed["Bcc"] is None
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == text


# -- fallback over real peers ---------------------------------------------------------------


def test_ses_down_falls_back_to_smtp_and_records_which_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ses,smtp` with SES unreachable: the SMTP server gets the mail, the result says smtp."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    handler = Handler()
    with serve(handler) as port:
        config = settings(
            port,
            ses_region="eu-west-1",
            ses_endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            ses_timeout=2.0,
        )
        transport = transports.make("ses,smtp", config)
        try:
            first = transport.send(outgoing(1))
            second = transport.send(outgoing(2))
        finally:
            transport.close()
    assert first.transport == second.transport == "smtp"
    assert len(handler.delivered) == 2


def test_recipient_refused_by_smtp_is_not_resent_elsewhere() -> None:
    """A 550 from the first transport is final: the second transport never sees the mail."""
    refusing, accepting = Handler(), Handler()
    refusing.script["RCPT"] = ["550 5.1.1 no such user"]
    with serve(refusing) as first, serve(accepting) as second:
        transport = FallbackTransport(
            [SmtpTransport(settings(first)), SmtpTransport(settings(second))]
        )
        with pytest.raises(SendError) as raised:
            transport.send(outgoing(1))
        transport.close()
    assert raised.value.kind == "permanent"
    assert accepting.delivered == []
