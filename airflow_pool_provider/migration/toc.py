"""A schema archive's table of contents (``pg_restore --list``), and which entries a migration
restores in which stage.

Each line is ``<dump id>; <catalog oid> <object oid> <desc> <schema> <tag> <owner>``. Entries
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
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class TocEntry:
    line: str
    dump_id: int
    catalog: int  # catalog OID of the object, 0 for entries without one
    oid: int
    desc: str
    rest: str  # "<schema> <tag> <owner>" as listed

    def names(self, schema: str, name: str) -> bool:
        """Whether the entry's schema and tag are ``schema`` and ``name``."""
        return self.rest.startswith(f"{schema} {name} ") or self.rest == f"{schema} {name}"

    def tag_in(self, schemas: tuple[str, ...]) -> tuple[str, str] | None:
        """(schema, tag) for an entry of one of ``schemas``; the owner, last, is left out."""
        for schema in schemas:
            if self.rest.startswith(schema + " "):
                return schema, self.rest[len(schema) + 1 :].rsplit(" ", 1)[0]
        return None


def parse(listing: str) -> list[TocEntry]:
    entries = []
    for line in listing.splitlines():
        match = _LINE.match(line)
        if not match:
            continue  # comments and blank lines
        dump_id, catalog, oid, rest = match.groups()
        desc = next((d for d in DESCS if rest == d or rest.startswith(d + " ")), rest.split(" ")[0])
        entries.append(TocEntry(line, int(dump_id), int(catalog), int(oid), desc, rest[len(desc) :].strip()))
    return entries


def pre_data(entries: list[TocEntry], selection: Selection, existing_schemas: set[str]) -> list[TocEntry]:
    """The entries the pre-data stage restores."""
    return [e for e in entries if e.desc in PRE_DATA and _selected(e, selection, existing_schemas)]


def post_data(entries: list[TocEntry], selection: Selection) -> list[TocEntry]:
    """The entries the post-data stage restores (after the migration's own indexes and keys)."""
    return [e for e in entries if e.desc in POST_DATA and _selected(e, selection, set())]


def _selected(entry: TocEntry, selection: Selection, existing_schemas: set[str]) -> bool:
    if entry.desc == "SCHEMA":
        # pg_dump -n public writes CREATE SCHEMA public, which fails where it exists (always).
        return entry.rest.split(" ")[1] not in existing_schemas if " " in entry.rest else True
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
