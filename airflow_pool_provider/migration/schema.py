"""The schema of the selected tables: dumped once, restored in parts as the migration's own SQL.

``pg_dump -Fc --section=pre-data --section=post-data -n <schema>...`` of whole schemas (never
``pg_dump -t``, which leaves out the types, sequences and functions tables need), through the
migration's snapshot; then ``pg_restore --list``, a list of the chosen entries, and ``pg_restore
--use-list -O -x -f`` writes their SQL, which runs in the caller's transaction. ``-O -x``: no
owners or grants, which fail for roles the target lacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_pool_provider.copy.names import quote_ident
from airflow_pool_provider.migration import scratch, toc
from airflow_pool_provider.migration.catalog import SourceCatalog
from airflow_pool_provider.migration.tools import PgTools, libpq_env, run

_SET = re.compile(r"^SET (\w+) = ")
_META = re.compile(r"^\\(restrict|unrestrict)\b")


@dataclass(frozen=True)
class SchemaArchive:
    """A dumped schema and its table of contents."""

    path: Path
    entries: tuple[toc.TocEntry, ...]


def dump(
    tools: PgTools, connect_kwargs: Mapping[str, Any], source: SourceCatalog, snapshot: str | None, folder: Path
) -> SchemaArchive:
    """Dump the catalog's schemas' pre- and post-data (through ``snapshot`` when given) into ``folder``."""
    path = folder / "schema.dump"
    args = ["-Fc", "--section=pre-data", "--section=post-data", "-f", str(path)]
    args += [f"--schema={_exact(s)}" for s in source.schemas]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    with libpq_env(connect_kwargs) as env:
        run(tools.pg_dump, args, env, "pg_dump of the source schema")
    listing = run(tools.pg_restore, ["--list", str(path)], {}, "pg_restore --list")
    return SchemaArchive(path, tuple(toc.parse(listing, toc.KnownNames(source.schemas, source.roles))))


def script(tools: PgTools, archive: SchemaArchive, entries: list[toc.TocEntry], owners: bool = False) -> str:
    """The SQL of ``entries``, as pg_restore writes it: no grants, and no owners unless ``owners``."""
    if not entries:
        return ""
    with scratch.folder("restore") as folder:
        listing, out = folder / "use.list", folder / "restore.sql"
        listing.write_text("".join(e.line + "\n" for e in entries))
        options = ["-x"] if owners else ["-O", "-x"]
        run(
            tools.pg_restore,
            [*options, f"--use-list={listing}", "-f", str(out), str(archive.path)],
            {},
            "pg_restore --use-list",
        )
        return out.read_text()


def apply(cur, sql_text: str) -> None:
    """Run pg_restore's SQL in ``cur``'s transaction: its settings made local to it (a pooled
    session must not keep an empty search_path), psql meta-commands and settings this server does
    not know (a newer pg_restore's) dropped, and its ``lock_timeout = 0`` too: the migration
    bounds its lock waits itself (``locks``)."""
    cur.execute("SELECT name FROM pg_settings")
    known = {row[0] for row in cur.fetchall()}
    lines = []
    for line in sql_text.splitlines():
        if _META.match(line):
            continue
        setting = _SET.match(line)
        if setting:
            if setting.group(1) not in known or setting.group(1) == "lock_timeout":
                continue
            line = "SET LOCAL " + line[len("SET ") :]
        elif line.startswith("SELECT pg_catalog.set_config("):
            line = line.replace(", false);", ", true);")
        lines.append(line)
    statements = "\n".join(lines).strip()
    if statements:
        cur.execute(statements)


def _exact(name: str) -> str:
    """A pg_dump pattern that matches exactly ``name`` (no case folding, no wildcards)."""
    return quote_ident(name)
