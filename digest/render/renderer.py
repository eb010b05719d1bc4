"""`Renderer`: one templates directory loaded, inlined and compiled once with the product's
brand, rendering digests (subject, HTML with its CSS inlined, plain text) in each
recipient's language that fit under Gmail's clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chevron

from digest.models import DigestContent, DigestRequest, RenderedDigest
from digest.render.brand import Brand
from digest.render.fit import fitted
from digest.render.locale import Locales
from digest.render.mustache import Template
from digest.render.templates import (
    HTML_TEMPLATE,
    SUBJECT_TEMPLATE,
    TEXT_TEMPLATE,
    CompiledTemplate,
    compile_html,
    inline,
    load_sources,
    tokenize,
)
from digest.render.text import clean_text
from digest.render.view import digest_context


class Renderer:
    """Renders digests from one templates directory, loaded, inlined and tokenized once."""

    def __init__(self, templates_dir: Path, *, brand: Brand | None = None):
        self.templates_dir = Path(templates_dir)
        self.brand = brand or Brand()
        self._brand = self.brand.context()
        self._sources = load_sources(self.templates_dir, self.brand.palette())
        self.locales = Locales(self.templates_dir)
        self._html = compile_html(self._sources.html)
        self._text = CompiledTemplate.compile(tokenize(self._sources.text, TEXT_TEMPLATE))
        self._subject = Template(tokenize(self._sources.subject, SUBJECT_TEMPLATE))

    def context(self, request: DigestRequest) -> dict[str, Any]:
        """The view model, with the rendered subject added (the HTML `<title>` shows it)."""
        catalog = self.locales.catalog(request.recipient.locale)
        ctx = digest_context(request, catalog, self._brand)
        subject = clean_text(self._subject.render(ctx), 998)
        ctx["subject"] = subject or f"{ctx['heading']} · {ctx['period_label']}"
        return ctx

    def render(self, request: DigestRequest) -> RenderedDigest:
        """Subject, HTML (CSS already inlined) and text of one digest.

        The bodies fit `BODY_BUDGET` as sent: when all of the request's groups would not,
        the first groups that do (at least one) are shown and the rest join "…and N more"
        (`shown_content` tells which).
        """
        return fitted(request, self.context, self._html, self._text)[1]

    def shown_content(self, request: DigestRequest) -> DigestContent:
        """The request's content as `render` shows it: its groups cut to fit `BODY_BUDGET`,
        if needed."""
        return fitted(request, self.context, self._html, self._text)[0]

    def render_naive(self, request: DigestRequest) -> RenderedDigest:
        """The reference: plain chevron on the raw template, then premailer on this one email
        (of the groups `render` shows)."""
        ctx = self.context(request._replace(content=self.shown_content(request)))
        raw_html = chevron.render(self._sources.html, ctx, partials_path=None)
        return RenderedDigest(
            subject=ctx["subject"],
            html=inline(raw_html, HTML_TEMPLATE),
            text=chevron.render(self._sources.text, ctx, partials_path=None),
        )
