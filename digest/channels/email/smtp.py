"""`smtp` transport: stdlib smtplib, verified TLS, AUTH, one reused connection per thread.

How a failure is classified (`SendError` kind / `down`; reasons carry the SMTP code and text,
e.g. "550 5.1.1 <x@example.com>: user unknown (RCPT TO at mx.example.com:587)"):

| what happened                                           | kind      | down  |
| ------------------------------------------------------- | --------- | ----- |
| connection refused, unreachable, connect/banner timeout | transient | True  |
| TLS handshake or certificate verification failed        | transient | True  |
| STARTTLS not offered or refused (never falls back)      | transient | True  |
| AUTH refused or impossible                               | transient | True  |
| 421 at any step; 4xx/5xx banner or EHLO; 5xx MAIL FROM  | transient | True  |
| connection lost or timed out before the final "."       | transient | True  |
| 4xx to MAIL FROM, RCPT TO, DATA or the message          | transient | False |
| 5xx to RCPT TO, DATA or the message                     | permanent | False |
| no reply (timeout, disconnect) after the final "."      | unknown   | False |
| unintelligible reply after the final "."                | unknown   | False |

A connection reused from an earlier send that turns out to be closed (a disconnect or a 421
before the message was handed over) is replaced once, transparently, within the same send.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading

from digest import logs
from digest.channels.base import SendError
from digest.config import Settings
from digest.models import FailureKind, OutgoingMessage, SendResult

log = logging.getLogger(__name__)

# Postfix "250 2.0.0 Ok: queued as 4Q8X2K1b2Fz9sxy"; Exim "250 OK id=1rAbCd-000123-Ef".
_QUEUE_ID = re.compile(rb"queued as ([A-Za-z0-9][A-Za-z0-9._-]*)|\bid=([A-Za-z0-9][A-Za-z0-9._-]*)")
_END_OF_DATA = "end of DATA"


class _DroppedError(SendError):
    """The connection died before the message was handed over: safe to retry on a new one."""


class SmtpTransport:
    """Sends through one SMTP server, keeping one open connection per sending thread.

    `send` may be called from many threads at once; each thread gets (and reuses) its own
    connection. `close` QUITs every connection this transport opened and may be called from
    any thread once the senders are done. The provider message id is the server's queue id
    when the final 250 reply names one ("queued as ABC123", "id=ABC123"), otherwise the
    message's own Message-ID header.
    """

    name = "smtp"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.where = f"{settings.smtp_host}:{settings.smtp_port}"
        if settings.smtp_username and settings.smtp_security == "none":
            raise SendError(
                "fatal",
                "smtp: refusing to send the SMTP password over an unencrypted connection:"
                " set smtp_security to starttls or tls",
            )
        self._context: ssl.SSLContext | None = None
        if settings.smtp_security != "none":
            # Verifying (CERT_REQUIRED + hostname check); smtplib's own default does not verify.
            cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
            try:
                self._context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise SendError("fatal", f"smtp: cannot load smtp_ca_file {cafile}: {exc}") from exc
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[smtplib.SMTP] = set()

    def send(self, message: OutgoingMessage) -> SendResult:
        """Hand `message` to the server (MAIL, RCPT, DATA) or raise a classified `SendError`."""
        payload = _data_payload(message.data)
        conn, reused = self._connection()
        try:
            return self._deliver(conn, message, payload)
        except _DroppedError as exc:
            if not reused:
                raise
            # Servers close idle connections (often with a 421 first); nothing was handed over.
            logs.event(log, "smtp_reconnect", server=self.where, reason=exc.reason)
        conn, _ = self._connection()
        return self._deliver(conn, message, payload)

    def close(self) -> None:
        """QUIT every connection opened by any thread; call it once the senders are done."""
        with self._lock:
            connections = list(self._open)
            self._open.clear()
        for conn in connections:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                pass  # already gone: nothing left to release but the socket
            finally:
                conn.close()

    # -- connections -------------------------------------------------------------------

    def _connection(self) -> tuple[smtplib.SMTP, bool]:
        """This thread's open connection and True, or a new one and False."""
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is not None:
            with self._lock:
                if conn in self._open:  # not closed by `close` or after a failure
                    return conn, True
        conn = self._connect()
        with self._lock:
            self._open.add(conn)
        self._local.conn = conn
        return conn, False

    def _discard(self, conn: smtplib.SMTP) -> None:
        """Forget and close `conn` without QUIT (its state is unknown or it is dead)."""
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def _connect(self) -> smtplib.SMTP:
        """A connected, greeted, encrypted (unless `none`) and authenticated SMTP session."""
        s = self.settings
        step = "connect"
        conn: smtplib.SMTP | None = None
        try:
            if s.smtp_security == "tls":
                conn = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=self._context
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            step = "EHLO"
            conn.ehlo_or_helo_if_needed()
            if s.smtp_security == "starttls":
                step = "STARTTLS"
                if not conn.has_extn("starttls"):
                    raise SendError(
                        "transient",
                        f"smtp server {self.where} does not offer STARTTLS; refusing to send"
                        " in plaintext (smtp_security=none is for trusted local relays only)",
                        down=True,
                    )
                code, text = conn.starttls(context=self._context)
                if code != 220:  # recent Pythons raise this themselves; older ones return it
                    raise smtplib.SMTPResponseException(code, text)
                step = "EHLO"
                code, text = conn.ehlo()  # RFC 3207: forget pre-TLS capabilities, ask again
                if code != 250:
                    raise smtplib.SMTPHeloError(code, text)
            if s.smtp_username:
                step = "AUTH"
                conn.login(s.smtp_username, s.smtp_password or "")
        except (SendError, OSError) as exc:  # smtplib and ssl errors are OSErrors too
            if conn is not None:
                conn.close()
            if isinstance(exc, SendError):
                raise
            raise self._connect_error(step, exc) from exc
        logs.event(
            log,
            "smtp_connected",
            logging.DEBUG,
            server=self.where,
            security=s.smtp_security,
            user=s.smtp_username or "-",
        )
        return conn

    def _connect_error(self, step: str, exc: OSError) -> SendError:
        """`exc` raised while setting up a connection, as a "service is down" SendError.

        A wrong password or an untrusted certificate will not fix itself, yet these are
        `transient` + `down`, not `fatal`: `fatal` stops every worker, while `down` lets a
        fallback transport carry the mail and, without one, the run backs off and retries
        until an operator fixes the setting (or `max_attempts` fails it visibly). The reason
        says exactly what failed, and it is logged as an error.
        """
        where = f"{step} at {self.where}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            ca = self.settings.smtp_ca_file or "the system CA store"
            reason = (
                f"smtp TLS certificate verification failed for {self.where}:"
                f" {exc.verify_message} (trusted CAs: {ca})"
            )
            logs.event(log, "smtp_tls_untrusted", logging.ERROR, server=self.where, reason=reason)
        elif isinstance(exc, ssl.SSLError):
            reason = f"smtp TLS handshake failed ({where}): {exc.reason or exc}"
        elif isinstance(exc, smtplib.SMTPAuthenticationError):
            reason = (
                f"smtp AUTH as {self.settings.smtp_username!r} refused ({where}):"
                f" {_reply(exc.smtp_code, exc.smtp_error)}"
            )
            logs.event(log, "smtp_auth_refused", logging.ERROR, server=self.where, reason=reason)
        elif isinstance(exc, smtplib.SMTPResponseException):  # banner, EHLO, STARTTLS reply
            reason = f"{_reply(exc.smtp_code, exc.smtp_error)} ({where})"
        elif _timed_out(exc):
            reason = f"smtp server {self.where} did not answer within {self._timeout} ({step})"
        elif isinstance(exc, smtplib.SMTPException):  # e.g. no AUTH offered, disconnected
            reason = f"smtp {where} failed: {exc}"
        else:
            reason = f"cannot connect to smtp server {self.where}: {exc.strerror or exc}"
        return SendError("transient", reason, down=True)

    # -- one message ---------------------------------------------------------------------

    def _deliver(self, conn: smtplib.SMTP, message: OutgoingMessage, payload: bytes) -> SendResult:
        """MAIL, RCPT, DATA and the body on `conn`, driving DATA ourselves.

        `smtplib.SMTP.data` would hide whether a failure came before the final "." (nothing
        handed over: retry) or while waiting for its reply (the server may have the mail).
        """
        step = "MAIL FROM"
        try:
            self._expect(conn, step, conn.mail(self.settings.from_address), 250)
            step = "RCPT TO"
            # One recipient, so its RCPT reply is the whole story: no partial refusals.
            self._expect(conn, step, conn.rcpt(message.to_address), 250, 251)
            step = "DATA"
            self._expect(conn, step, conn.docmd("DATA"), 354)
            step = "message body"
            conn.send(payload)
        except OSError as exc:  # includes SMTPServerDisconnected and socket timeouts
            raise self._lost(conn, step, exc) from exc
        except ValueError as exc:  # an address smtplib cannot put on the wire (CR/LF, 8-bit)
            self._reset(conn)
            if step == "MAIL FROM":
                raise SendError(
                    "transient", f"smtp: invalid from_address: {exc}", down=True
                ) from exc
            raise SendError("permanent", f"invalid recipient address: {exc}") from exc
        try:
            code, text = conn.getreply()
        except OSError as exc:
            self._discard(conn)
            how = f"timed out after {self._timeout}" if _timed_out(exc) else str(exc)
            raise SendError(
                "unknown",
                f"no reply from smtp server {self.where} after the message was sent ({how}):"
                " the server may have accepted it",
            ) from exc
        self._expect(conn, _END_OF_DATA, (code, text), 250)
        return SendResult(self.name, _queue_id(text) or message.message_id)

    def _expect(self, conn: smtplib.SMTP, step: str, reply: tuple[int, bytes], *ok: int) -> None:
        """Return if `reply` has one of the `ok` codes, otherwise raise it classified."""
        code, text = reply
        if code in ok:
            return
        reason = f"{_reply(code, text)} ({step} at {self.where})"
        if code == 421:  # the server is closing this connection
            self._discard(conn)
            if step == _END_OF_DATA:  # an explicit refusal, but never retried behind our back
                raise SendError("transient", reason, down=True)
            raise _DroppedError("transient", reason, down=True)
        kind: FailureKind
        down = False
        if 400 <= code < 500:
            kind = "transient"
        elif 500 <= code < 600:
            # A refused sender is about us (the account, the relay), not this recipient.
            kind, down = ("transient", True) if step == "MAIL FROM" else ("permanent", False)
        else:  # not SMTP: the session cannot be trusted any more
            self._discard(conn)
            if step == _END_OF_DATA:
                raise SendError("unknown", f"unexpected reply {reason}")
            raise SendError("transient", f"unexpected reply {reason}", down=True)
        self._reset(conn)
        raise SendError(kind, reason, down=down)

    def _lost(self, conn: smtplib.SMTP, step: str, exc: OSError) -> SendError:
        """The connection failed before the final "." went out: nothing was handed over."""
        self._discard(conn)
        if _timed_out(exc):
            # Not a dead idle connection but a slow server: do not wait a second timeout.
            return SendError(
                "transient",
                f"smtp server {self.where} did not answer within {self._timeout} ({step})",
                down=True,
            )
        return _DroppedError(
            "transient", f"connection to smtp server {self.where} lost ({step}): {exc}", down=True
        )

    def _reset(self, conn: smtplib.SMTP) -> None:
        """RSET after a failed transaction so `conn` can carry the next one, or drop it."""
        try:
            code, _ = conn.rset()
        except (smtplib.SMTPException, OSError):
            code = -1
        if code != 250:
            self._discard(conn)

    @property
    def _timeout(self) -> str:
        return f"{self.settings.smtp_timeout:g} s"


def _data_payload(raw: bytes) -> bytes:
    """`raw` as it goes after DATA: CRLF line ends, leading dots doubled, then CRLF "." CRLF.

    `smtplib.quotedata` does the line ends and dots for text; latin-1 maps each byte to one
    character and back, so any 8-bit byte passes unchanged. Turning bare LF and CR into CRLF
    also means no "\\n.\\n" can end the data early on a lenient server (SMTP smuggling).
    """
    quoted = smtplib.quotedata(raw.decode("latin-1")).encode("latin-1")
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


def _queue_id(text: bytes) -> str | None:
    """The server's queue id in a final 250 reply, if it names one."""
    found = _QUEUE_ID.search(text)
    if found is None:
        return None
    return (found.group(1) or found.group(2)).decode("ascii")


def _reply(code: int, text: bytes | str) -> str:
    """An SMTP reply as one line: "550 5.1.1 <x@example.com>: user unknown"."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}".strip()


def _timed_out(exc: BaseException) -> bool:
    """Whether `exc` is, or was raised while handling, a socket timeout.

    smtplib turns a timeout while reading a reply into `SMTPServerDisconnected`; the original
    `TimeoutError` stays on `__context__`.
    """
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, TimeoutError):
            return True
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False
