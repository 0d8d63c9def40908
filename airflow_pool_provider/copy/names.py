"""Table names as users write them, parsed into parts that are always quoted when used."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from psycopg2 import sql

from airflow_pool_provider.errors import InvalidName

# One part: a double-quoted name (with "" for a quote inside) or a bare name without dots/quotes.
_PART = r'"(?:[^"]|"")+"|[^."]+'
_NAME = re.compile(rf"^\s*({_PART})(?:\s*\.\s*({_PART}))?\s*$")


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str | None
    name: str
    # A quoted part must match exactly; a bare one may be folded. Not part of equality.
    schema_quoted: bool = field(default=True, compare=False)
    name_quoted: bool = field(default=True, compare=False)

    @classmethod
    def parse(cls, text: str) -> TableName:
        """Parse ``table``, ``schema.table`` or SQL-quoted names such as ``"Odd Schema"."T"``.

        A quoted part must match exactly. A bare part is looked up as written first (users copy
        names from catalogs and UIs), then folded to lower case as PostgreSQL would.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidName(f"a table name is required, got {text!r}")
        match = _NAME.match(text)
        if not match:
            raise InvalidName(
                f"cannot read table name {text!r}: write it as table, schema.table or "
                f'"Schema"."Table" (double any " inside quotes)'
            )
        first, second = match.groups()
        if second is None:
            return cls(None, _unquote(first), name_quoted=_quoted(first))
        return cls(_unquote(first), _unquote(second), _quoted(first), _quoted(second))

    def candidates(self) -> tuple[list[str] | None, list[str]]:
        """Names to look up, as written first; bare parts also folded to lower case."""
        return (
            None if self.schema is None else _spellings(self.schema, self.schema_quoted),
            _spellings(self.name, self.name_quoted),
        )

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name) if self.schema else sql.Identifier(self.name)

    def __str__(self) -> str:
        parts = [self.schema, self.name] if self.schema else [self.name]
        return ".".join(quote_ident(p) for p in parts)


def quote_ident(part: str) -> str:
    """A name as SQL text, always quoted (for messages and for statements shown to users)."""
    return '"' + part.replace('"', '""') + '"'


def _quoted(part: str) -> bool:
    return part.strip().startswith('"')


def _spellings(part: str, quoted: bool) -> list[str]:
    return [part] if quoted or part == part.lower() else [part, part.lower()]


def _unquote(part: str) -> str:
    part = part.strip()
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part
