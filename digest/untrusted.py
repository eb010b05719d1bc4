"""JSON from outside, parsed only into values PostgreSQL stores and Python reads back.

`json.loads` alone turns hostile text into crashes or database errors: a 5,000-digit number
raises ValueError (Python's 4,300-digit limit), deep nesting RecursionError, NaN and 1e400
become floats jsonb refuses, `\\u0000` a NUL that text and jsonb refuse, `\\ud800` a lone
surrogate that cannot be encoded for the database. `loads` refuses each with a JsonError that
says which rule (and, for a string, where) before anything is stored. The SES webhook,
`digest feedback ingest` and `digest events add --payload` all read JSON through it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Any, Final

from digest.errors import ValidationError

MAX_DEPTH: Final = 64  # SES events nest 5 deep; orjson reads jsonb back up to 255
MAX_NUMBER_CHARS: Final = 100
_MAX_INT_BITS: Final = 333  # 10**100 < 2**333: an int of about 100 digits
_MAX_EXPONENT_DIGITS: Final = 3  # 1e-99999 is a float 0.0 but overflows jsonb's numeric
# A JSON string; the closing quote is optional so that a match never fails, and the scan
# stays linear, on an unterminated one.
_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}
_EXPONENT: Final = re.compile(r"[eE][+-]?0*(\d*)")
_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,40}")


class JsonError(ValidationError):
    """JSON refused; the message is the reason, for the caller to prefix with where."""


class NotJsonError(JsonError):
    """Text that is not JSON at all (or not UTF-8)."""

    def __init__(self, msg: str, lineno: int = 1, colno: int = 1) -> None:
        self.msg, self.lineno, self.colno = msg, lineno, colno
        where = f"column {colno}" if lineno == 1 else f"line {lineno}, column {colno}"
        super().__init__(f"not valid JSON: {msg} ({where})")


def loads(data: str | bytes, *, max_bytes: int) -> Any:
    """Parse `data` (bytes must be UTF-8) and `check` the value; JsonError says why not."""
    if isinstance(data, bytes):
        size = len(data)
        _check_size(size, max_bytes)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotJsonError(f"not UTF-8 (byte {exc.start + 1})") from None
    else:
        text = data
        try:
            size = len(text) if text.isascii() else len(text.encode())
        except UnicodeEncodeError:  # from a command line: undecodable bytes, surrogateescaped
            raise NotJsonError("not valid Unicode (lone surrogate)") from None
        _check_size(size, max_bytes)
    _check_nesting(text)
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise NotJsonError(exc.msg, exc.lineno, exc.colno) from None
    check(value)
    return value


def check(value: object) -> None:
    """Refuse what jsonb, text columns or json cannot take back: JsonError naming where.

    Nesting over MAX_DEPTH, NUL or lone surrogates in strings or keys, integers over about
    100 digits, NaN and infinities, and anything that is not a JSON value.
    """
    if not isinstance(value, Mapping | list | tuple):
        _check_leaf(value, None)
        return
    # Iterative, so no nesting can exhaust the stack; a path is a (parent, key) chain,
    # spelled out only for the message.
    stack: list[tuple[Any, int, _Path]] = [(value, 1, None)]
    while stack:
        container, depth, path = stack.pop()
        if type(container) is dict or (type(container) is not list and _is_mapping(container)):
            for key in container:
                if type(key) is not str:
                    raise JsonError(f"{_key_of(path)} is not a string")
                if "\x00" in key or not (key.isascii() or _encodes(key)):
                    _check_string(key, _key_of(path))
            children: Iterable[tuple[str | int, Any]] = container.items()
        else:
            children = enumerate(container)
        # Exact types first: parsed JSON holds only these, and this walk is the hot part.
        for key, child in children:
            kind = type(child)
            if kind is str:
                if "\x00" in child or not (child.isascii() or _encodes(child)):
                    _check_string(child, _where((path, key)))
            elif kind is int:
                if child.bit_length() > _MAX_INT_BITS:
                    _check_leaf(child, (path, key))
            elif kind is dict or kind is list or kind is tuple or _is_mapping(child):
                if depth >= MAX_DEPTH:
                    raise JsonError(f"nested more than {MAX_DEPTH} levels deep")
                if child:  # an empty one has nothing to check
                    stack.append((child, depth + 1, (path, key)))
            else:
                _check_leaf(child, (path, key))


def _is_mapping(value: object) -> bool:
    return isinstance(value, Mapping)


_Path = tuple["_Path", str | int] | None


def _check_leaf(item: object, path: _Path) -> None:
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, str):
        _check_string(item, _where(path))
    elif isinstance(item, int):
        if item.bit_length() > _MAX_INT_BITS:
            raise JsonError(f"{_where(path)} is a number of more than {MAX_NUMBER_CHARS} digits")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise JsonError(f"{_where(path)} is {item}, not a JSON number")
    else:
        raise JsonError(f"{_where(path)} is not a JSON value ({type(item).__name__})")


def _encodes(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        shown = f"{limit // 1024} KB" if limit % 1024 == 0 else f"{limit}-byte"
        raise JsonError(f"{size} bytes, over the {shown} limit")


def _check_nesting(text: str) -> None:
    """Refuse nesting over MAX_DEPTH before json recurses into it (RecursionError)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # cannot nest deeper than it has brackets
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH:
        raise JsonError(f"nested more than {MAX_DEPTH} levels deep")


def _check_string(value: str, where: str) -> None:
    if "\x00" in value:
        raise JsonError(f"{where} contains a NUL character (\\u0000)")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise JsonError(f"{where} is not valid Unicode (lone surrogate)") from None


def _where(path: _Path) -> str:
    """`mail.destination[0]`, for a message; the top level is "the value"."""
    steps: list[str | int] = []
    while path is not None:
        path, step = path
        steps.append(step)
    if not steps:
        return "the value"
    parts: list[str] = []
    for step in reversed(steps):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _PLAIN_KEY.fullmatch(step):
            parts.append(f".{step}" if parts else step)
        else:
            shown = step if len(step) <= 40 else step[:37] + "..."
            parts.append(f"[{json.dumps(shown)}]")
    return "".join(parts)


def _key_of(path: _Path) -> str:
    return "a key" if path is None else f"a key in {_where(path)}"


def _number(token: str) -> str:
    if len(token) > MAX_NUMBER_CHARS:
        raise JsonError(
            f"a number of {len(token)} characters is over the limit of {MAX_NUMBER_CHARS}"
        )
    return token


def _int(token: str) -> int:
    return int(_number(token))


def _float(token: str) -> float:
    exponent = _EXPONENT.search(_number(token))
    value = float(token)
    if not math.isfinite(value) or (exponent and len(exponent.group(1)) > _MAX_EXPONENT_DIGITS):
        raise JsonError(f"the number {token} is out of range")
    return value


def _constant(name: str) -> float:
    raise JsonError(f"{name} is not a JSON number")


_DECODER: Final = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant)
