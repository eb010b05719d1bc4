"""Signed one-click unsubscribe tokens (RFC 8058): HMAC-SHA256 over user id and purpose.

A token is `base64url(user_id) + "." + base64url(mac)` without padding, so it is safe in
a URL path and in a `mailto:` subject. The MAC covers the purpose too, so a token made for
one list cannot unsubscribe its holder from another. Verification never raises on a bad
token: forged, truncated, re-encoded and garbage tokens all give None, and the web layer
answers them like an unknown token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

DEFAULT_PURPOSE = "digest"
MAX_TOKEN_LENGTH = 1024  # far above any real token; bounds the work on garbage
_DOMAIN = b"digest-unsubscribe-v1\x00"  # keeps these MACs apart from any other use of the key


def make_token(secret: str, user_id: str, purpose: str = DEFAULT_PURPOSE) -> str:
    """The unsubscribe token of `user_id` for `purpose`."""
    if not user_id:
        raise ValueError("user_id must not be empty")
    mac = _mac(secret, user_id.encode("utf-8"), purpose)
    return f"{_b64encode(user_id.encode('utf-8'))}.{_b64encode(mac)}"


def verify_token(secret: str, token: str, purpose: str = DEFAULT_PURPOSE) -> str | None:
    """The user id a valid token names, or None for anything else (never raises on the token)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    encoded_user, encoded_mac = token.split(".")
    user_bytes, mac = _b64decode(encoded_user), _b64decode(encoded_mac)
    if user_bytes is None or mac is None or not user_bytes:
        return None
    expected = _mac(secret, user_bytes, purpose)
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        return user_bytes.decode("utf-8")
    except UnicodeDecodeError:  # unreachable for tokens we made; a valid MAC implies our bytes
        return None


def unsubscribe_url(base_url: str, secret: str, user_id: str) -> str:
    """The one-click unsubscribe URL of `user_id`: `{base_url}/u/{token}`."""
    return f"{base_url.rstrip('/')}/u/{make_token(secret, user_id)}"


def _mac(secret: str, user_id: bytes, purpose: str) -> bytes:
    """HMAC-SHA256 over purpose and user id, unambiguous because purpose has no NUL."""
    if not secret:
        raise ValueError("the unsubscribe secret key must not be empty")
    if "\x00" in purpose:
        raise ValueError("purpose must not contain NUL")
    message = _DOMAIN + purpose.encode("utf-8") + b"\x00" + user_id
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


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
