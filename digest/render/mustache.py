"""Mustache rendering with chevron's output, byte for byte, compiled once per template.

chevron 0.14 renders a token stream: on every render it re-scans each list section for its
end tag, and each key lookup probes every scope through raised exceptions. `Template`
compiles chevron's tokens once into a tree and renders that, looking keys up in plain dicts
directly. It mirrors `chevron.render(tokens, data, partials_path=None)`, quirks included:

- A key is looked up from the innermost scope out. Each dotted step tries `scope[child]`,
  then `getattr(scope, child)`, then `scope[int(child)]`, so `{{title}}` in a string's
  section is `str.title` and `{{real}}` in a boolean's section is 1. A dotted key that
  breaks off in one scope is tried again whole in the next one.
- A found value comes back as it is when it equals 0 or False; any other falsy value
  (None, "", [], {}) comes back as "". Non-strings print as `str(value)`.
- `{{.}}` is the innermost scope; escaped, a True there (inside an inverted section) prints
  the scope under it instead. HTML escaping covers `& " < >` only, not `'`.
- A section loops over a non-string sequence, pushing each item, and pushes any other value
  as one scope; a falsy item or value renders nothing (so `{{#list}}` skips items such as
  0, "" and {}). An inverted section pushes True when its value is falsy. Data that is
  falsy itself renders nothing when outer scopes are given.
- Partials render as "" (chevron's result without a partials path or dictionary);
  comments and delimiter changes render nothing (the tokenizer already applied them).

Whatever the tree cannot render exactly makes that whole render go to chevron itself:
lambdas (callable section values), iterators that are not sequences (chevron consumes
them), `str` subclasses in the output (chevron's `+=` would call their `__radd__`), and list
sections whose end chevron's scan misplaces (a nested inverted section of the same name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import chevron

Token = tuple[str, str]  # chevron's (tag type, key or literal text)

_MISSING: Any = object()  # "not in this scope": chevron goes on to the next one
# bool, int, float and None: chevron's probes of these scopes depend on the type alone.
_SCALAR_SAMPLES = (False, 0, 0.0, None)
_SCALARS = frozenset(type(sample) for sample in _SCALAR_SAMPLES)
# What chevron's `_get_key` returns for a found value of these types, known without its
# probing (they have no `_CHEVRON_return_scope_when_falsy`): the value itself (0, 0.0 and
# False included), or `value or ""`.
_AS_IS = frozenset({str, int, float, bool})
_OR_EMPTY = frozenset({type(None), list, tuple, dict})
# Section values chevron pushes as one scope: neither callable nor a non-string sequence.
_PUSHED = frozenset({str, int, float, bool, type(None), dict})


class _FallbackError(Exception):
    """This render needs chevron itself."""


class Template:
    """A chevron token list compiled once; `render` gives chevron's output for it."""

    def __init__(self, tokens: Iterable[Token]):
        self.tokens = list(tokens)
        self._nodes = _compile(self.tokens)

    def render(self, data: Any, *parents: Any) -> str:
        """The template rendered with `data` as the innermost scope, then `parents`: what
        `chevron.render(tokens, scopes=[data, *parents], partials_path=None)` returns."""
        scopes = [data, *parents]
        if parents and self._nodes and not data:
            return ""
        out: list[str] = []
        try:
            _render(self._nodes, scopes, out)
        except _FallbackError:
            return str(chevron.render(self.tokens, scopes=scopes, partials_path=None))
        return "".join(out)

    def split(self, loop: str) -> tuple[Template, Template, Template] | None:
        """The template cut around its first top-level `{{#loop}}` section: what comes before,
        the section's body and what comes after; None when there is no such section.

        When `data[loop]` is a list (and `data` holds no lambdas, which chevron lets consume
        tokens past their section), `render(data)` is `before.render(data)`, then
        `body.render(item, data)` for each item, then `after.render(data)`.
        """
        depth = 0
        for start, token in enumerate(self.tokens):
            if depth == 0 and token == ("section", loop):
                end = _matching_end(self.tokens, start)
                if _scan_end(self.tokens, start) != end:
                    return None  # chevron would loop over other tokens than the body
                before, body = self.tokens[:start], self.tokens[start + 1 : end]
                return Template(before), Template(body), Template(self.tokens[end + 1 :])
            if token[0] in ("section", "inverted section"):
                depth += 1
            elif token[0] == "end":
                depth -= 1
        return None


class _Key:
    """A tag's key, looked up as chevron's `_get_key` does."""

    __slots__ = ("name", "parts", "simple", "skipped")

    def __init__(self, name: str):
        self.name = name
        self.parts = tuple(name.split("."))
        self.simple = len(self.parts) == 1
        # Scope types looked past without probing: bool, int, float and None when chevron's
        # probes of them for the first part all fail quietly (for any name that is neither
        # an attribute of those types nor an integer). Their attributes are fixed, so
        # deciding once per name is exact.
        skips_scalars = not _is_int(self.parts[0]) and not any(
            hasattr(sample, self.parts[0]) for sample in _SCALAR_SAMPLES
        )
        self.skipped = _SCALARS if skips_scalars else frozenset()

    def lookup(self, scopes: list[Any]) -> Any:
        """The key's value in the innermost scope that has it, else ""."""
        name, simple, skipped = self.name, self.simple, self.skipped
        for scope in scopes:
            kind = type(scope)
            if kind is dict and simple:
                value = scope.get(name, _MISSING)
            elif kind in skipped:
                continue
            else:
                value = _descend(scope, self.parts)
            if value is _MISSING:
                continue
            kind = type(value)
            if kind in _AS_IS:
                return value
            if kind in _OR_EMPTY:
                return value or ""
            value = _found(value)
            if value is not _MISSING:
                return value
        return ""


class _Dot(_Key):
    """The key `.`: the innermost scope, as it is."""

    __slots__ = ()

    def lookup(self, scopes: list[Any]) -> Any:
        """The innermost scope."""
        return scopes[0]


class _Variable:
    """`{{key}}` (escaped) or `{{{key}}}` / `{{& key}}`."""

    __slots__ = ("escape", "key")

    def __init__(self, key: _Key, *, escape: bool):
        self.key = key
        self.escape = escape

    def render(self, scopes: list[Any], out: list[str]) -> None:
        """Append the key's value, as text, escaped if asked."""
        value = self.key.lookup(scopes)
        if type(value) is not str:
            if value is True and self.escape and type(self.key) is _Dot:
                value = scopes[1]  # chevron undoes an inverted section's pushed True
            value = _text(value)
        if self.escape:  # chevron's `_html_escape`: `&` first, then `"`, `<` and `>`
            value = value.replace("&", "&amp;").replace('"', "&quot;")
            value = value.replace("<", "&lt;").replace(">", "&gt;")
        out.append(value)


class _Section:
    """`{{#key}}…{{/key}}` or `{{^key}}…{{/key}}`."""

    __slots__ = ("children", "inverted", "key", "scan_ok")

    def __init__(self, key: _Key, children: tuple[_Part, ...], *, inverted: bool, scan_ok: bool):
        self.key = key
        self.children = children
        self.inverted = inverted
        self.scan_ok = scan_ok  # chevron's search for this section's end tag finds it

    def render(self, scopes: list[Any], out: list[str]) -> None:
        """Append the body rendered for the key's value, as chevron does."""
        value = self.key.lookup(scopes)
        if self.inverted:
            if not value:
                _render(self.children, [True, *scopes], out)
            return
        kind = type(value)
        if kind is list or kind is tuple:
            looped = True
        elif kind in _PUSHED:
            looped = False
        elif isinstance(value, Callable):  # type: ignore[arg-type]
            raise _FallbackError  # a lambda: chevron calls it with the section's source text
        elif isinstance(value, Sequence | Iterator) and not isinstance(value, str):
            if not isinstance(value, Sequence):
                raise _FallbackError  # chevron consumes an iterator; leave it untouched for it
            looped = True
        else:
            looped = False
        if not looped:
            # chevron skips every tag under a falsy scope (its `not scopes[0]` test runs
            # only when there are tags).
            if self.children and value:
                _render(self.children, [value, *scopes], out)
            return
        if not self.scan_ok:
            raise _FallbackError
        if self.children:
            for item in value:
                if item:
                    _render(self.children, [item, *scopes], out)


_Part = str | _Variable | _Section  # a literal or a tag


def _render(nodes: tuple[_Part, ...], scopes: list[Any], out: list[str]) -> None:
    for node in nodes:
        if type(node) is str:
            out.append(node)
        else:
            node.render(scopes, out)  # type: ignore[union-attr]


def _descend(scope: Any, parts: tuple[str, ...]) -> Any:
    """chevron's walk of a dotted key into one scope; _MISSING where it tries the next."""
    for child in parts:
        if type(scope) is dict:
            scope = scope.get(child, _MISSING)
            if scope is _MISSING:
                return _MISSING
            continue
        try:
            try:
                scope = scope[child]
            except (TypeError, AttributeError):
                try:
                    scope = getattr(scope, child)
                except (TypeError, AttributeError):
                    scope = scope[int(child)]  # a TypeError here escapes, as in chevron
        except (AttributeError, KeyError, IndexError, ValueError):
            return _MISSING
    return scope


def _found(value: Any) -> Any:
    """What chevron's `_get_key` returns for a found value; _MISSING where it goes on to
    the next scope (when the value's own falsy marker is false, or a comparison raises)."""
    try:
        if value in (0, False):
            return value
        try:
            if value._CHEVRON_return_scope_when_falsy:
                return value
        except AttributeError:
            return value or ""
    except (AttributeError, KeyError, IndexError, ValueError):
        pass
    return _MISSING


def _text(value: Any) -> str:
    """`value` as chevron prints it."""
    if not isinstance(value, str):
        value = str(value)
    if type(value) is not str:
        raise _FallbackError  # a str subclass: chevron's `output += value` may call its __radd__
    return value


def _is_int(text: str) -> bool:
    """Whether `int(text)` parses (chevron's last probe would then index the scope)."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def _compile(tokens: list[Token]) -> tuple[_Part, ...]:
    """The tree of chevron's tokens: literals merged, sections holding their bodies."""
    nodes: list[_Part] = []
    open_sections: list[tuple[list[_Part], int]] = []  # (enclosing nodes, index of the tag)
    for index, (tag, key) in enumerate(tokens):
        if tag == "literal":
            last = nodes[-1] if nodes else None
            if type(last) is str:  # after a comment or a delimiter change
                nodes[-1] = last + key
            else:
                nodes.append(key)
        elif tag in ("variable", "no escape"):
            nodes.append(_Variable(_key(key), escape=tag == "variable"))
        elif tag in ("section", "inverted section"):
            open_sections.append((nodes, index))
            nodes = []
        elif tag == "end":
            if not open_sections or tokens[open_sections[-1][1]][1] != key:
                raise ValueError(f"unbalanced end tag {key!r}")
            enclosing, start = open_sections.pop()
            enclosing.append(
                _Section(
                    _key(key),
                    tuple(nodes),
                    inverted=tokens[start][0] == "inverted section",
                    scan_ok=_scan_end(tokens, start) == index,
                )
            )
            nodes = enclosing
        # Anything else renders nothing in chevron here: comments and delimiter changes
        # (and the tokenizer's "no escape?" for an unclosed `{{{`) are skipped, and a
        # partial without a partials path or dictionary is "".
    if open_sections:
        raise ValueError(f"unclosed section {tokens[open_sections[-1][1]][1]!r}")
    return tuple(nodes)


def _key(name: str) -> _Key:
    return _Dot(name) if name == "." else _Key(name)


def _matching_end(tokens: list[Token], start: int) -> int:
    """Index of the end tag that closes the section opened at `start` (tokens are balanced)."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index][0] in ("section", "inverted section"):
            depth += 1
        elif tokens[index][0] == "end":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unclosed section {tokens[start][1]!r}")


def _scan_end(tokens: list[Token], start: int) -> int | None:
    """Where chevron's list loop thinks the section opened at `start` ends: it counts only
    `{{#key}}` tags of the same name, not `{{^key}}` ones."""
    key, depth = tokens[start][1], 0
    for index in range(start + 1, len(tokens)):
        if tokens[index] == ("section", key):
            depth += 1
        elif tokens[index] == ("end", key):
            depth -= 1
            if depth < 0:
                return index
    return None
