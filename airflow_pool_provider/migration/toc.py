"""A schema archive's table of contents (``pg_restore --list``), and which entries a migration
restores in which stage.

Each line is ``<dump id>; <catalog oid> <object oid> <desc> <schema> <tag> <owner>``, unquoted:
names may hold spaces and kinds several words, so a line is split by the known kinds, the dumped
schemas and the source's roles (and the catalog OID where two kinds share words). Entries
are chosen by the object's OID where it has one (filtering by name would confuse objects of
other tables with the same name), by the tag only for the few that carry no OID (sequence
ownership, partition attachment, comments). Lines left out of the list handed to ``pg_restore
--use-list`` are not restored.

Stages: **pre-data** restores schemas, types, domains, functions, sequences, tables (with their
CHECK constraints, defaults and partitions) and views; indexes, primary keys, unique and foreign
keys are built by the migration itself after the data (faster, and ``USING INDEX``);
**post-data** restores the rest: the CHECK constraints pg_dump writes apart (NOT VALID ones, kept
NOT VALID), triggers, rules, policies, row security, statistics objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from airflow_pool_provider.errors import MigrationMistake
from airflow_pool_provider.migration.selection import PG_CLASS, Selection

#: Entry kinds pg_dump writes, longest first so that "SEQUENCE OWNED BY" wins over "SEQUENCE".
DESCS = sorted(
    [
        "SCHEMA",
        "EXTENSION",
        "TYPE",
        "SHELL TYPE",
        "DOMAIN",
        "FUNCTION",
        "PROCEDURE",
        "AGGREGATE",
        "OPERATOR",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "COLLATION",
        "CONVERSION",
        "CAST",
        "TRANSFORM",
        "ACCESS METHOD",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "FOREIGN DATA WRAPPER",
        "SERVER",
        "USER MAPPING",
        "TABLE",
        "FOREIGN TABLE",
        "VIEW",
        "MATERIALIZED VIEW",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "DEFAULT",
        "CONSTRAINT",
        "CHECK CONSTRAINT",
        "FK CONSTRAINT",
        "INDEX",
        "INDEX ATTACH",
        "TABLE ATTACH",
        "TRIGGER",
        "EVENT TRIGGER",
        "RULE",
        "POLICY",
        "ROW SECURITY",
        "STATISTICS",
        "COMMENT",
        "SECURITY LABEL",
        "ACL",
        "DEFAULT ACL",
        "PUBLICATION",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "SUBSCRIPTION",
        "SUBSCRIPTION TABLE",
        "TABLE DATA",
        "MATERIALIZED VIEW DATA",
        "LARGE OBJECT",
        "BLOB",
        "BLOB METADATA",
        "DATABASE",
        "DATABASE PROPERTIES",
        "ENCODING",
        "STDSTRINGS",
        "SEARCHPATH",
    ],
    key=len,
    reverse=True,
)

#: Restored in the pre-data stage, when selected.
PRE_DATA = frozenset(
    {
        "SCHEMA",
        "TYPE",
        "SHELL TYPE",
        "DOMAIN",
        "FUNCTION",
        "PROCEDURE",
        "AGGREGATE",
        "OPERATOR",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "COLLATION",
        "CONVERSION",
        "CAST",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "TABLE",
        "VIEW",
        "MATERIALIZED VIEW",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "DEFAULT",
        "TABLE ATTACH",
    }
)
#: Restored in the post-data stage, when selected (the migration builds indexes and keys itself).
#: A CHECK constraint has an entry of its own when it is NOT VALID (or must come after a function
#: it calls): added before the data, it would refuse the source's rows that violate it.
POST_DATA = frozenset({"CHECK CONSTRAINT", "TRIGGER", "RULE", "POLICY", "ROW SECURITY", "STATISTICS"})

_LINE = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(.*)$")
NO_SCHEMA = "-"  # the schema field of an entry that belongs to no schema

#: The catalog OID pg_dump gives the kinds whose name starts with another kind's name (``TABLE
#: DATA`` and ``TABLE`` in a schema named ``DATA``): the catalog tells them apart.
_CATALOG_OF = {
    **dict.fromkeys(["TABLE", "SEQUENCE", "INDEX", "MATERIALIZED VIEW"], PG_CLASS),
    **dict.fromkeys(
        ["TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "SEQUENCE SET", "SEQUENCE OWNED BY", "MATERIALIZED VIEW DATA"],
        0,
    ),
    "DEFAULT": 2604,  # pg_attrdef
    "DEFAULT ACL": 826,  # pg_default_acl
    "OPERATOR": 2617,  # pg_operator
    "OPERATOR CLASS": 2616,  # pg_opclass
    "OPERATOR FAMILY": 2753,  # pg_opfamily
}


@dataclass(frozen=True, slots=True)
class KnownNames:
    """What an entry's schema and owner fields can be: the dumped schemas and the source's roles.
    pg_restore lists them unquoted, so only known names split a line into its fields."""

    schemas: tuple[str, ...]
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class TocEntry:
    line: str
    dump_id: int
    catalog: int  # catalog OID of the object, 0 for entries without one
    oid: int
    desc: str
    schema: str  # NO_SCHEMA for entries of no schema (a schema's own entry)
    tag: str  # the object's name; a table's objects are tagged "<table> <name>"
    owner: str

    def names(self, schema: str, name: str) -> bool:
        """Whether the entry's schema and tag are ``schema`` and ``name``."""
        return (self.schema, self.tag) == (schema, name)


@dataclass(frozen=True, slots=True)
class _Reading:
    desc: str
    schema: str
    tag: str
    owner: str


def parse(listing: str, known: KnownNames) -> list[TocEntry]:
    """The entries of ``pg_restore --list`` output; comments and blank lines are skipped."""
    entries = []
    for line in listing.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        dump_id, catalog, oid, text = match.groups()
        reading = _read(line, text, int(catalog), known)
        entries.append(
            TocEntry(
                line, int(dump_id), int(catalog), int(oid), reading.desc, reading.schema, reading.tag, reading.owner
            )
        )
    return entries


def _read(line: str, text: str, catalog: int, known: KnownNames) -> _Reading:
    """The one way to read ``text`` as a kind, a known schema, a tag and a known owner."""
    readings = list(dict.fromkeys(_readings(text, catalog, known)))
    if len(readings) > 1 and any(r.desc in PRE_DATA | POST_DATA for r in readings):
        schemas, owners = {r.schema for r in readings}, {r.owner for r in readings}
        names = sorted((schemas if len(schemas) > 1 else set()) | (owners if len(owners) > 1 else set()))
        raise MigrationMistake(
            f"the schema dump's entry {line!r} reads as {len(readings)} different objects (schema or role "
            f"names with spaces that begin or end alike): migrate these schemas in separate migrations, or rename "
            f"one of {names}"
        )
    if readings:
        return readings[0]
    # A kind this module does not know, or a schema not dumped: restored by neither stage.
    desc = next((d for d in DESCS if text.startswith(d + " ") and _fits(d, catalog)), text.split(" ")[0])
    return _Reading(desc, "", text[len(desc) :].strip(), "")


def _readings(text: str, catalog: int, known: KnownNames) -> Iterator[_Reading]:
    for desc in DESCS:
        if not text.startswith(desc + " ") or not _fits(desc, catalog):
            continue
        rest = text[len(desc) + 1 :]
        for schema in (*known.schemas, NO_SCHEMA):
            if rest.startswith(schema + " "):
                yield from _split_owner(desc, schema, rest[len(schema) + 1 :], known.roles)


def _split_owner(desc: str, schema: str, text: str, roles: frozenset[str]) -> Iterator[_Reading]:
    """``<tag> <owner>`` split at each space after which a known role (or nothing) is left."""
    for at, char in enumerate(text):
        if char == " " and at > 0 and (text[at + 1 :] in roles or at == len(text) - 1):
            yield _Reading(desc, schema, text[:at], text[at + 1 :])


def _fits(desc: str, catalog: int) -> bool:
    expected = _CATALOG_OF.get(desc)
    return expected is None or expected == catalog


def pre_data(entries: list[TocEntry], selection: Selection, existing_schemas: set[str]) -> list[TocEntry]:
    """The entries the pre-data stage restores."""
    return [e for e in entries if e.desc in PRE_DATA and _selected(e, selection, existing_schemas)]


def post_data(entries: list[TocEntry], selection: Selection) -> list[TocEntry]:
    """The entries the post-data stage restores (after the migration's own indexes and keys)."""
    return [e for e in entries if e.desc in POST_DATA and _selected(e, selection, set())]


def _selected(entry: TocEntry, selection: Selection, existing_schemas: set[str]) -> bool:
    if entry.desc == "SCHEMA":
        # pg_dump -n public writes CREATE SCHEMA public, which fails where it exists (always).
        return entry.tag not in existing_schemas
    if entry.oid:
        if entry.catalog == PG_CLASS:
            return entry.oid in selection.restored
        belongs = selection.owns(entry.catalog, entry.oid)
        return True if belongs is None else belongs  # schema-level objects (types, functions) always
    # Entries without an OID name their object by the tag.
    relations = [selection.catalog.relations[oid] for oid in selection.restored]
    if entry.desc in ("SEQUENCE OWNED BY", "TABLE ATTACH"):
        return any(entry.names(r.name.schema, r.name.name) for r in relations)
    return False
