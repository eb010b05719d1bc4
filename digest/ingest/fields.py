"""Field checks shared by the event and recipient imports: identifiers, unknown fields,
and how a refused value is shown in a message."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from digest.errors import ValidationError

MAX_TEXT: Final = 1000
MAX_PAYLOAD_BYTES: Final = 64 * 1024  # an event payload, serialized
# C0 and C1 controls and the Unicode line/paragraph separators: line breaks in all but name.
CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def show(value: object) -> str:
    """`repr(value)`, shortened to 60 characters for a message."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def unknown_fields(unknown: Iterable[object], known: Iterable[str]) -> str:
    """The reason for unknown fields: at most three names, each shortened, then the known."""
    names = sorted(str(k) for k in unknown)
    shown = ", ".join(show(name) for name in names[:3])
    if len(names) > 3:
        shown += f" and {len(names) - 3} more"
    return f"unknown field {shown} (known: {', '.join(known)})"


def text_field(name: str, value: object) -> str:
    """A required, non-empty identifier-like string (ints become strings), or ValidationError."""
    if type(value) is str:
        # Fast path: a plain printable ASCII id, by far the most common value.
        if (
            0 < len(value) <= MAX_TEXT
            and value.isascii()
            and value.isprintable()
            and value[0] != " "
            and value[-1] != " "
        ):
            return value
        return _checked_text(name, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise ValidationError(f"{name} is required")
    raise ValidationError(f"{name} must be a string, got {json_type(value)}")


def _checked_text(name: str, value: str) -> str:
    if not value:
        raise ValidationError(f"{name} must not be empty")
    if len(value) > MAX_TEXT:
        raise ValidationError(f"{name} is longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise ValidationError(f"{name} contains a NUL character")
    if CONTROL.search(value):
        raise ValidationError(f"{name} contains a control character: {show(value)}")
    if "\ufeff" in value:  # a BOM from a concatenated file: "\ufeff42" would never match 42
        raise ValidationError(f"{name} contains a byte order mark (U+FEFF): {show(value)}")
    # " 42" would never match recipient "42": refuse it rather than lose the event.
    if value[0].isspace() or value[-1].isspace():
        raise ValidationError(f"{name} has leading or trailing whitespace: {show(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates, from "\ud800" escapes in JSON
        raise ValidationError(f"{name} is not valid Unicode (lone surrogate)") from None
    return value


def optional_text(name: str, value: object) -> str | None:
    """Like text_field, but None (absent) is allowed."""
    return None if value is None else text_field(name, value)


def json_type(value: object) -> str:
    """What JSON would call `value`'s type: "a string", "an object", ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return "null" if value is None else type(value).__name__
