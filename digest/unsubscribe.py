"""Signed one-click unsubscribe tokens (RFC 8058), of a fixed length whatever the user id.

A token is 44 base64url characters (no padding) of 33 bytes:

    format (1 byte, 2) | bucket (2) | recipient id (6, `recipients.id`)
    | subscription version (4) | issue day (4, days since 1970-01-01 UTC) | MAC (16)

The MAC is HMAC-SHA256 under the secret key over a domain separator, the purpose and the 17
bytes before it, cut to 128 bits. The user id is not in the token (ids up to 1,000
characters made links too long for a header line); the recipient id is a surrogate that
means nothing outside this database. The version binds a token to the subscription it was
issued for: `recipients.subscription_version` grows when the user subscribes again, so an
old link cannot undo that newer choice. The issue day is the day of the email's `Date`, so
a retry sends the same link, and a token stops working MAX_AGE_DAYS after it. The bucket
(`digest.buckets`) sends the lookup to the one shard that holds the recipient; the id
takes 6 bytes (281 trillion recipients) so that the token keeps its length.

Older tokens still verify. Format 1 (mail sent before the bucket: the same fields with an
8-byte id and no bucket) for their MAX_AGE_DAYS; the recipient is then found shard by
shard. Legacy tokens, `base64url(user_id) + "." + base64url(full MAC)` from mail sent
before format 1: as version 0, with no issue day.

Verification never raises on a bad token: forged, truncated, re-encoded and garbage tokens
all give None, and the web layer answers them like an unknown token. MACs are compared in
constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from digest.buckets import BUCKETS

DEFAULT_PURPOSE = "digest"
FORMAT = 2
FORMAT_1 = 1  # no bucket: mail sent before migration 0007
TOKEN_LENGTH = 44  # base64url of 33 bytes
# A link works for this many days after its email's date (CAN-SPAM asks for 30).
MAX_AGE_DAYS = 90
# The longest legacy token: a 1,000-character user id (the import's limit) of 4-byte UTF-8
# characters. Anything longer is refused before any decoding or hashing.
MAX_TOKEN_LENGTH = 4 * -(-4 * 1000 // 3) + 1 + 43

_EPOCH = date(1970, 1, 1)
_MAC_BYTES = 16
_PAYLOAD_BYTES = 17
_MAX_ID, _MAX_VERSION, _MAX_DAY = 2**63 - 1, 2**31 - 1, 2**32 - 1
_MAX_ID_2 = 2**48 - 1  # format 2's 6-byte id
# Keep these MACs apart from any other use of the key, and the two formats from each other.
_DOMAIN = b"digest-unsubscribe-v2\x00"
_LEGACY_DOMAIN = b"digest-unsubscribe-v1\x00"


@dataclass(frozen=True, slots=True)
class Token:
    """What an authentic token says: the recipient (by id, or by user id for a legacy
    token), the subscription version it was issued for, its day (None: legacy), and the
    recipient's bucket (None: format 1 and legacy tokens)."""

    recipient_id: int | None
    user_id: str | None
    subscription_version: int
    issued: date | None
    bucket: int | None = None

    def expired(self, today: date) -> bool:
        """Whether the token is more than MAX_AGE_DAYS old on `today` (legacy: never)."""
        return self.issued is not None and (today - self.issued).days > MAX_AGE_DAYS


def make_token(
    secret: str,
    bucket: int,
    recipient_id: int,
    subscription_version: int,
    issued: date | datetime,
    purpose: str = DEFAULT_PURPOSE,
) -> str:
    """The token of recipient `recipient_id` (in `bucket`) at `subscription_version`,
    issued on `issued` (a date, or an aware datetime: its UTC day)."""
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"bucket out of range: {bucket}")
    if not 0 < recipient_id <= _MAX_ID_2:
        raise ValueError(f"recipient id out of range: {recipient_id}")
    return _signed(
        secret,
        FORMAT.to_bytes(1, "big") + bucket.to_bytes(2, "big") + recipient_id.to_bytes(6, "big"),
        subscription_version,
        issued,
        purpose,
    )


def make_token_v1(
    secret: str,
    recipient_id: int,
    subscription_version: int,
    issued: date | datetime,
    purpose: str = DEFAULT_PURPOSE,
) -> str:
    """A token as mail sent before the bucket carries it (format 1: tests and tools)."""
    if not 0 < recipient_id <= _MAX_ID:
        raise ValueError(f"recipient id out of range: {recipient_id}")
    head = FORMAT_1.to_bytes(1, "big") + recipient_id.to_bytes(8, "big")
    return _signed(secret, head, subscription_version, issued, purpose)


def _signed(
    secret: str, head: bytes, subscription_version: int, issued: date | datetime, purpose: str
) -> str:
    """`head`, the version and the day, and their MAC, as a token."""
    day = _day_number(issued)
    if not 0 <= subscription_version <= _MAX_VERSION:
        raise ValueError(f"subscription version out of range: {subscription_version}")
    payload = head + subscription_version.to_bytes(4, "big") + day.to_bytes(4, "big")
    return _b64encode(payload + _mac(secret, _DOMAIN, payload, purpose)[:_MAC_BYTES])


def make_legacy_token(secret: str, user_id: str, purpose: str = DEFAULT_PURPOSE) -> str:
    """A token as mail sent before format 1 carries it (tests and tools; nothing sends it)."""
    if not user_id:
        raise ValueError("user_id must not be empty")
    user = user_id.encode("utf-8")
    return f"{_b64encode(user)}.{_b64encode(_mac(secret, _LEGACY_DOMAIN, user, purpose))}"


def verify_token(secret: str, token: str, purpose: str = DEFAULT_PURPOSE) -> Token | None:
    """What a valid token says, or None for anything else (never raises on the token)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    if "." in token:
        return _verify_legacy(secret, token, purpose)
    if len(token) != TOKEN_LENGTH:
        return None
    raw = _b64decode(token)
    if raw is None or raw[0] not in (FORMAT, FORMAT_1):
        return None
    payload, mac = raw[:_PAYLOAD_BYTES], raw[_PAYLOAD_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, _DOMAIN, payload, purpose)[:_MAC_BYTES]):
        return None
    bucket: int | None = None
    if raw[0] == FORMAT:
        bucket = int.from_bytes(payload[1:3], "big")
        recipient_id = int.from_bytes(payload[3:9], "big")
    else:
        recipient_id = int.from_bytes(payload[1:9], "big")
    version = int.from_bytes(payload[9:13], "big")
    day = int.from_bytes(payload[13:17], "big")
    if not (0 < recipient_id <= _MAX_ID and version <= _MAX_VERSION):
        return None  # unreachable for tokens we made; a valid MAC implies our fields
    if bucket is not None and bucket >= BUCKETS:
        return None  # as above
    try:
        issued = _EPOCH + timedelta(days=day)
    except OverflowError:  # as above: past year 9999
        return None
    return Token(recipient_id, None, version, issued, bucket)


def unsubscribe_url(
    base_url: str,
    secret: str,
    bucket: int,
    recipient_id: int,
    subscription_version: int,
    issued: date | datetime,
) -> str:
    """The one-click unsubscribe URL: `{base_url}/u/{token}`."""
    token = make_token(secret, bucket, recipient_id, subscription_version, issued)
    return f"{base_url.rstrip('/')}/u/{token}"


def _verify_legacy(secret: str, token: str, purpose: str) -> Token | None:
    if token.count(".") != 1:
        return None
    encoded_user, encoded_mac = token.split(".")
    user_bytes, mac = _b64decode(encoded_user), _b64decode(encoded_mac)
    if user_bytes is None or mac is None or not user_bytes:
        return None
    if not hmac.compare_digest(mac, _mac(secret, _LEGACY_DOMAIN, user_bytes, purpose)):
        return None
    try:
        return Token(None, user_bytes.decode("utf-8"), 0, None)
    except UnicodeDecodeError:  # unreachable for tokens we made; a valid MAC implies our bytes
        return None


def _day_number(issued: date | datetime) -> int:
    if isinstance(issued, datetime):
        if issued.tzinfo is None or issued.utcoffset() is None:
            raise ValueError("the issue time must be timezone-aware")
        issued = issued.astimezone(UTC).date()
    day = (issued - _EPOCH).days
    if not 0 <= day <= _MAX_DAY:
        raise ValueError(f"issue day out of range: {issued}")
    return day


def _mac(secret: str, domain: bytes, message: bytes, purpose: str) -> bytes:
    """HMAC-SHA256 over domain, purpose and message, unambiguous because purpose has no NUL."""
    if not secret:
        raise ValueError("the unsubscribe secret key must not be empty")
    if "\x00" in purpose:
        raise ValueError("purpose must not contain NUL")
    data = domain + purpose.encode("utf-8") + b"\x00" + message
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict inverse of `_b64encode`: None for any other spelling of the same bytes."""
    try:
        raw = text.encode("ascii")
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    # Non-zero trailing bits decode to the same bytes; only the canonical spelling is valid.
    return data if _b64encode(data) == text else None
