"""Endpoints digest sends secrets or content to: https anywhere, plain http only to this
machine (a developer's stand-in, a local relay). Pure: no I/O, no name lookups."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str | None) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); no name is looked up."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


def endpoint_problem(url: str) -> str | None:
    """Why `url` may not be sent to (not https, or http to another machine), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL"
    if scheme == "http" and not is_loopback(parts.hostname):
        return "plain http is only for localhost"
    return None
