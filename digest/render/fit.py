"""Fitting a digest under Gmail's clip: as many groups as fit `BODY_BUDGET` as sent.

Gmail clips a message over 102 KB ("[Message clipped]", the footer with the unsubscribe
link hidden). `fitted` shows as many of the digest's groups as fit the budget (at least
one) and counts the rest in "…and N more". Each item costs ~1.3 KB of inlined markup before
any text: 50 groups with short titles fit, ~40 with titles and excerpts at their limits,
and 50 groups of emoji at every limit would take 1 MB.

Sizes are measured as the MIME writer sends the bodies, with its own quoted-printable
function (`quoted_printable`), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from digest.channels.email.mime import quoted_printable
from digest.models import DigestContent, DigestRequest, RenderedDigest
from digest.render.templates import CompiledTemplate
from digest.render.view import with_more

# The two bodies as sent (UTF-8 quoted-printable, CRLF line ends) get 94 KiB; the headers
# (at most ~4 KB: subject, names and addresses are length-limited) get the rest of 102 KB.
BODY_BUDGET = 94 * 1024


def fitted(
    request: DigestRequest,
    context: Callable[[DigestRequest], dict[str, Any]],
    html: CompiledTemplate,
    text: CompiledTemplate,
) -> tuple[DigestContent, RenderedDigest]:
    """The most groups of `request.content` (at least one) whose rendering fits
    `BODY_BUDGET`, and that rendering; `context` makes the view model of a request."""

    def attempt(shown: DigestContent) -> RenderedDigest:
        ctx = context(request._replace(content=shown))
        return RenderedDigest(ctx["subject"], html.render(ctx), text.render(ctx))

    content = request.content
    ctx = context(request)
    html_parts, text_parts = html.parts(ctx), text.parts(ctx)
    rendered = RenderedDigest(
        ctx["subject"],
        _joined(html_parts) if html_parts else html.render(ctx),
        _joined(text_parts) if text_parts else text.render(ctx),
    )
    count = len(content.groups)
    if fits(rendered) or count <= 1:
        return content, rendered
    if html_parts and text_parts:
        # Items end with a line break, so their sizes as sent add up. Count as many as
        # fit beside the head and the largest tail ("…and N more" with N at its top).
        worst = with_more(ctx, max(content.total_groups, count))
        html_fixed = html_parts[0] + html.tail_of(worst)
        used = sent_size(html_fixed) + sent_size(text_parts[0] + text.tail_of(worst))
        count = 0
        for html_item, text_item in zip(html_parts[1], text_parts[1], strict=True):
            used += sent_size(html_item) + sent_size(text_item)
            if used > BODY_BUDGET:
                break
            count += 1
        shown = _first(content, max(count, 1))
        result = attempt(shown)
        if fits(result) or count <= 1:
            return shown, result
    # Otherwise: size grows with the number of groups shown, so binary search for the
    # most that fit.
    best = _first(content, 1)
    best_rendered = attempt(best)
    low, high = 2, count - 1
    while low <= high:
        middle = (low + high) // 2
        shown = _first(content, middle)
        result = attempt(shown)
        if fits(result):
            best, best_rendered, low = shown, result, middle + 1
        else:
            high = middle - 1
    return best, best_rendered


def sent_size(body: str) -> int:
    """Bytes of `body` in the message as the MIME writer sends it (quoted-printable, CRLF
    line ends, a line break at the end)."""
    return len(quoted_printable(body))


def fits(rendered: RenderedDigest) -> bool:
    """Whether both bodies together fit BODY_BUDGET as sent."""
    html, text = rendered.html, rendered.text
    # Most digests are far below the budget: the cheap bound settles them without encoding.
    if _size_bound(html) + _size_bound(text) <= BODY_BUDGET:
        return True
    return sent_size(html) + sent_size(text) <= BODY_BUDGET


def _size_bound(body: str) -> int:
    """An upper bound of `sent_size(body)`: every byte outside printable ASCII, every `=`
    and one character per line end escaped (3 bytes), a soft line break (3 bytes) per 73
    encoded bytes and per line, a CR per line."""
    size = len(body.encode())
    lines = body.count("\n") + 1
    # at most one escaped space, tab or dot per line end
    escaped = size - len(body.encode("ascii", "ignore")) + body.count("=") + lines
    encoded = size + 2 * escaped
    return encoded + 3 * (encoded // 73 + lines) + lines + 2


def _joined(parts: tuple[str, list[str], str]) -> str:
    head, items, tail = parts
    return head + "".join(items) + tail


def _first(content: DigestContent, count: int) -> DigestContent:
    """`content` showing only its first `count` groups (the others count as more)."""
    return DigestContent(
        content.groups[:count], content.total_groups, content.total_events, content.folded_likes
    )
