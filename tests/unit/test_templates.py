"""The template files keep the rules that make escaping safe and pre-inlining exact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
HTML_TEMPLATES = sorted(TEMPLATES.rglob("*.html.mustache"))
ALL_TEMPLATES = sorted(TEMPLATES.rglob("*.mustache"))
CATEGORIES = ("comment", "like", "mention", "follow", "generic")
START_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
ATTRIBUTE = re.compile(r"\s+([a-zA-Z-]+)(\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?")


def test_templates_exist() -> None:
    """The main templates, the CSS and an HTML and text partial per category are present."""
    for name in ("digest.html.mustache", "digest.txt.mustache", "subject.mustache", "digest.css"):
        assert (TEMPLATES / name).is_file(), name
    for category in CATEGORIES:
        for kind in ("html", "txt"):
            assert (TEMPLATES / "partials" / f"{category}.{kind}.mustache").is_file()


@pytest.mark.parametrize("path", HTML_TEMPLATES, ids=lambda p: p.name)
def test_html_templates_never_print_unescaped(path: Path) -> None:
    """No triple-stache or {{& }} in HTML: user data is always HTML-escaped."""
    source = path.read_text(encoding="utf-8")
    assert "{{{" not in source
    assert not re.search(r"\{\{\s*&", source)


@pytest.mark.parametrize("path", HTML_TEMPLATES, ids=lambda p: p.name)
def test_html_attributes_are_double_quoted(path: Path) -> None:
    """Every attribute value is in double quotes (chevron does not escape single quotes)."""
    source = path.read_text(encoding="utf-8")
    for match in START_TAG.finditer(source):
        for attribute in ATTRIBUTE.finditer(match.group(2)):
            name, value = attribute.group(1), attribute.group(3)
            assert value is None or value.startswith('"'), f"{match.group(0)}: {name}"


@pytest.mark.parametrize("path", HTML_TEMPLATES, ids=lambda p: p.name)
def test_no_mustache_in_style_or_class_attributes(path: Path) -> None:
    """Styles and class names are static, so inlining the template equals inlining the email."""
    source = path.read_text(encoding="utf-8")
    for match in START_TAG.finditer(source):
        for attribute in ATTRIBUTE.finditer(match.group(2)):
            if attribute.group(1).lower() in ("style", "class"):
                assert "{{" not in (attribute.group(3) or ""), match.group(0)


@pytest.mark.parametrize("path", HTML_TEMPLATES, ids=lambda p: p.name)
def test_mustache_in_attributes_only_for_links(path: Path) -> None:
    """Only href and src take a Mustache value (URLs the view model validated), besides the
    logo's alt text and the document's lang (escaped, double-quoted text)."""
    source = path.read_text(encoding="utf-8")
    for match in START_TAG.finditer(source):
        for attribute in ATTRIBUTE.finditer(match.group(2)):
            if "{{" in (attribute.group(3) or ""):
                assert attribute.group(1).lower() in ("href", "src", "alt", "lang"), match.group(0)


@pytest.mark.parametrize("path", HTML_TEMPLATES, ids=lambda p: p.name)
def test_sections_are_not_placed_between_table_rows(path: Path) -> None:
    """Section tags never sit directly inside <table> or <tr>, where HTML parsers move text."""
    source = path.read_text(encoding="utf-8")
    stack: list[str] = []
    for token in re.finditer(r"</?([a-zA-Z][a-zA-Z0-9]*)[^>]*>|\{\{[#^/][^}]*\}\}", source):
        text = token.group(0)
        if text.startswith("{{"):
            assert not stack or stack[-1] not in ("table", "tr", "tbody"), (
                f"{text} in <{stack[-1]}>"
            )
        elif text.startswith("</"):
            if stack and stack[-1] == token.group(1).lower():
                stack.pop()
        elif token.group(1).lower() not in ("meta", "br", "img", "hr", "link", "input"):
            stack.append(token.group(1).lower())


def test_css_has_no_structure_dependent_selectors() -> None:
    """No sibling or child-position selectors: they would match differently once rendered."""
    css = (TEMPLATES / "digest.css").read_text(encoding="utf-8")
    selectors = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    selectors = re.sub(r"\{[^{}]*\}", "", selectors)  # drop declaration blocks
    assert not re.search(r"[+~]|:nth-|:first-|:last-|:only-", selectors)
    assert "{{" not in css


@pytest.mark.parametrize("path", ALL_TEMPLATES, ids=lambda p: p.name)
def test_partial_tags_stand_alone(path: Path) -> None:
    """Partials are included by whole lines, so a partial tag must be alone on its line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if "{{>" in line:
            assert re.fullmatch(r"\s*\{\{>\s*[\w-]+\s*\}\}\s*", line), line
