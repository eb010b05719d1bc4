"""`digest --help` starts fast: no heavy library is imported for it."""

from __future__ import annotations

from collections.abc import Callable

LoadedBy = Callable[..., set[str]]  # the conftest fixture


# Each takes tens to hundreds of milliseconds to import (docs/performance.md, CLI start-up).
HEAVY = (
    "alembic",
    "boto3",
    "botocore",
    "chevron",
    "cryptography",
    "premailer",
    "psycopg",
    "rich",
    "sqlalchemy",
    "starlette",
    "uvicorn",
)


def test_help_imports_no_heavy_library(loaded_by: LoadedBy) -> None:
    """`digest --help` and `digest work --help` load click and the settings, none of HEAVY."""
    for args in (("--help",), ("work", "--help"), ("recipients", "import", "--help")):
        assert loaded_by(*args) & set(HEAVY) == set(), args
