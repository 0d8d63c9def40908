"""MigrationRequest: what a migration moves and how, checked when it is made."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.server import ServerIdentity
from airflow_pool_provider.copy.spec import DEFAULT_CHUNK_SIZE, DEFAULT_PARALLELISM, MAX_CHUNK_SIZE, MAX_PARALLELISM
from airflow_pool_provider.errors import MigrationMistake
from airflow_pool_provider.migration.locks import DEFAULT_LOCK_TIMEOUT, DEFAULT_LOCK_WAIT, LockWaits


class Mode(Choice):
    """``resume`` starts a new migration or continues the one of the same id, and refuses target
    tables it did not create; ``replace`` drops the selected tables in the target first (never
    anything outside the selection)."""

    RESUME = "resume"
    REPLACE = "replace"


DEFAULT_LEDGER_SCHEMA = "public"
DEFAULT_INDEX_BUILD_MEMORY = "1GB"  # maintenance_work_mem of an index build, as pgcopydb sets it
_DERIVED = "migration-"  # a derived id: this and 12 hex digits
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


@dataclass(frozen=True)
class MigrationRequest:
    """``mode``: see :class:`Mode`. ``migration_id`` None: derived from the databases and the
    selection (:meth:`derived_id`), so the same migration run again resumes or confirms it."""

    schemas: tuple[str, ...] = ("public",)
    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    parallelism: int = DEFAULT_PARALLELISM
    mode: Mode = Mode.RESUME
    migration_id: str | None = None
    dry_run: bool = False
    ledger_schema: str = DEFAULT_LEDGER_SCHEMA
    pg_bin_dir: str | None = None
    keep_owners: bool = False  # restore the objects' owners (pg_restore without -O); grants never
    allow_security_definer: bool = False  # SECURITY DEFINER functions owned by the target role: accepted
    index_build_memory: str | None = (
        DEFAULT_INDEX_BUILD_MEMORY  # maintenance_work_mem of each index build; None: the server's
    )
    run_id: str | None = None  # the DAG run: replace starts over in a new run, a retry in the same one resumes
    ddl_lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # seconds one try of a DDL statement waits for its locks
    ddl_lock_wait: float = DEFAULT_LOCK_WAIT  # seconds it waits in all (see migration.locks)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("schemas", "tables", "exclude_tables"):
            set_(self, name, _names(name, getattr(self, name)))
        if not self.schemas:
            raise MigrationMistake("schemas must name at least one schema")
        for name in ("tables", "exclude_tables"):
            for text in getattr(self, name):
                TableName.parse(text)  # a clear message for a name that cannot be read
        for name, highest in (("chunk_size", MAX_CHUNK_SIZE), ("parallelism", MAX_PARALLELISM)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
                raise MigrationMistake(f"{name} must be a positive integer (at most {highest:,}), got {value!r}")
        set_(self, "mode", Mode.parse("mode", self.mode, MigrationMistake))
        if self.migration_id is not None and (
            not isinstance(self.migration_id, str)
            or not self.migration_id
            or not set(self.migration_id) <= _ID_CHARS
            or len(self.migration_id) > 100
        ):
            raise MigrationMistake(f"migration_id must be 1 to 100 letters, digits or _-.:, got {self.migration_id!r}")
        if not isinstance(self.ledger_schema, str) or not self.ledger_schema:
            raise MigrationMistake(f"ledger_schema must name a schema, got {self.ledger_schema!r}")
        LockWaits(self.ddl_lock_timeout, self.ddl_lock_wait)  # a clear message for waits that cannot work

    def derived_id(self, source: ServerIdentity, target: ServerIdentity) -> str:
        """The id of a migration not given one: from which database of which cluster, to which, and
        what. Two migrations that differ in any of these (other databases behind the same connection
        ids, say) get other ids, so neither touches the other's records or snapshot holder."""
        what = json.dumps(
            [
                [source.system_identifier, source.database],
                [target.system_identifier, target.database],
                list(self.schemas),
                sorted(self.tables),
                sorted(self.exclude_tables),
            ]
        )
        return _DERIVED + hashlib.sha256(what.encode()).hexdigest()[:12]

    def earlier_derived_id(self, source_conn_id: str, target_conn_id: str) -> str:
        """The id versions up to 0.2.0 derived, from the connection ids and the selection only: a
        migration they started keeps its records under it."""
        what = json.dumps(
            [source_conn_id, target_conn_id, list(self.schemas), sorted(self.tables), sorted(self.exclude_tables)]
        )
        return _DERIVED + hashlib.sha256(what.encode()).hexdigest()[:12]

    def resolved(self, migration_id: str) -> MigrationRequest:
        """This request with its id: the one it was given, else ``migration_id`` (a derived one)."""
        return self if self.migration_id else replace(self, migration_id=migration_id)

    @property
    def lock_waits(self) -> LockWaits:
        return LockWaits(self.ddl_lock_timeout, self.ddl_lock_wait)

    @property
    def id(self) -> str:
        """The migration's id, once :meth:`resolved`."""
        assert self.migration_id, "a request's migration_id is resolved before any stage runs"
        return self.migration_id


def _names(field: str, value: Sequence[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not all(isinstance(v, str) for v in value):
        raise MigrationMistake(f"{field} must be a list of names, got {list(value)!r}")
    names = tuple(v.strip() for v in value if v.strip())  # a form's empty lines are no names
    if len(set(names)) != len(names):
        raise MigrationMistake(f"{field} lists a name twice: {list(names)}")
    return names
