"""Templates: read once, partials and CSS included, CSS inlined by premailer into the HTML
template once, tokenized by chevron once and compiled by `digest.render.mustache`.

Layout (under `templates_dir`):

- `digest.html.mustache`, `digest.txt.mustache`, `subject.mustache`;
- `digest.css`, pasted over the `/* digest.css */` marker in the HTML template's `<style>`,
  with the brand's colours written over its `var(--accent…)` names (`digest.render.brand`);
- `locales/LANG.toml`, the words of each language (`digest.render.locale`);
- `partials/NAME.html.mustache` and `partials/NAME.txt.mustache` for `{{> NAME}}`, looked
  up by the extension of the template that includes them (one per category: comment,
  like, mention, follow, and generic for any other category).

Partials are included textually when the templates load (like `#include`): a `{{> NAME}}`
tag must stand alone on its line, and that line is replaced by the partial's lines
(indented like the tag). The whole HTML template, partials included, is then inlined by
premailer once and tokenized by chevron once, so no render re-tokenizes anything
(chevron's own partial loading would re-tokenize every partial for every item). The
compiled templates render chevron's output byte for byte (`Renderer.render_naive` keeps
plain chevron as the reference).

Pre-inlining gives the same HTML as inlining every rendered email (`render_naive`, which
the tests compare) only when templates keep three rules: no Mustache inside `style`
attributes, no Mustache-computed class names (write variants under `{{#flag}}`), and no
CSS that depends on rendered structure (no sibling or `:nth-child` selectors). HTML
templates never use `{{{ }}}` or `{{& }}`, every attribute is double-quoted, Mustache
appears in attributes only as a validated `href`, and section tags sit inside `<td>`
content (never between `<tr>` rows), where any HTML parser leaves them in place; loading
fails if premailer moved a tag. Sections only test booleans or lists of dicts: a string
as a section scope would let `{{title}}` resolve to `str.title` in chevron.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chevron.tokenizer import ChevronError
from chevron.tokenizer import tokenize as chevron_tokenize

from digest.errors import DigestError
from digest.render.mustache import Template, Token

CSS_MARKER = "/* digest.css */"

HTML_TEMPLATE = "digest.html.mustache"
TEXT_TEMPLATE = "digest.txt.mustache"
SUBJECT_TEMPLATE = "subject.mustache"
CSS_FILE = "digest.css"

GROUPS_LOOP = "groups"  # the section `Renderer` sizes item by item
_PARTIAL_LINE = re.compile(r"^([ \t]*)\{\{>\s*([A-Za-z0-9_-]+)\s*\}\}[ \t]*(?:\r?\n|\Z)", re.M)
_STYLE_OR_CLASS_WITH_MUSTACHE = re.compile(r"""\b(?:style|class)\s*=\s*["'][^"']*\{\{""")

# premailer settings shared by load-time and per-email inlining, so both give the same bytes.
# strip_important=False keeps `!important` on @media rules (they must beat inline styles);
# width/height attributes are written by hand (Outlook reads them), never derived from CSS.
_PREMAILER_OPTIONS: dict[str, Any] = {
    "keep_style_tags": False,
    "strip_important": False,
    "remove_classes": False,
    "allow_network": False,
    "disable_validation": True,
    "disable_basic_attributes": ["width", "height"],
}


@dataclass(frozen=True)
class Sources:
    """Template sources with partials and CSS included, before any inlining."""

    html: str
    text: str
    subject: str


@dataclass(frozen=True)
class CompiledTemplate:
    """A template compiled once (`digest.render.mustache`), also cut around its top-level
    `{{#groups}}` loop so `Renderer` can size a digest item by item."""

    template: Template
    split: tuple[Template, Template, Template] | None  # before the loop, its body, after it

    @classmethod
    def compile(cls, tokens: list[Token]) -> CompiledTemplate:
        """Compile `tokens`, cut around their first top-level `{{#groups}}`, if any."""
        template = Template(tokens)
        return cls(template, template.split(GROUPS_LOOP))

    def render(self, ctx: dict[str, Any]) -> str:
        """The template rendered against `ctx`."""
        return self.template.render(ctx)

    def parts(self, ctx: dict[str, Any]) -> tuple[str, list[str], str] | None:
        """The rendering split into what comes before the loop, each item, and the rest;
        None when the template has no such loop or `ctx` has no list for it."""
        items = ctx.get(GROUPS_LOOP)
        if self.split is None or not isinstance(items, list):
            return None
        before, body, _ = self.split
        return before.render(ctx), [body.render(item, ctx) for item in items], self.tail_of(ctx)

    def tail_of(self, ctx: dict[str, Any]) -> str:
        """What follows the loop, rendered against `ctx` (templates with the loop only)."""
        assert self.split is not None
        return self.split[2].render(ctx)


def _read(path: Path) -> str:
    """A template file's text, or a one-line DigestError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DigestError(f"template not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DigestError(f"cannot read template {path}: {exc}") from None


def load_sources(root: Path, palette: Mapping[str, str] | None = None) -> Sources:
    """Read every template, check each alone, and include partials and CSS (with the
    `palette`'s colours written over their CSS variable names)."""
    html = _include_partials(root, HTML_TEMPLATE, "html")
    css = _read(root / CSS_FILE)
    if "{{" in css or "</" in css:
        raise DigestError(f"{root / CSS_FILE}: CSS must not contain '{{{{' or '</'")
    for name, color in (palette or {}).items():
        css = css.replace(name, color)
    if html.count(CSS_MARKER) != 1:
        raise DigestError(f"{root / HTML_TEMPLATE}: needs exactly one {CSS_MARKER} marker")
    html = html.replace(CSS_MARKER, css.strip())
    if "{{{" in html or "{{&" in html:
        raise DigestError(f"{root / HTML_TEMPLATE}: HTML templates must not use {{{{{{ or {{{{&")
    if _STYLE_OR_CLASS_WITH_MUSTACHE.search(html):
        raise DigestError(
            f"{root / HTML_TEMPLATE}: no Mustache inside style or class attributes"
            " (write variants under {{#flag}})"
        )
    return Sources(
        html=html,
        text=_include_partials(root, TEXT_TEMPLATE, "txt"),
        subject=_tokenized_source(root / SUBJECT_TEMPLATE),
    )


def _include_partials(root: Path, name: str, kind: str) -> str:
    """`name` with every standalone `{{> partial}}` line replaced by `partials/partial.KIND...`."""
    path = root / name
    source = _tokenized_source(path)

    def include(match: re.Match[str]) -> str:
        indent, partial = match.group(1), match.group(2)
        text = _tokenized_source(root / "partials" / f"{partial}.{kind}.mustache")
        if "{{>" in text:
            raise DigestError(f"{root / 'partials' / partial}.{kind}.mustache: nested partials")
        if not text.endswith("\n"):
            text += "\n"
        return "".join(indent + line for line in text.splitlines(keepends=True))

    expanded = _PARTIAL_LINE.sub(include, source)
    if "{{>" in expanded:
        raise DigestError(f"{path}: a {{{{> partial}}}} tag must stand alone on its line")
    return expanded


def _tokenized_source(path: Path) -> str:
    """A template's text, after checking that it parses on its own (errors name the file)."""
    source = _read(path)
    tokenize(source, str(path))
    return source


def tokenize(source: str, name: str) -> list[Token]:
    """chevron's tokens for `source`, or a DigestError naming the template."""
    try:
        return list(chevron_tokenize(source))
    except (ChevronError, IndexError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise DigestError(f"broken template {name}: {detail}") from None


def tags(tokens: list[Token]) -> list[Token]:
    """The Mustache tags of a token list, literals left out."""
    return [t for t in tokens if t[0] != "literal"]


def inline(html: str, name: str) -> str:
    """`html` with digest.css moved into style attributes (only @media rules stay in <style>)."""
    # Imported here, where it is used: premailer (lxml, cssutils, requests) is slow to
    # import (docs/performance.md), and only loading templates and the tests need it.
    import premailer

    try:
        out = premailer.Premailer(**_PREMAILER_OPTIONS).transform(html, pretty_print=False)
    except Exception as exc:  # premailer/lxml/cssutils raise many types; report one line
        raise DigestError(f"cannot inline CSS of {name}: {exc}") from None
    # What stays in <style> (@media rules) comes out indented over many lines: one line per
    # rule is the same CSS in a third fewer bytes, in every email.
    return _STYLE_BLOCK.sub(lambda m: _compact_css(m.group(0)), str(out))


_STYLE_BLOCK = re.compile(r"(?<=<style type=\"text/css\">)[^<]*(?=</style>)")


def _compact_css(css: str) -> str:
    """`css` with its line breaks and indentation collapsed (no Mustache can be in it)."""
    css = " ".join(css.split())
    return re.sub(r"\s*([{};])\s*", r"\1", css).replace("}", "}\n")


def compile_html(source: str) -> CompiledTemplate:
    """The HTML template with digest.css inlined into it, compiled; DigestError if
    premailer moved, dropped or changed any Mustache tag."""
    tokens = tokenize(inline(source, HTML_TEMPLATE), HTML_TEMPLATE)
    if tags(tokens) != tags(tokenize(source, HTML_TEMPLATE)):
        raise DigestError(
            f"{HTML_TEMPLATE}: CSS inlining moved Mustache tags; keep section tags inside"
            " <td> content and Mustache out of attributes other than href"
        )
    return CompiledTemplate.compile(tokens)
