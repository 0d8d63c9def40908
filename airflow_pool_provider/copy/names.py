"""Table names as users write them, parsed into parts that are always quoted when used."""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg2 import sql

# One part: a double-quoted name (with "" for a quote inside) or a bare name without dots/quotes.
_PART = r'"(?:[^"]|"")+"|[^."]+'
_NAME = re.compile(rf"^\s*({_PART})(?:\s*\.\s*({_PART}))?\s*$")


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        '''Parse ``table``, ``schema.table`` or SQL-quoted names such as ``"Odd Schema"."T"``.

        Bare parts are looked up as written first (users copy names from catalogs and UIs), then
        folded to lower case as PostgreSQL would.
        '''
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a table name is required, got {text!r}")
        match = _NAME.match(text)
        if not match:
            raise ValueError(
                f"cannot read table name {text!r}: write it as table, schema.table or "
                f'"Schema"."Table" (double any " inside quotes)'
            )
        first, second = (_unquote(p) if p else None for p in match.groups())
        return cls(schema=first, name=second) if second is not None else cls(schema=None, name=first)

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name) if self.schema else sql.Identifier(self.name)

    def __str__(self) -> str:
        parts = [self.schema, self.name] if self.schema else [self.name]
        return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _unquote(part: str) -> str:
    part = part.strip()
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part
