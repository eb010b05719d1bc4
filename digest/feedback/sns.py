"""Amazon SNS message signatures: a message is acted on only after `verify` accepts it.

Rules (RELIABILITY.md, "SES feedback through SNS"): SignatureVersion "1" is SHA1withRSA and
"2" SHA256withRSA, anything else is refused; the signing certificate must come from an
`https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-<hex>.pem` URL (merely "on
amazonaws.com" would accept a certificate anyone can upload to S3); the topic must be on the
allow-list. Old timestamps are not refused: SNS retries reuse them.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from digest.errors import DigestError

Fetch = Callable[[str], bytes]
KeyCache = MutableMapping[str, rsa.RSAPublicKey]

HOST_PATTERN: Final = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
CERT_PATH_PATTERN: Final = re.compile(r"^/SimpleNotificationService-[a-z0-9]+\.pem$")
HASHES: Final[Mapping[str, Callable[[], hashes.HashAlgorithm]]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}
# The signed fields, in the order they are signed; `Subject` only when present.
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
SIGNED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
OPTIONAL_FIELDS: Final = frozenset({"Subject"})
MAX_CERT_BYTES = 64 * 1024  # an SNS certificate is about 2 KB
MAX_CACHED_KEYS = 64  # a handful of regions and key rotations; bounded all the same
FETCH_TIMEOUT = 10.0


class SnsError(DigestError):
    """A message refused: `reason` says which rule it broke."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"SNS message refused: {reason}")
        self.reason = reason


def is_sns_url(url: str, *, path: re.Pattern[str] | None = None) -> bool:
    """Whether `url` is https on an SNS host (and, given `path`, has a matching path)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and port in (None, 443)
        and parts.username is None
        and parts.password is None
        and HOST_PATTERN.fullmatch(parts.hostname or "") is not None
        # hostname is lower-cased by urlsplit; the netloc must not differ in more than that
        and (parts.netloc.lower() == parts.hostname or parts.netloc.lower().endswith(":443"))
        and (path is None or (path.fullmatch(parts.path) is not None and not parts.query))
    )


def canonical_string(envelope: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed for `envelope`: `Key\\nValue\\n` per signed field, in order."""
    kind = envelope.get("Type")
    if not isinstance(kind, str) or kind not in SIGNED_FIELDS:
        raise SnsError(f"unknown message Type {kind!r}")
    parts: list[str] = []
    for key in SIGNED_FIELDS[kind]:
        value = envelope.get(key)
        if value is None and key in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise SnsError(f"{key} is missing or not a string")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode("utf-8")


def verify(
    envelope: Mapping[str, Any],
    *,
    topics: Collection[str],
    fetch: Fetch,
    cache: KeyCache | None = None,
    now: datetime | None = None,
) -> None:
    """Return if `envelope` is a genuine SNS message for an allowed topic; else SnsError.

    `fetch` gets the certificate's bytes from its (already checked) URL; `cache`, when given,
    keeps the public keys by URL so a certificate is fetched once.
    """
    if not isinstance(envelope, Mapping):
        raise SnsError("not a JSON object")
    version = envelope.get("SignatureVersion")
    if not isinstance(version, str) or version not in HASHES:
        raise SnsError(f"unsupported SignatureVersion {version!r}")
    topic = envelope.get("TopicArn")
    if not isinstance(topic, str) or topic not in topics:
        raise SnsError(f"TopicArn {topic!r} is not on the allow-list")
    cert_url = envelope.get("SigningCertURL")
    if not isinstance(cert_url, str) or not is_sns_url(cert_url, path=CERT_PATH_PATTERN):
        raise SnsError(f"SigningCertURL {cert_url!r} is not an SNS certificate URL")
    signature_text = envelope.get("Signature")
    if not isinstance(signature_text, str):
        raise SnsError("Signature is missing")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise SnsError("Signature is not base64") from None
    signed = canonical_string(envelope)
    key = _public_key(cert_url, fetch, cache, now or datetime.now(UTC))
    try:
        key.verify(signature, signed, padding.PKCS1v15(), HASHES[version]())
    except InvalidSignature:
        raise SnsError("signature does not match") from None


def fetch_https(url: str) -> bytes:
    """Production fetcher: GET an SNS URL over https, no redirects, bounded size."""
    if not is_sns_url(url):
        raise SnsError(f"refusing to fetch {url!r}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT) as response:
            data: bytes = response.read(MAX_CERT_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise SnsError(f"could not fetch {url}: {exc}") from None
    if len(data) > MAX_CERT_BYTES:
        raise SnsError(f"{url} answered more than {MAX_CERT_BYTES} bytes")
    return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead off the SNS host to a certificate anyone can publish.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _public_key(url: str, fetch: Fetch, cache: KeyCache | None, now: datetime) -> rsa.RSAPublicKey:
    if cache is not None and (cached := cache.get(url)) is not None:
        return cached
    try:
        pem = fetch(url)
    except SnsError:
        raise
    except Exception as exc:  # any fetch failure is a refusal, never a 500
        raise SnsError(f"could not fetch the signing certificate: {exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise SnsError("the signing certificate is not a PEM certificate") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SnsError("the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsError("the signing certificate's key is not RSA")
    if cache is not None:
        if len(cache) >= MAX_CACHED_KEYS:
            cache.clear()
        cache[url] = key
    return key
