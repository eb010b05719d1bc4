"""Build the MIME message of a digest: validated addresses, safe headers, text + HTML parts.

Header values never carry CR/LF: names and the subject are cleaned (controls become
spaces), ids and URLs that contain them are refused, and `email.policy.SMTP` refuses
anything left. Addresses are normalised to ASCII (IDN domains in IDNA form), which is also
the form providers report back in bounces; internationalised local parts (SMTPUTF8) are
not supported.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from datetime import datetime
from email.header import Header
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import SMTP, Policy
from email.utils import format_datetime

from digest.buckets import BUCKETS
from digest.render.text import clean_text

SUBJECT_LIMIT = 200
NAME_LIMIT = 100
ADDRESS_LIMIT = 254
LOCAL_LIMIT = 64
MAX_LINE = 78  # RFC 5322's recommended header line length

# RFC 5322 dot-atom text of a local part (ASCII only).
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Whitespace, C0/C1 controls and Unicode line separators: never inside an address or a URI.
_SPACE_OR_CONTROL = re.compile("[\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200b\u2028\u2029\u3000]")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # printable ASCII except < and >


class HeaderError(ValueError):
    """A value that cannot go into a mail header: an invalid address, id or URL."""


class _UriListHeader(UnstructuredHeader, BaseHeader):
    """`<uri>, <uri>` folded only after commas and never RFC 2047-encoded.

    The stdlib folder turns an unstructured value with a token longer than 78 characters
    (a URL with a token) into encoded-words, which no mail client reads as a URL.
    """

    def fold(self, *, policy: Policy) -> str:
        line = f"{self.name}: {self}"
        if len(line) <= (policy.max_line_length or 78):
            return line + policy.linesep
        return f"{self.name}: " + f",{policy.linesep} ".join(self.split(", ")) + policy.linesep


class _TextHeader(UnstructuredHeader, BaseHeader):
    """Non-ASCII text folded by `email.header.Header`, which keeps every space inside the
    encoded-words; the policy's own folder can leave a space between two encoded-words,
    where RFC 2047 readers drop it ("🎉 Ünï" came back as "🎉Ünï")."""

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if value.isascii():
            return super().fold(policy=policy)
        encoded = Header(value, "utf-8", header_name=self.name).encode(
            linesep=policy.linesep, maxlinelen=policy.max_line_length or 78
        )
        return f"{self.name}: {encoded}{policy.linesep}"


_HEADERS = HeaderRegistry()
_HEADERS.map_to_type("list-unsubscribe", _UriListHeader)
_HEADERS.map_to_type("subject", _TextHeader)
POLICY = SMTP.clone(header_factory=_HEADERS)


def validate_email(address: str) -> str:
    """`address` normalised (trimmed, lower-case IDNA domain) if it is one plausible addr-spec."""
    return _normalise_address(address, require_dot=True)


def make_message_id(run_id: int, domain: str, bucket: int | None = None) -> str:
    """The Message-ID of a run's email: the same for every attempt, so providers can dedupe;
    with the run's bucket (`.b<bucket>`), so that feedback quoting it finds the delivery on
    the shard that holds it."""
    at = _ascii_domain(domain, require_dot=False)
    if bucket is None:
        return f"<digest.run-{int(run_id)}@{at}>"
    return f"<digest.run-{int(run_id)}.b{int(bucket)}@{at}>"


_OUR_MESSAGE_ID = re.compile(r"<?digest\.run-(\d{1,18})\.b(\d{1,4})@[^>]*>?")


def parse_message_id(value: str) -> tuple[int, int] | None:
    """(run id, bucket) from a Message-ID `make_message_id` wrote with a bucket, else None."""
    match = _OUR_MESSAGE_ID.fullmatch(value.strip())
    if match is None or int(match[2]) >= BUCKETS:
        return None
    return int(match[1]), int(match[2])


def idempotency_key(run_id: int) -> str:
    """The provider idempotency key of a run's email, independent of the attempt."""
    return f"digest-run-{int(run_id)}"


Fields = list[tuple[str, str | Address]]


def build_message(
    *,
    from_name: str,
    from_address: str,
    to_name: str | None,
    to_address: str,
    subject: str,
    html: str,
    text: str,
    message_id: str,
    idempotency_key: str,
    list_unsubscribe_url: str,
    list_unsubscribe_mailto: str | None,
    date: datetime,
    reply_to: str | None = None,
) -> bytes:
    """The bytes of a multipart/alternative message (text, then HTML) with every header a
    digest needs, CRLF line ends, ready for SMTP DATA or SES raw.

    The From address may have a dot-less domain (`digest@localhost` in demos); the To
    address must pass `validate_email`.

    Written directly rather than through `EmailMessage` (see `build_email_message`, the
    reference), which encodes bodies in pure Python and re-parses every header it was just
    given: most of the worker's CPU (docs/performance.md). Headers that fit
    one ASCII line are written as they are; anything else (non-ASCII names and subjects,
    long lines) is folded by the stdlib's header classes. Bodies are quoted-printable from
    `binascii`. tests/unit/test_message.py holds the two equal as a mail client reads them.
    """
    fields, boundary = _fields(
        from_name, from_address, to_name, to_address, subject, message_id, idempotency_key,
        list_unsubscribe_url, list_unsubscribe_mailto, date, reply_to,
    )  # fmt: skip
    head = "".join(_header(name, value) for name, value in fields)
    head += (
        f'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
    )
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return b"".join(
        (
            head.encode("ascii"),
            delimiter,
            _PART_HEADERS["plain"],
            quoted_printable(text),
            delimiter,
            _PART_HEADERS["html"],
            quoted_printable(html),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )


def build_email_message(
    *,
    from_name: str,
    from_address: str,
    to_name: str | None,
    to_address: str,
    subject: str,
    html: str,
    text: str,
    message_id: str,
    idempotency_key: str,
    list_unsubscribe_url: str,
    list_unsubscribe_mailto: str | None,
    date: datetime,
    reply_to: str | None = None,
) -> EmailMessage:
    """The same message built the obvious way, with the stdlib's `EmailMessage`: the
    reference `build_message` is tested against, and what the naive benchmark uses."""
    fields, boundary = _fields(
        from_name, from_address, to_name, to_address, subject, message_id, idempotency_key,
        list_unsubscribe_url, list_unsubscribe_mailto, date, reply_to,
    )  # fmt: skip
    msg = EmailMessage(policy=POLICY)
    for name, value in fields:
        msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():  # set_content stamps each part; only the top needs it
        del part["MIME-Version"]
    msg.set_boundary(boundary)
    return msg


def _fields(
    from_name: str,
    from_address: str,
    to_name: str | None,
    to_address: str,
    subject: str,
    message_id: str,
    idempotency_key: str,
    list_unsubscribe_url: str,
    list_unsubscribe_mailto: str | None,
    date: datetime,
    reply_to: str | None,
) -> tuple[Fields, str]:
    """The validated top-level header fields, in order, and the MIME boundary."""
    sender = _mailbox(from_name, _normalise_address(from_address, require_dot=False))
    recipient = _mailbox(to_name, validate_email(to_address))
    if date.tzinfo is None or date.utcoffset() is None:
        raise HeaderError("Date must be timezone-aware")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise HeaderError(f"invalid Message-ID {message_id!r}: expected <left@right>")
    unsubscribe = [f"<{_uri(list_unsubscribe_url, ('https', 'http'))}>"]
    if list_unsubscribe_mailto is not None:
        unsubscribe.append(f"<{_uri(list_unsubscribe_mailto, ('mailto',))}>")
    fields: Fields = [
        ("From", sender),
        ("To", recipient),
        *([("Reply-To", _mailbox(None, validate_email(reply_to)))] if reply_to else []),
        ("Subject", clean_text(subject, SUBJECT_LIMIT) or "Digest"),
        ("Date", format_datetime(date)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-generated"),
        ("List-Unsubscribe", ", ".join(unsubscribe)),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("X-Digest-Idempotency-Key", _token(idempotency_key, "idempotency key")),
    ]
    # A boundary derived from the Message-ID instead of a random one: the same run gives the
    # same bytes on every attempt. "=_" cannot occur in quoted-printable bodies.
    return fields, f"=_digest_{hashlib.sha256(message_id.encode()).hexdigest()[:32]}"


_PART_HEADERS = {
    subtype: (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode()
    for subtype in ("plain", "html")
}
# A display name that needs neither quoting nor encoding: atext words and single spaces.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _mailbox(name: str | None, addr_spec: str) -> Address:
    """A header address from a cleaned display name and a normalised addr-spec."""
    local, _, domain = addr_spec.rpartition("@")
    return Address(display_name=clean_text(name, NAME_LIMIT), username=local, domain=domain)


def _header(name: str, value: str | Address) -> str:
    """One header field with its CRLF: as is when it is one short ASCII line that no reader
    could take for an encoded-word, else folded and encoded by the stdlib's header class."""
    plain = value
    if isinstance(value, Address):
        if not value.display_name:
            plain = value.addr_spec
        elif _PLAIN_NAME.fullmatch(value.display_name) and "=?" not in value.display_name:
            plain = f"{value.display_name} <{value.addr_spec}>"
        else:
            # Every other name goes into encoded-words whole. The stdlib's address header
            # would decode an encoded-word the user typed ("=?utf-8?q?=0D=0ABcc:...?=")
            # and write its CR/LF out raw: a header injection.
            # One encoded-word, as the stdlib writes it (a name is at most 100 characters):
            # readers such as Python's keep a space between the words of a display name.
            word = binascii.b2a_base64(value.display_name.encode(), newline=False).decode()
            return f"{name}: =?utf-8?b?{word}?= <{value.addr_spec}>\r\n"
    if isinstance(plain, str) and plain.isascii() and "=?" not in plain:
        line = f"{name}: {plain}\r\n"
        if len(line) <= MAX_LINE + 2:
            return line
    if name == "List-Unsubscribe" and isinstance(plain, str) and plain.isascii():
        # Its <URI>s hold no whitespace or commas (checked by `_uri`), so nothing to fold at
        # but the ", " between them: as the stdlib folds it, without its parsing.
        return f"{name}: " + ",\r\n ".join(plain.split(", ")) + "\r\n"
    if name == "Subject" and isinstance(value, str):
        # also a long ASCII subject: the stdlib folds one that starts with a long word
        # (a URL) so that it reads back with a leading space
        return _encoded_words(name, value)
    return str(POLICY.header_factory(name, value).fold(policy=POLICY))


# UTF-8 bytes per encoded-word: 42 bytes -> 56 base64 characters -> a 68-character word,
# which fits after "Subject: " in 78 characters and is under RFC 2047's 75 per word.
_WORD_BYTES = 42


def _encoded_words(name: str, value: str) -> str:
    """`Name: =?utf-8?b?...?=`, one encoded-word per line, every character (spaces too)
    inside a word so that no reader can drop one, and no character's bytes split.

    Most subjects are non-ASCII (curly quotes, names), and `email.header.Header` choosing
    between Q and B encodings cost more than rendering the digest (docs/performance.md).
    """
    data = value.encode()
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            end -= 1
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
    return f"{name}: " + "\r\n ".join(words) + "\r\n"


def quoted_printable(body: str) -> bytes:
    """`body` as UTF-8 quoted-printable with CRLF line ends, ending with a line break."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n")
    if not lines.endswith("\n"):
        lines += "\n"
    encoded = binascii.b2a_qp(lines.encode("utf-8"), istext=True).split(b"\n")
    # b2a_qp can leave a line of 77 or 78 that ends in whitespace it encoded (=20 or =09)
    # after filling the line; RFC 2045 allows 76: move that last =XX to a line of its own.
    if max(map(len, encoded)) > 76:
        encoded = [
            line if len(line) <= 76 else line[:-3] + b"=\r\n" + line[-3:] for line in encoded
        ]
    return b"\r\n".join(encoded)


def _normalise_address(address: str, *, require_dot: bool) -> str:
    """`local@domain` with an ASCII lower-case domain, or HeaderError saying what is wrong."""
    if not isinstance(address, str):
        raise HeaderError(f"email address must be a string, got {type(address).__name__}")
    candidate = address.strip()
    if not candidate:
        raise HeaderError("email address is empty")
    if len(candidate) > ADDRESS_LIMIT:
        raise HeaderError(f"email address is longer than {ADDRESS_LIMIT} characters")
    if _SPACE_OR_CONTROL.search(candidate):
        raise HeaderError(f"invalid email address {candidate!r}: contains spaces or controls")
    if candidate.count("@") != 1:
        raise HeaderError(f"invalid email address {candidate!r}: needs exactly one @")
    local, domain = candidate.split("@")
    if not local:
        raise HeaderError(f"invalid email address {candidate!r}: empty local part")
    if len(local) > LOCAL_LIMIT or not _LOCAL_PART.fullmatch(local):
        raise HeaderError(
            f"invalid email address {candidate!r}: local part must be at most {LOCAL_LIMIT}"
            " ASCII letters, digits or !#$%&'*+/=?^_`{|}~.- (no leading, trailing or double dot)"
        )
    normalised = f"{local}@{_ascii_domain(domain, require_dot=require_dot, address=candidate)}"
    if len(normalised) > ADDRESS_LIMIT:
        raise HeaderError(f"email address is longer than {ADDRESS_LIMIT} characters")
    return normalised


def _ascii_domain(domain: str, *, require_dot: bool, address: str | None = None) -> str:
    """`domain` lower-cased and IDNA-encoded, or HeaderError."""
    what = f"invalid email address {address!r}" if address else f"invalid domain {domain!r}"
    if not domain:
        raise HeaderError(f"{what}: empty domain")
    lowered = domain.lower()
    if not lowered.isascii():
        try:
            lowered = lowered.encode("idna").decode("ascii")
        except UnicodeError:
            raise HeaderError(f"{what}: domain is not a valid internationalised name") from None
    labels = lowered.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise HeaderError(f"{what}: domain labels must be letters, digits and inner hyphens")
    if require_dot and (len(labels) < 2 or labels[-1].isdigit()):
        raise HeaderError(f"{what}: domain needs a dot and a top-level name")
    return lowered


def _uri(value: str, schemes: tuple[str, ...]) -> str:
    """`value` if it is an ASCII URI with one of `schemes` and nothing a header could choke on."""
    if not isinstance(value, str) or not value.isascii() or _SPACE_OR_CONTROL.search(value):
        raise HeaderError(f"invalid List-Unsubscribe URI {value!r}: spaces, controls or non-ASCII")
    if "<" in value or ">" in value or "," in value:
        raise HeaderError(f"invalid List-Unsubscribe URI {value!r}: contains < > or ,")
    scheme, colon, rest = value.partition(":")
    if not colon or scheme.lower() not in schemes or not rest.strip("/"):
        raise HeaderError(f"invalid List-Unsubscribe URI {value!r}: expected {'/'.join(schemes)}")
    return value


def _token(value: str, what: str) -> str:
    """`value` if it is non-empty printable ASCII without spaces (no CR/LF can sneak in)."""
    if not value or not value.isascii() or _SPACE_OR_CONTROL.search(value):
        raise HeaderError(f"invalid {what} {value!r}: must be printable ASCII without spaces")
    return value
