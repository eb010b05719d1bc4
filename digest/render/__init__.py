"""Render a digest: text cleaning (`text`), the view model (`view`), templates loaded,
inlined and compiled once (`templates`, `mustache`), fitting under Gmail's clip (`fit`),
tied together by `Renderer` (`renderer`); the view model's sentences laid out as the text
email's lines for channels without templates (`lines`).

`Renderer` is imported on first use: `digest.render.text` is what the MIME writer needs,
and importing it must not load chevron and the compiled-template machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digest.render.renderer import Renderer

__all__ = ["Renderer"]


def __getattr__(name: str) -> Any:
    if name == "Renderer":
        from digest.render.renderer import Renderer

        return Renderer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
