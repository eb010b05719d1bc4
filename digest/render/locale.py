"""The email's words per locale: a table per language (`templates/locales/LANG.toml`),
dates, numbers and plural forms by Babel (CLDR).

A recipient's `locale` ("de", "de-AT", "pt_BR") picks the table of its language, and
Babel's data for the whole tag (dates in "de-AT" are Austrian); a locale with no table, or
one Babel does not know ("xx", "<b>"), gets English throughout, so no email mixes English
words with another language's dates. A key missing from a table falls back to English.

Everything is resolved once per locale tag and cached (`Locales.catalog`); the formatted
pieces a digest needs (a date, "3 comments", a category's sentence) are cached per
catalog, so a render calls Babel only for what it has not seen yet.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from digest.errors import DigestError

DEFAULT = "en"
LOCALES_DIR = "locales"
_TABLES = ("options", "strings", "phrases", "counts", "sentences")
# What the email always needs, in English at least: the known categories and the fallbacks,
# and every phrase `digest.render.view` fills in.
REQUIRED_SENTENCES = ("comment", "like", "mention", "follow", "other", "other_nobody")
REQUIRED_PHRASES = (
    "greeting",
    "greeting_nameless",
    "heading_daily",
    "heading_weekly",
    "heading_other",
    "period_weekly",
    "preheader",
    "reason_daily",
    "reason_weekly",
    "reason_other",
    "quoted",
    "untitled",
    "untitled_vowel",
    "list_separator",
    "list_last",
    "someone",
    "someone_first",
    "people",
    "names_and_others",
    "more_updates",
    "subject_more",
    "folded_likes",
)
_SLOTS = re.compile(r"\{(actor|title)\}")
_WORDS = re.compile(r"[^a-z0-9]+")
_CACHE = 4096  # formatted pieces kept per catalog


class Sentence(NamedTuple):
    """A sentence cut around its slots, in this order: `lead`, the actors (if `actor`),
    `middle`, the title (if `title`), `tail`."""

    lead: str
    middle: str
    tail: str
    actor: bool
    title: bool

    def text(self, actor: str, title: str) -> str:
        """The sentence as plain text with `actor` and `title` in their slots."""
        return (
            f"{self.lead}{actor if self.actor else ''}{self.middle}"
            f"{title if self.title else ''}{self.tail}"
        )


def cut(pattern: str, where: str) -> Sentence:
    """`pattern` ("{actor} liked {title}") cut around its slots; DigestError if a slot
    appears twice or {title} comes before {actor}."""
    pieces = _SLOTS.split(pattern)
    texts, slots = pieces[0::2], pieces[1::2]
    if slots not in ([], ["actor"], ["title"], ["actor", "title"]):
        raise DigestError(f"{where}: {{actor}} and {{title}} at most once each, actor first")
    if slots == ["actor", "title"]:
        return Sentence(texts[0], texts[1], texts[2], True, True)
    if slots == ["actor"]:
        return Sentence(texts[0], texts[1], "", True, False)
    if slots == ["title"]:
        return Sentence(texts[0], "", texts[1], False, True)
    return Sentence(texts[0], "", "", False, False)


@dataclass(eq=False)
class Catalog:
    """One locale's words, dates, numbers and plural rules, with what it formatted cached."""

    tag: str  # the Babel locale, e.g. "de_AT"
    language: str  # the table's language, e.g. "de"
    strings: Mapping[str, str]  # shown as they are: {{t.KEY}}
    table: Mapping[str, Mapping[str, Any]]  # the language's tables over English's
    plural: Callable[[int], str] = field(repr=False)  # CLDR plural category of a count
    format_date: Callable[[date], str] = field(repr=False)
    format_number: Callable[[int], str] = field(repr=False)
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # The pieces every group uses, looked up once (a render reads attributes, no table).
        phrases = self.table["phrases"]
        self.separator: str = phrases["list_separator"]
        self.last: str = phrases["list_last"]
        self.someone: str = phrases["someone"]
        self.someone_first: str = phrases["someone_first"]
        self.quote_open, _, self.quote_close = phrases["quoted"].partition("{text}")

    def quote(self, text: str) -> str:
        """`text` in the language's quotation marks: “text”, „text“."""
        return f"{self.quote_open}{text}{self.quote_close}"

    def _cached(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            if len(self._cache) >= _CACHE:  # bounded: counts and dates vary without end
                self._cache.clear()
            value = self._cache[key] = make()
            return value

    def date(self, day: date) -> str:
        """`day` in the locale's full format ("Tuesday, March 3, 2026")."""
        result: str = self._cached(("date", day), lambda: self.format_date(day))
        return result

    def number(self, count: int) -> str:
        """`count` with the locale's digit grouping ("12,345", "12.345")."""
        result: str = self._cached(("number", count), lambda: self.format_number(count))
        return result

    def phrase(self, key: str, count: int | None = None) -> str:
        """The phrase `key`; a plural table picks its form by `count`, and {count} in it
        becomes `count` formatted. Other placeholders are left for the caller."""

        def make() -> str:
            text = self.form(key, count)
            return text if count is None else text.replace("{count}", self.number(count))

        result: str = self._cached(("phrase", key, count), make)
        return result

    def form(self, key: str, count: int | None) -> str:
        """The phrase `key` as written, in its form for `count`, every placeholder left."""
        return self._form(self.table["phrases"][key], count)

    def count(self, category: str, count: int) -> str:
        """ "3 comments": `count` events of `category` (an unknown category's are updates)."""
        counts = self.table["counts"]
        key = category if category in counts else "other"

        def make() -> str:
            return self._form(counts[key], count).replace("{count}", self.number(count))

        result: str = self._cached(("count", key, count), make)
        return result

    def sentence(self, category: str, label: str, actors: int, nobody: bool) -> Sentence:
        """What happened in a group of `category`, for `actors` actors (`nobody`: the group
        has no actor at all); `label` is the category as words ("shared album")."""

        def make() -> Sentence:
            sentences = self.table["sentences"]
            pattern: Any = sentences.get(category)
            if pattern is None:
                pattern = self._verb(category)
            if pattern is None:
                pattern = sentences["other_nobody" if nobody else "other"]
            # {label} is filled in after the cut: a category's name is not a pattern.
            lead, middle, tail, actor, title = cut(self._form(pattern, actors), category)
            return Sentence(
                lead.replace("{label}", label),
                middle.replace("{label}", label),
                tail.replace("{label}", label),
                actor,
                title,
            )

        # keyed by the count, not its plural form: no plural rule to run for a cached one
        result: Sentence = self._cached(("sentence", category, label, actors, nobody), make)
        return result

    def sentence_of(self, pattern: str) -> Sentence:
        """`pattern`, already in this language and form, cut around its slots."""
        result: Sentence = self._cached(("cut", pattern), lambda: cut(pattern, pattern))
        return result

    def untitled(self, thing: str) -> str:
        """What an entity without a title is called ("a post", "an album")."""

        def make() -> str:
            vowel = thing[:1].lower() in "aeiou"
            pattern = self.phrase("untitled_vowel" if vowel else "untitled")
            return pattern.replace("{thing}", thing)

        result: str = self._cached(("untitled", thing), make)
        return result

    def _verb(self, category: str) -> Any:
        """The sentence of a word in `category`'s name ("post.shared" -> share), searched
        from the last word; None when no word is a known verb."""
        sentences = self.table["sentences"]
        for word in reversed([w for w in _WORDS.split(category.lower()) if w]):
            for stem in (word, word[:-1], word[:-2], word[:-3], word[:-3] + "y"):
                if len(stem) >= 3 and stem in sentences and not stem.startswith("other"):
                    return sentences[stem]
            if self.table["options"].get("past_tense_ed") and len(word) > 4 and word.endswith("ed"):
                return "{actor} " + word + " {title}"
        return None

    def _form(self, value: Any, count: int | None) -> str:
        """A string as it is, or the form of a plural table for `count`."""
        if isinstance(value, str):
            return value
        chosen: str = value.get(self.plural(1 if count is None else count), value["other"])
        return chosen


# The tables shipped with the package: a templates folder without `locales/` uses these.
SHIPPED = Path(__file__).resolve().parents[2] / "templates" / LOCALES_DIR


class Locales:
    """Every table under `templates_dir/locales` (the shipped ones when that folder has
    none), loaded and checked once, and a catalog per locale tag on first use."""

    def __init__(self, templates_dir: Path):
        folder = Path(templates_dir) / LOCALES_DIR
        if not folder.is_dir():
            folder = SHIPPED
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        for path in sorted(folder.glob("*.toml")):
            self.tables[path.stem] = _read_table(path)
        if DEFAULT not in self.tables:
            raise DigestError(f"locale table not found: {folder / (DEFAULT + '.toml')}")
        english = self.tables[DEFAULT]
        for table_name, keys in (
            ("phrases", REQUIRED_PHRASES),
            ("sentences", REQUIRED_SENTENCES),
            ("counts", ("other",)),
        ):
            missing = [k for k in keys if k not in english[table_name]]
            if missing:
                raise DigestError(f"{folder / (DEFAULT + '.toml')}: no {table_name}.{missing[0]}")
        for language, table in self.tables.items():
            # Key by key over English, so a new key needs only English at first; but a
            # verb a language does not list says its own `other`, not an English sentence.
            for name in ("strings", "phrases", "counts"):
                table[name] = {**english[name], **table[name]}
            table["sentences"] = {
                **{k: english["sentences"][k] for k in REQUIRED_SENTENCES},
                **table["sentences"],
            }
            _check(table, folder / f"{language}.toml")
        self._catalogs: dict[str, Catalog] = {}

    def catalog(self, tag: str) -> Catalog:
        """The catalog for a recipient's locale tag, English when there is none for it."""
        found = self._catalogs.get(tag)
        if found is None:
            found = self._catalogs[tag] = self._make(tag)
        return found

    def _make(self, tag: str) -> Catalog:
        from babel import Locale, UnknownLocaleError
        from babel.dates import format_date
        from babel.numbers import format_decimal

        try:
            babel = Locale.parse(tag.strip().replace("-", "_")) if tag.strip() else None
        except (ValueError, TypeError, UnknownLocaleError):
            babel = None
        if babel is None or babel.language not in self.tables:
            babel = Locale.parse(DEFAULT)
        locale = babel
        table = self.tables[locale.language]
        return Catalog(
            tag=str(locale),
            language=locale.language,
            strings=table["strings"],
            table=table,
            plural=locale.plural_form,
            format_date=lambda day: format_date(day, format="full", locale=locale),
            format_number=lambda n: format_decimal(n, locale=locale),
        )


def _read_table(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise DigestError(f"cannot read locale table {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DigestError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise DigestError(f"{path}: unknown table [{unknown[0]}]")
    return {name: dict(data.get(name, {})) for name in _TABLES}


def _check(table: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Every value a string or a plural table with `other`; sentences cut cleanly."""
    for name in ("strings", "phrases", "counts", "sentences"):
        for key, value in table[name].items():
            forms = [value] if isinstance(value, str) else None
            if isinstance(value, dict) and isinstance(value.get("other"), str):
                forms = list(value.values())
            if forms is None or not all(isinstance(f, str) for f in forms):
                raise DigestError(
                    f"{path}: {name}.{key} must be text or a table of plural forms with 'other'"
                )
            if name == "strings" and not isinstance(value, str):
                raise DigestError(f"{path}: strings.{key} must be text")
            if name == "sentences":
                for form in forms:
                    cut(form, f"{path}: sentences.{key}")
