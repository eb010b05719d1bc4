"""Input files line by line: JSON Lines and CSV records with their line numbers, and the
bad lines an all-or-nothing import collects and reports."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from digest.errors import DigestError, ValidationError
from digest.ingest.fields import unknown_fields

# How many bad lines an all-or-nothing failure lists (the rest are counted).
BAD_LINES_SHOWN: Final = 20
UTF8_BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an input file that was refused, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


class BadInputError(DigestError):
    """An all-or-nothing import refused a file because some of its lines are bad."""

    def __init__(self, source: str, shown: list[BadLine], count: int) -> None:
        self.source, self.shown, self.count = source, shown, count
        noun = "line" if count == 1 else "lines"
        lines = [
            f"{source}: {count} bad {noun}, nothing was imported "
            "(fix them, or use --skip-bad to import the good lines)",
            *(str(bad) for bad in shown),
        ]
        if count > len(shown):
            lines.append(f"and {count - len(shown)} more")
        super().__init__("\n".join(lines))


def read_jsonl(lines: Iterable[bytes]) -> Iterator[tuple[int, object, str | None]]:
    """Parse JSON Lines: yields (line number, value, None) or (line number, None, reason).

    Blank lines are skipped; CRLF ends are fine; a UTF-8 BOM is accepted on line 1 only.
    """
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith(UTF8_BOM):
            line = line[3:]
        elif line.startswith(UTF8_BOM):
            yield number, None, "byte order mark (BOM) is only allowed at the start of the file"
            continue
        if not line or line.isspace():
            continue
        try:
            # Without the line end, a JSON error's column points into the line.
            decoded = line.rstrip(b"\r\n").decode()
        except UnicodeDecodeError as exc:
            yield number, None, f"not valid UTF-8 (byte {exc.start + 1})"
            continue
        try:
            yield number, json.loads(decoded), None
        except json.JSONDecodeError as exc:
            # JSON strings cannot hold a raw CR: here it can only be a line end.
            hint = "; bare CR line ends? use LF or CRLF" if "\r" in decoded else ""
            yield number, None, f"invalid JSON: {exc.msg} (column {exc.colno}{hint})"
        except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
            yield number, None, f"invalid JSON: {exc}"


T = TypeVar("T")


class BadLines:
    """Collects an import's bad lines: counts all, keeps the first few, reports as asked."""

    def __init__(self, source: str, on_bad: Callable[[BadLine], None] | None) -> None:
        self.source, self.on_bad = source, on_bad
        self.shown: list[BadLine] = []
        self.count = 0

    def add(self, line: int, reason: str) -> None:
        """Record bad line `line`."""
        bad = BadLine(self.source, line, reason)
        self.count += 1
        if len(self.shown) < BAD_LINES_SHOWN:
            self.shown.append(bad)
        if self.on_bad is not None:
            self.on_bad(bad)

    def error(self) -> BadInputError:
        """The all-or-nothing failure for these bad lines."""
        return BadInputError(self.source, self.shown, self.count)

    def valid(
        self,
        records: Iterable[tuple[int, object, str | None]],
        validate: Callable[[object], T],
        *,
        skip_bad: bool,
    ) -> Iterator[T]:
        """The records that validate, each bad one recorded with its line number.

        Once the file is known to fail (all or nothing), reading goes on only to count and
        list the bad lines.
        """
        for number, value, reason in records:
            if reason is not None:
                self.add(number, reason)
                continue
            try:
                row = validate(value)
            except ValidationError as exc:
                self.add(number, str(exc))
                continue
            if skip_bad or not self.count:
                yield row


# A CR not followed by LF ends a line too: "CSV (Macintosh)" files from Excel use bare CRs.
_BARE_CR = re.compile("(?<=\r)(?!\n)")


def _decoded(lines: Iterable[bytes], source: str) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith(UTF8_BOM):
            line = line[3:]
        try:
            text = line.decode()
        except UnicodeDecodeError as exc:
            # A CSV record can span lines, so a broken line cannot be skipped on its own.
            raise DigestError(
                f"{source}:{number}: not valid UTF-8 (byte {exc.start + 1})"
            ) from None
        if "\r" in text[:-2]:
            yield from (part for part in _BARE_CR.split(text) if part)
        else:
            yield text


def read_csv(
    lines: Iterable[bytes], source: str, *, fields: Sequence[str], required: Sequence[str]
) -> Iterator[tuple[int, object, str | None]]:
    """Parse CSV with a header row: yields (line number, row dict, None) or (number, None, reason).

    Cells are stripped; an empty cell counts as a missing field. A column not in `fields`,
    a `required` one missing, or one given twice fails the whole file, before anything is
    written.
    """
    reader = csv.reader(_decoded(lines, source))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DigestError(f"{source}:{reader.line_num}: bad CSV header: {exc}") from None
    if header is None:
        return
    columns = [cell.strip().lower() for cell in header]
    unknown = [c for c in columns if c not in fields]
    if unknown:
        reason = unknown_fields(unknown, fields).replace("field", "column", 1)
        raise DigestError(f"{source}:1: {reason}")
    missing = [c for c in required if c not in columns]
    if missing or len(set(columns)) != len(columns):
        raise DigestError(
            f"{source}:1: the header needs each of {' and '.join(required)}, and no column twice"
        )
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, f"bad CSV: {exc}"
            continue
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(columns):
            yield (
                reader.line_num,
                None,
                f"has {len(record)} fields, the header has {len(columns)}",
            )
            continue
        row = {c: cell.strip() for c, cell in zip(columns, record, strict=True) if cell.strip()}
        yield reader.line_num, row, None
