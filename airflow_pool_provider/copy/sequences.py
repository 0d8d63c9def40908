"""Sequences of copied serial and identity columns, moved on after the rows.

COPY writes the key values but leaves the target's sequences where they were, so the first
plain INSERT after a copy fails with a duplicate key. Each sequence owned by a copied column is
set from the source's ``last_value``/``is_called`` (what pgcopydb does, not ``max(id)``), never
moved backwards. That needs SELECT on the source sequence and SELECT and UPDATE on the target's:
checked before copying, with a warning that gives the GRANT, so a missing right never fails a
copy whose rows are already in.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.copy.catalog import Table
from airflow_pool_provider.copy.names import TableName, quote_ident

_OWNED = """
SELECT a.attname, n.nspname, s.relname,
       has_sequence_privilege(s.oid, 'SELECT'), has_sequence_privilege(s.oid, 'UPDATE'), q.seqincrement
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
  JOIN pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = %s AND d.deptype IN ('a', 'i')
"""


@dataclass(frozen=True, slots=True)
class Sequence:
    column: str
    schema: str
    name: str
    can_select: bool
    can_update: bool
    increment: int

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return str(TableName(self.schema, self.name))


@dataclass(frozen=True, slots=True)
class SequencePair:
    column: str
    source: Sequence
    target: Sequence


@dataclass(frozen=True, slots=True)
class SequenceMove:
    """What syncing one sequence did: ``moved`` False when the target was already as far."""

    column: str
    target: str
    next_value: int
    moved: bool


@dataclass(frozen=True, slots=True)
class MoveOutcome:
    """A sequence's next value after ``move``, and whether ``move`` set it."""

    next_value: int
    moved: bool


@dataclass(frozen=True, slots=True)
class _Position:
    """A sequence's ``last_value`` and ``is_called``, as ``setval`` takes them."""

    last_value: int
    is_called: bool

    def next_value(self, step: int) -> int:
        return self.last_value + step if self.is_called else self.last_value


def owned_sequences(cur, table: Table) -> dict[str, Sequence]:
    """The sequences owned by ``table``'s columns (serial, identity), by column."""
    cur.execute(_OWNED, (table.oid,))
    return {row[0]: Sequence(*row) for row in cur.fetchall()}


def pair(scur, tcur, source: Table, target: Table, columns: tuple[str, ...]) -> list[SequencePair]:
    """Copied columns that own a sequence on both sides."""
    on_source, on_target = owned_sequences(scur, source), owned_sequences(tcur, target)
    return [SequencePair(c, on_source[c], on_target[c]) for c in columns if c in on_source and c in on_target]


def missing_rights(pairs: list[SequencePair], source_role: str, target_role: str) -> list[str]:
    """GRANT statements that syncing needs, one per sequence lacking a right."""
    grants = []
    for p in pairs:
        if not p.source.can_select:
            grants.append(f"on the source: GRANT SELECT ON SEQUENCE {p.source} TO {quote_ident(source_role)};")
        if not (p.target.can_select and p.target.can_update):
            grants.append(f"on the target: GRANT SELECT, UPDATE ON SEQUENCE {p.target} TO {quote_ident(target_role)};")
    return grants


def sync(scur, tcur, pairs: list[SequencePair]) -> list[SequenceMove]:
    """Move each target sequence up to the source's position (never back)."""
    moves = []
    for p in pairs:
        if not (p.source.can_select and p.target.can_select and p.target.can_update):
            continue
        outcome = move(scur, tcur, p.source.ident, p.target.ident, p.target.increment)
        moves.append(SequenceMove(p.column, str(p.target), outcome.next_value, outcome.moved))
    return moves


def move(scur, tcur, source: sql.Identifier, target: sql.Identifier, increment: int) -> MoveOutcome:
    """Set ``target`` from ``source``'s position unless it is as far already (in the direction of
    ``increment``)."""
    on_source, on_target = _position(scur, source), _position(tcur, target)
    source_next, target_next = on_source.next_value(increment), on_target.next_value(increment)
    ahead = source_next > target_next if increment > 0 else source_next < target_next
    if ahead:
        tcur.execute(
            sql.SQL("SELECT setval({}, %s, %s)").format(sql.Literal(_text(target))),
            (on_source.last_value, on_source.is_called),
        )
    return MoveOutcome(source_next if ahead else target_next, ahead)


def next_value(cur, sequence: sql.Identifier, increment: int) -> int:
    """The value ``nextval`` would give now."""
    return _position(cur, sequence).next_value(increment)


def increment(cur, sequence: sql.Identifier) -> int:
    cur.execute("SELECT seqincrement FROM pg_sequence WHERE seqrelid = %s::regclass", (_text(sequence),))
    return cur.fetchone()[0]


def _text(sequence: sql.Identifier) -> str:
    return ".".join(quote_ident(s) for s in sequence.strings)


def _position(cur, sequence: sql.Identifier) -> _Position:
    cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sequence))
    return _Position(*cur.fetchone())
