"""MIME messages: headers present and parseable, no header injection, IDN and emoji safe."""

from __future__ import annotations

import binascii
import email
import email.policy
import itertools
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from digest.channels.email.mime import (
    SUBJECT_LIMIT,
    HeaderError,
    build_email_message,
    build_message,
    idempotency_key,
    make_message_id,
    parse_message_id,
    validate_email,
)
from digest.render.text import clean_text

TOKEN = "NDI.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ" * 2
DATE = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


DEFAULTS: dict[str, Any] = {
    "from_name": "Digest",
    "from_address": "digest@example.com",
    "to_name": "Ana",
    "to_address": "ana@example.com",
    "subject": "Ana commented on “Trip photos” and 12 more updates",
    "html": "<p>Hello <b>Ana</b> — ünïcödé</p>",
    "text": "Hello Ana — ünïcödé\n",
    "message_id": make_message_id(7, "example.com"),
    "idempotency_key": idempotency_key(7),
    "list_unsubscribe_url": f"https://app.example.com/u/{TOKEN}",
    "list_unsubscribe_mailto": f"mailto:unsubscribe@example.com?subject={TOKEN}",
    "date": DATE,
}


def message(**overrides: Any) -> bytes:
    """A message with sensible defaults."""
    return build_message(**{**DEFAULTS, **overrides})


def reparse(raw: bytes) -> EmailMessage:
    """`raw` as a receiving client sees it."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_headers_present_and_parse_back() -> None:
    """Every header a digest needs is there and survives a round trip through bytes."""
    parsed = reparse(message())
    assert parsed["From"] == "Digest <digest@example.com>"
    assert parsed["To"] == "Ana <ana@example.com>"
    assert parsed["Subject"] == "Ana commented on “Trip photos” and 12 more updates"
    assert parsed["Date"].datetime == DATE
    assert parsed["Message-ID"] == "<digest.run-7@example.com>"
    assert parsed["X-Digest-Idempotency-Key"] == "digest-run-7"
    assert parsed["List-Unsubscribe"] == (
        f"<https://app.example.com/u/{TOKEN}>, <mailto:unsubscribe@example.com?subject={TOKEN}>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["MIME-Version"] == "1.0"


def test_reply_to_is_written_when_configured() -> None:
    """DIGEST_REPLY_TO becomes a Reply-To header (IDN domains in ASCII); none without it;
    an address that is not one, or that would carry a line break, is refused."""
    parsed = reparse(message(reply_to="Support@Bücher.example"))
    assert str(parsed["Reply-To"]) == "Support@xn--bcher-kva.example"
    assert "Reply-To" not in reparse(message())
    for bad in ("nobody", "a@b.example\r\nBcc: x@y.example"):
        with pytest.raises(HeaderError):
            message(reply_to=bad)


def test_list_unsubscribe_is_never_encoded() -> None:
    """A long List-Unsubscribe is folded after the comma, never turned into =?utf-8?...?=."""
    raw = message()
    header = raw.split(b"List-Unsubscribe:", 1)[1].split(b"List-Unsubscribe-Post", 1)[0]
    assert b"=?" not in header
    assert b"<https://app.example.com/u/" in header


def test_same_inputs_give_the_same_bytes() -> None:
    """A retried run builds a byte-identical message (no random MIME boundary)."""
    assert message() == message()
    other = message(message_id=make_message_id(8, "example.com"))
    assert other.split(b"boundary=")[1][:40] != message().split(b"boundary=")[1][:40]


def test_mailto_is_optional() -> None:
    """Without a mailto, List-Unsubscribe carries only the HTTPS URL."""
    parsed = reparse(message(list_unsubscribe_mailto=None))
    assert parsed["List-Unsubscribe"] == f"<https://app.example.com/u/{TOKEN}>"


def test_body_is_text_then_html_in_utf8() -> None:
    """multipart/alternative with the text part first (clients show the last they support)."""
    parsed = reparse(message(html="<p>" + "x" * 5000 + " ü</p>"))
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert isinstance(parts[0], EmailMessage)
    assert isinstance(parts[1], EmailMessage)
    # On the wire lines end in CRLF (policy.SMTP); the content is otherwise unchanged.
    assert parts[0].get_content() == "Hello Ana — ünïcödé\r\n"
    assert parts[1].get_content() == "<p>" + "x" * 5000 + " ü</p>\r\n"
    assert max(len(line) for line in message().splitlines()) <= 998


def test_crlf_in_name_or_subject_never_adds_a_header() -> None:
    """CR/LF in display names and the subject become spaces; no Bcc or other header appears."""
    msg = message(
        from_name="Digest\r\nBcc: from@evil.example",
        to_name="Ana\r\nBcc: to@evil.example\n\nbody",
        subject="Hello\r\nBcc: subject@evil.example\r\n\r\n<html>",
    )
    parsed = reparse(msg)
    assert parsed["Bcc"] is None
    assert "Bcc: subject@evil.example" in parsed["Subject"]
    assert "\n" not in parsed["Subject"]
    assert parsed["To"].addresses[0].addr_spec == "ana@example.com"
    names = [k for k, _ in parsed.items()]
    assert names == [k for k, _ in reparse(message()).items()]


@pytest.mark.parametrize(
    "field",
    ["message_id", "idempotency_key", "list_unsubscribe_url", "list_unsubscribe_mailto"],
)
def test_crlf_in_ids_and_urls_is_refused(field: str) -> None:
    """Identifiers and URLs with CR/LF are refused outright (they are ours, so it is a bug)."""
    base: dict[str, str] = {
        "message_id": "<a@example.com>",
        "idempotency_key": "digest-run-7",
        "list_unsubscribe_url": "https://app.example.com/u/x",
        "list_unsubscribe_mailto": "mailto:u@example.com",
    }
    with pytest.raises(HeaderError):
        message(**{field: base[field][:-1] + "\r\nBcc: x@evil.example>"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("list_unsubscribe_url", "javascript:alert(1)"),
        ("list_unsubscribe_url", "https://app.example.com/u/a>b"),
        ("list_unsubscribe_mailto", "https://app.example.com"),
        ("message_id", "no-angle-brackets@example.com"),
        ("idempotency_key", ""),
        ("to_address", "not-an-address"),
        ("from_address", "a@@example.com"),
    ],
)
def test_invalid_values_are_refused(field: str, value: str) -> None:
    """Bad URLs, ids and addresses raise HeaderError with a message naming the problem."""
    with pytest.raises(HeaderError):
        message(**{field: value})


def test_naive_date_is_refused() -> None:
    """A Date without a zone would be sent as -0000; refuse it."""
    with pytest.raises(HeaderError, match="timezone"):
        message(date=datetime(2026, 3, 3, 7, 0))


def test_date_keeps_its_offset() -> None:
    """A zoned date is written with its own offset."""
    parsed = reparse(message(date=datetime(2026, 3, 3, 9, 0, tzinfo=timezone(timedelta(hours=2)))))
    assert parsed["Date"].datetime == DATE


def test_emoji_and_rtl_names_round_trip() -> None:
    """Non-ASCII display names are RFC 2047-encoded and decode back unchanged."""
    raw = message(from_name="Digest ✉️", to_name="שרה 😀 Ana")
    assert raw.isascii()  # 7-bit clean: every relay accepts it
    parsed = reparse(raw)
    assert parsed["From"].addresses[0].display_name == "Digest ✉️"
    assert parsed["To"].addresses[0].display_name == "שרה 😀 Ana"


def test_special_characters_in_names_are_quoted() -> None:
    """Commas, quotes and angle brackets in a name cannot add or change recipients."""
    parsed = reparse(message(to_name='Evil, "x" <attacker@evil.example>'))
    addresses = parsed["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].addr_spec == "ana@example.com"
    assert addresses[0].display_name == 'Evil, "x" <attacker@evil.example>'


def test_idn_domain_round_trips() -> None:
    """An IDN domain is sent in IDNA form and decodes back to the original name."""
    parsed = reparse(message(to_address="ana@Bücher.example"))
    domain = parsed["To"].addresses[0].domain
    assert domain == "xn--bcher-kva.example"
    assert domain.encode("ascii").decode("idna") == "bücher.example"


def test_subject_is_truncated() -> None:
    """A very long subject is cut to at most 200 characters."""
    parsed = reparse(message(subject="word " * 500))
    assert len(parsed["Subject"]) <= 200
    assert parsed["Subject"].endswith("…")


def test_from_may_use_a_dotless_domain_but_to_may_not() -> None:
    """digest@localhost works as a sender in demos; recipients need a real domain."""
    assert reparse(message(from_address="digest@localhost"))["From"] == "Digest <digest@localhost>"
    with pytest.raises(HeaderError):
        message(to_address="ana@localhost")


def test_message_id_and_idempotency_key_are_deterministic() -> None:
    """The same run gives the same Message-ID and key on every attempt."""
    assert make_message_id(42, "example.com") == "<digest.run-42@example.com>"
    assert make_message_id(42, "Bücher.example") == "<digest.run-42@xn--bcher-kva.example>"
    assert idempotency_key(42) == idempotency_key(42) == "digest-run-42"
    assert idempotency_key(42) != idempotency_key(43)
    with pytest.raises(HeaderError):
        make_message_id(42, "evil.example>\r\nBcc: x")


def test_a_message_id_with_its_bucket_reads_back() -> None:
    """A run's Message-ID carries its bucket (feedback quoting it finds the delivery's
    shard); only ours, with a bucket in range, read back as (run id, bucket)."""
    assert make_message_id(42, "example.com", 4095) == "<digest.run-42.b4095@example.com>"
    assert parse_message_id(make_message_id(42, "Bücher.example", 7)) == (42, 7)
    assert parse_message_id(" digest.run-42.b7@example.com ") == (42, 7)  # SES drops <>
    for other in (
        make_message_id(42, "example.com"),  # mail sent before the bucket
        "<digest.run-42.b4096@example.com>",
        "<digest.run-x.b1@example.com>",
        "<0100018c-abc@email.amazonses.com>",
        "",
    ):
        assert parse_message_id(other) is None, other


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  Ana.Silva+tag@Example.COM ", "Ana.Silva+tag@example.com"),
        ("a@bücher.de", "a@xn--bcher-kva.de"),
        ("o'brien@sub.example.co.uk", "o'brien@sub.example.co.uk"),
        ("x@a-b.example", "x@a-b.example"),
    ],
)
def test_validate_email_accepts_and_normalises(address: str, normalised: str) -> None:
    """Plausible addresses come back trimmed with a lower-case ASCII domain."""
    assert validate_email(address) == normalised


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "plain",
        "@example.com",
        "ana@",
        "ana@@example.com",
        "ana@b@example.com",
        "ana@localhost",
        "ana@example",
        "ana@1.2.3.4",
        "ana smith@example.com",
        "ana@exa mple.com",
        "ana\r\n@example.com",
        "ana@example.com\r\nBcc: x@evil.example",
        "ana\x00@example.com",
        ".ana@example.com",
        "ana.@example.com",
        "a..na@example.com",
        "ána@example.com",
        '"quoted"@example.com',
        "ana@-example.com",
        "ana@example-.com",
        "ana@example..com",
        "ana@.example.com",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
        "ana@exa_mple.com",
        "<ana@example.com>",
        "Ana <ana@example.com>",
        "ana@example.com, bob@example.com",
    ],
)
def test_validate_email_rejects(address: str) -> None:
    """Anything that is not one plausible addr-spec raises HeaderError."""
    with pytest.raises(HeaderError):
        validate_email(address)


@given(st.text(max_size=80))
def test_validate_email_never_crashes_and_output_is_clean(address: str) -> None:
    """Any text either normalises to a clean single address or raises HeaderError."""
    try:
        result = validate_email(address)
    except HeaderError:
        return
    assert result.isascii()
    assert result.count("@") == 1
    assert not any(c.isspace() or ord(c) < 32 for c in result)
    assert validate_email(result) == result


@pytest.mark.parametrize("subject", ["Ünïcødé 🎉 " * 25, "日本語のテキスト" * 20, "a 🎉 b 🎉 c"])
def test_long_non_ascii_subjects_keep_every_space(subject: str) -> None:
    """Folded encoded-words keep their spaces: the subject parses back exactly."""
    expected = clean_text(subject, SUBJECT_LIMIT)
    parsed = reparse(message(subject=subject))
    assert parsed["Subject"] == expected
    head = message(subject=subject).split(b"\r\n\r\n")[0].decode()
    folded = head.split("\r\nSubject: ")[1].split("\r\n")
    subject_lines = [folded[0], *itertools.takewhile(lambda x: x.startswith(" "), folded[1:])]
    assert all(len(line) <= 78 for line in subject_lines)


def as_client_reads(raw: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Headers (decoded) and parts (content type, decoded text) as a mail client sees them.

    Display names are compared without spaces: the stdlib splits a long one into several
    encoded-words and its own parser then reads a space between them.
    """
    parsed = reparse(raw)
    headers = [
        (name, str(value).replace(" ", "") if name in ("From", "To") else str(value))
        for name, value in parsed.items()
    ]
    parts = [(p.get_content_type(), p.get_content()) for p in parsed.iter_parts()]
    return headers, parts


# Names, subjects and bodies drawn from what users type: plain words, quotes, commas,
# angle brackets, "=?" look-alikes, line breaks and controls, any script, long values.
_PIECES = ["Zoë", "=?", "?=", "\r\n", "\n", "\r", "=20", "\u2028", "\x00", "שרה", "😀", "e\u0301"]
_TYPED = st.sampled_from([*"a Z,\"<>@;:\\.(\t-'=", *_PIECES])
_ANY_TEXT = st.lists(_TYPED, max_size=8).map("".join) | st.lists(
    _TYPED | st.text(max_size=5), max_size=80
).map("".join)
_BODY = st.lists(_TYPED | st.text(max_size=80), max_size=120).map("".join)


# The stdlib decodes an encoded-word typed into a name, CR/LF included (an injection that
# build_message refuses to copy: tests/unit/test_hostile.py); compare other names.
_NAME = _ANY_TEXT.filter(lambda name: "=?" not in name)


@given(
    from_name=_NAME,
    to_name=st.none() | _NAME,
    subject=_ANY_TEXT,
    html=_BODY,
    text=_BODY,
    mailto=st.booleans(),
    reply_to=st.sampled_from([None, "support@example.com", "Help@Bücher.example"]),
)
# b2a_qp fills a line, then encodes its trailing space as =20: 78 characters
@example(
    from_name="",
    to_name=None,
    subject="",
    html="",
    text="a" * 75 + " \n",
    mailto=False,
    reply_to=None,
)
def test_direct_bytes_read_the_same_as_the_stdlib_message(
    from_name: str,
    to_name: str | None,
    subject: str,
    html: str,
    text: str,
    mailto: bool,
    reply_to: str | None,
) -> None:
    """`build_message` writes bytes without `EmailMessage`; a client reads them exactly as
    it reads the stdlib's message from the same inputs, lines fit (998 in headers, 76 in
    quoted-printable bodies), and all is 7-bit with CRLF line ends."""
    args: dict[str, Any] = {
        "from_name": from_name,
        "from_address": "digest@example.com",
        "to_name": to_name,
        "to_address": "ana@example.com",
        "subject": subject,
        "html": html,
        "text": text,
        "message_id": make_message_id(7, "example.com"),
        "idempotency_key": idempotency_key(7),
        "list_unsubscribe_url": f"https://app.example.com/u/{TOKEN}",
        "list_unsubscribe_mailto": f"mailto:u@example.com?subject={TOKEN}" if mailto else None,
        "date": DATE,
        "reply_to": reply_to,
    }
    raw = build_message(**args)
    assert as_client_reads(raw) == as_client_reads(build_email_message(**args).as_bytes())
    assert raw.isascii()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))  # RFC 5322 MUST
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")


@given(subject=_ANY_TEXT | st.text(min_size=1, max_size=400))
def test_every_encoded_word_stands_alone(subject: str) -> None:
    """RFC 2047: each encoded-word is at most 75 characters and decodes on its own (no
    character's bytes split between two words), and every Subject line fits in 78."""
    head = build_message(**{**DEFAULTS, "subject": subject}).split(b"\r\n\r\n")[0].decode()
    for word in re.findall(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=", head):
        assert len(word) <= 75
        charset, encoding, payload = word[2:-2].split("?")
        if encoding in "bB":
            binascii.a2b_base64(payload).decode(charset)  # raises on a split character
    lines = head.split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("Subject: "))
    folded = [lines[start], *itertools.takewhile(lambda x: x.startswith(" "), lines[start + 1 :])]
    assert all(len(line) <= 78 for line in folded)


@given(
    url_path=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", max_size=1200
    ),
    mailto=st.one_of(st.none(), st.text(alphabet="abcdefghijklmnop0123456789", max_size=200)),
)
def test_list_unsubscribe_is_folded_as_the_stdlib_folds_it(
    url_path: str, mailto: str | None
) -> None:
    """The hand-written List-Unsubscribe line is byte for byte what the stdlib writes."""
    from digest.channels.email.mime import POLICY, _header

    value = f"<https://app.example.com/u/{url_path}x>"
    if mailto is not None:
        value += f", <mailto:unsubscribe@example.com?subject={mailto}>"
    stdlib = str(POLICY.header_factory("List-Unsubscribe", value).fold(policy=POLICY))
    assert _header("List-Unsubscribe", value) == stdlib
