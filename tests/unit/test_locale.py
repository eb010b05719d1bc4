"""The email in the recipient's language: the words from templates/locales, dates, numbers
and plural forms by Babel, English for any locale without a table."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from digest.errors import DigestError
from digest.models import DigestContent, DigestRequest, FoldedLikes, Group, Recipient
from digest.render import Renderer
from digest.render.locale import REQUIRED_PHRASES, Locales

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
RENDERER = Renderer(TEMPLATES)
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
KW: dict[str, Any] = {
    "period_start": NOW,
    "base_url": "https://app.example.com",
    "unsubscribe_url": "https://app.example.com/u/TOKEN",
}


def group(
    category: str, count: int = 1, names: tuple[str, ...] = ("Ana",), index: int = 0
) -> Group:
    """A group of `count` events by `names` on "Trip photos"."""
    payload = {"title": "Trip photos", "url": "https://example.com/p/1", "excerpt": "Schön!"}
    return Group(category, "post", str(index), count, len(names), names, NOW, 99 - index, payload)


def render(locale: str, *groups: Group, cadence: str = "daily", more: int = 0, **kw: Any) -> Any:
    """The digest of `groups` for Max, whose locale is `locale`."""
    recipient = Recipient(
        "u", "max@example.com", "Max Mustermann", cadence, "Europe/Berlin", locale
    )
    content = DigestContent(groups, len(groups) + more, 40, kw.get("folded"))
    return RENDERER.render(DigestRequest(recipient, content, cadence, **KW))


def test_a_german_digest_is_german_throughout() -> None:
    """Locale de: German words, German dates, German plural forms, German quotes."""
    result = render(
        "de",
        group("mention", 1, ("Cy",), 1),
        group("comment", 3, ("Ana", "Ben")),
        cadence="weekly",
        more=1,
    )
    assert result.subject == "Cy hat dich in „Trip photos“ erwähnt, dazu 2 weitere Neuigkeiten"
    for part in (result.html, result.text):
        assert "Hallo Max," in part
        assert "Deine wöchentliche Zusammenfassung" in part
        assert "Woche bis Dienstag, 3. März 2026" in part
        assert "3 Kommentare" in part
        assert "Alle Aktivitäten ansehen" in part
        assert "…und 1 weitere Neuigkeit" in part
        assert "Einstellungen verwalten / abbestellen" in part
        for english in ("Hi ", "See all activity", "Week ending", "comments", "March"):
            assert english not in part
    assert '<html lang="de">' in result.html
    assert "„Trip photos“" in result.text
    assert "„Schön!“" in result.text


def test_german_verbs_agree_with_their_actors() -> None:
    """One actor "hat", several "haben": sentences take the plural form of the actor count."""
    text = render("de", group("comment", 1, ("Ana",)), group("like", 2, ("Ana", "Ben"), 1)).text
    assert "Ana hat „Trip photos“ kommentiert" in text
    assert "Ana und Ben haben „Trip photos“ mit „Gefällt mir“ markiert" in text


@pytest.mark.parametrize("locale", ["xx", "", "<script>", "pt-BR", "zz-ZZ", "en"])
def test_unknown_locales_fall_back_to_english(locale: str) -> None:
    """A locale with no table, or none Babel knows, gets the English email, dates included."""
    result = render(locale, group("comment", 2))
    assert result.text == render("en", group("comment", 2)).text
    assert "Hi Max," in result.text
    assert "Tuesday, March 3, 2026" in result.text
    assert '<html lang="en">' in result.html


def test_a_regional_locale_uses_its_language_and_its_region_s_dates() -> None:
    """de-AT gets the German table; en-GB English with British dates."""
    assert "Hallo Max," in render("de-AT", group("comment")).text
    assert "Tuesday, 3 March 2026" in render("en-GB", group("comment")).text
    assert "Tuesday, 3 March 2026" in render("en_GB", group("comment")).text


def test_numbers_follow_the_locale() -> None:
    """Counts are grouped as the locale writes them: 12,345 and 12.345."""
    assert "12,345 comments" in render("en", group("comment", 12345)).text
    assert "12.345 Kommentare" in render("de", group("comment", 12345)).text


def test_folded_likes_read_as_one_sentence_in_each_language() -> None:
    """The summary line names up to two actors, counts the rest and the posts."""
    folded = FoldedLikes(7, 7, ("Gabe", "Fern", "Ida"))
    en = render("en", group("comment"), folded=folded)
    de = render("de", group("comment"), folded=folded)
    assert "Gabe, Fern and 5 others liked 7 of your posts" in en.text
    assert "Gabe, Fern und 5 weitere haben 7 deiner Beiträge mit „Gefällt mir“ markiert" in de.text
    assert '<span class="actor"' in en.html
    assert "Gabe, Fern and 5 others</span> liked 7 of your posts</p>" in en.html


def test_the_subject_leads_with_folded_likes_when_nothing_else_happened() -> None:
    """A digest of single likes only says so in its subject."""
    result = render("en", folded=FoldedLikes(3, 2, ("Gabe", "Fern")))
    assert result.subject == "Gabe and Fern liked 3 of your posts"


def test_every_language_has_every_phrase_and_no_stray_key() -> None:
    """Each shipped table has every phrase the view fills in, and English has them all."""
    locales = Locales(TEMPLATES)
    assert set(locales.tables) >= {"en", "de"}
    for language, table in locales.tables.items():
        raw = (TEMPLATES / "locales" / f"{language}.toml").read_text(encoding="utf-8")
        for key in REQUIRED_PHRASES:
            assert key in table["phrases"], (language, key)
            assert f"\n{key} = " in raw, (language, key)  # translated, not inherited


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A private copy of the templates directory to break."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    return copy


def test_a_sentence_with_title_before_actor_does_not_load(templates: Path) -> None:
    """Sentences put {actor} before {title}: any other order is one clear error at load."""
    path = templates / "locales" / "de.toml"
    path.write_text(path.read_text().replace("share = {", 'share = "{title} von {actor}"\nx = {'))
    with pytest.raises(DigestError, match="actor first"):
        Renderer(templates)


def test_a_missing_english_phrase_does_not_load(templates: Path) -> None:
    """English is every language's fallback: a phrase missing there is one clear error."""
    path = templates / "locales" / "en.toml"
    path.write_text(path.read_text().replace('greeting = "Hi {name},"\n', ""))
    with pytest.raises(DigestError, match=r"en\.toml: no phrases\.greeting"):
        Renderer(templates)


def test_a_templates_folder_without_locales_uses_the_shipped_tables(templates: Path) -> None:
    """A custom templates folder made before locales existed still renders, in German too."""
    shutil.rmtree(templates / "locales")
    recipient = Recipient("u", "max@example.com", "Max", "daily", "UTC", "de")
    request = DigestRequest(recipient, DigestContent((group("comment"),), 1, 1), "daily", **KW)
    assert "Hallo Max," in Renderer(templates).render(request).text
