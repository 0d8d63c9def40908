"""The pure planners, without a server: the data stage's batch packing, the schema archive's table
of contents and what each stage restores, how many copy workers fit, and the choice of a keyset."""

from __future__ import annotations

import json
import re
import threading

import pytest

from airflow_pool_provider.copy.budget import ServerSlots, WorkerBudget, connections_for, plan_workers
from airflow_pool_provider.copy.catalog import Table
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.plan import Keyset, choose_keyset
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.copy.workers import WorkOutcome, run_workers
from airflow_pool_provider.errors import BudgetError, CatalogError, CopyMistake, MigrationMistake
from airflow_pool_provider.migration import toc
from airflow_pool_provider.migration.catalog import Relation, RelKind, SourceCatalog
from airflow_pool_provider.migration.data import Batch, BatchPart, PendingChunks, pack
from airflow_pool_provider.migration.selection import PG_CLASS, select
from airflow_pool_provider.pool import ConnectionPool

# -- batch packing (migration/data.py) ----------------------------------------------------------


def pending(name: str, rows: list[int], chunks: list[int] | None = None) -> PendingChunks:
    table = f'"public"."{name}"'
    return PendingChunks(table, f"m:{table}", chunks if chunks is not None else list(range(len(rows))), rows)


def layout(batches: list[Batch]) -> list[list[tuple[str, list[int], int]]]:
    """Each batch as its parts: (table name, chunk numbers, rows)."""
    return [[(TableName.parse(p.table).name, p.chunks, p.rows) for p in b.parts] for b in batches]


def test_nothing_pending_packs_into_no_batch():
    assert pack([], batch_rows=100) == []


def test_a_big_table_is_split_by_chunk_over_several_batches():
    batches = pack([pending("big", [100] * 5)], batch_rows=250)
    assert layout(batches) == [[("big", [0, 1], 200)], [("big", [2, 3], 200)], [("big", [4], 100)]]
    assert [(b.number, b.of, b.rows) for b in batches] == [(1, 3, 200), (2, 3, 200), (3, 3, 100)]
    assert [b.label for b in batches] == ["batch 1/3: big chunks 1-2", "batch 2/3: big chunks 3-4", "batch 3/3: big"]


def test_small_tables_share_a_batch_biggest_first():
    batches = pack([pending("a", [30]), pending("b", [40, 40]), pending("c", [50])], batch_rows=200)
    assert layout(batches) == [[("b", [0, 1], 80), ("c", [0], 50), ("a", [0], 30)]]
    assert batches[0].rows == 160
    assert batches[0].label == "batch 1/1: b chunks 1-2 +2 more"


def test_tables_of_equal_size_keep_their_order():
    batches = pack([pending("p", [10]), pending("q", [10]), pending("r", [10])], batch_rows=20)
    assert layout(batches) == [[("p", [0], 10), ("q", [0], 10)], [("r", [0], 10)]]


def test_a_chunk_bigger_than_a_batch_gets_a_batch_of_its_own():
    batches = pack([pending("big", [500, 10, 10]), pending("small", [50])], batch_rows=100)
    assert layout(batches) == [[("big", [0], 500)], [("big", [1, 2], 20), ("small", [0], 50)]]
    assert [b.label for b in batches] == ["batch 1/2: big", "batch 2/2: big chunks 2-3 +1 more"]


def test_a_chunk_bigger_than_a_batch_after_others_starts_a_new_batch():
    batches = pack([pending("x", [50, 300, 40])], batch_rows=100)
    assert layout(batches) == [[("x", [0], 50)], [("x", [1], 300)], [("x", [2], 40)]]


def test_a_full_batch_takes_nothing_more():
    batches = pack([pending("full", [60, 40]), pending("one", [1])], batch_rows=100)
    assert layout(batches) == [[("full", [0, 1], 100)], [("one", [0], 1)]]


def test_pending_chunks_keep_their_numbers_in_the_label():
    # After a resume only some chunks are pending: the label counts from the first to the last.
    (batch,) = pack([pending("resumed", [10, 10, 10], chunks=[3, 4, 7])], batch_rows=100)
    assert batch.parts == [BatchPart('"public"."resumed"', 'm:"public"."resumed"', [3, 4, 7], 30)]
    assert batch.label == "batch 1/1: resumed chunks 4-8"


def test_a_label_names_a_quoted_table_without_its_quotes():
    batch = Batch(2, 5, [BatchPart('"Sales"."Big ""Orders"""', "m:1", [0], 7)])
    assert batch.label == 'batch 2/5: Big "Orders"'


def test_a_batch_goes_through_xcom_and_back_unchanged():
    batch = Batch(
        1,
        2,
        [BatchPart('"public"."big"', "m:big", [0, 1, 2], 300), BatchPart('"public"."small"', "m:small", [0], 5)],
    )
    value = batch.to_xcom()
    assert value == {
        "number": 1,
        "of": 2,
        "label": "batch 1/2: big chunks 1-3 +1 more",
        "rows": 305,
        "parts": [
            {"table": '"public"."big"', "copy_id": "m:big", "chunks": [0, 1, 2], "rows": 300},
            {"table": '"public"."small"', "copy_id": "m:small", "chunks": [0], "rows": 5},
        ],
    }
    assert Batch.from_xcom(json.loads(json.dumps(value))) == batch


# -- the table of contents (migration/toc.py) ---------------------------------------------------

PG_TYPE, PG_PROC, PG_ATTRDEF, PG_CONSTRAINT, PG_REWRITE, PG_TRIGGER, PG_POLICY = (
    1247,
    1255,
    2604,
    2606,
    2618,
    2620,
    3256,
)

# As ``pg_restore --list`` prints it: a header of comments, then one entry a line.
LISTING = """\
;
; Archive created at 2026-01-01 00:00:00 UTC
;     dbname: legacy
;     TOC Entries: 35
;     Format: CUSTOM
;
; Selected TOC Entries:
;
6; 2615 2200 SCHEMA - public pg_database_owner
7; 2615 16384 SCHEMA - sales postgres
3501; 0 0 COMMENT - SCHEMA public pg_database_owner
870; 1247 16390 TYPE public mood postgres
230; 1255 16391 FUNCTION public touch() postgres
215; 1259 16400 TABLE public orders postgres
216; 1259 16401 TABLE public lines postgres
217; 1259 16402 TABLE public audit_log postgres
218; 1259 16405 SEQUENCE public orders_id_seq postgres
3460; 0 0 SEQUENCE OWNED BY public orders_id_seq postgres
219; 1259 16406 SEQUENCE public audit_log_id_seq postgres
3461; 0 0 SEQUENCE OWNED BY public audit_log_id_seq postgres
220; 1259 16407 SEQUENCE public counter postgres
221; 1259 16410 TABLE public measurements postgres
222; 1259 16411 TABLE public measurements_2024 postgres
3470; 0 0 TABLE ATTACH public measurements_2024 postgres
223; 1259 16420 VIEW public order_totals postgres
224; 1259 16421 VIEW public audit_view postgres
3290; 2604 16430 DEFAULT public orders id postgres
3291; 2604 16431 DEFAULT public audit_log id postgres
3292; 2606 16432 CHECK CONSTRAINT public orders orders_total_check postgres
3293; 2606 16433 CHECK CONSTRAINT public audit_log audit_log_kind_check postgres
3400; 0 16400 TABLE DATA public orders postgres
3401; 0 16407 SEQUENCE SET public counter postgres
3300; 2606 16440 CONSTRAINT public orders orders_pkey postgres
3310; 1259 16441 INDEX public lines_order_idx postgres
3330; 2606 16442 FK CONSTRAINT public lines lines_order_fkey postgres
3340; 2620 16450 TRIGGER public orders orders_touch postgres
3341; 2620 16451 TRIGGER public audit_log audit_touch postgres
3350; 2618 16452 RULE public orders orders_protect postgres
3360; 3256 16453 POLICY public orders own_rows postgres
3361; 1259 16400 ROW SECURITY public orders postgres
3362; 1259 16402 ROW SECURITY public audit_log postgres
3370; 3381 16460 STATISTICS public orders_stats postgres
3380; 0 0 ACL - SCHEMA public pg_database_owner
"""


def relation(oid: int, name: str, kind: str = "r", parent: int | None = None) -> tuple[int, Relation]:
    return oid, Relation(oid, TableName("public", name), RelKind(kind), parent, 0, 0)


CATALOG = SourceCatalog(
    schemas=("public",),
    relations=dict(
        [
            relation(16400, "orders"),
            relation(16401, "lines"),
            relation(16402, "audit_log"),
            relation(16405, "orders_id_seq", "S"),
            relation(16406, "audit_log_id_seq", "S"),
            relation(16407, "counter", "S"),
            relation(16410, "measurements", "p"),
            relation(16411, "measurements_2024", "r", parent=16410),
            relation(16420, "order_totals", "v"),
            relation(16421, "audit_view", "v"),
        ]
    ),
    owner={
        # orders' sequence, default, check, primary key, trigger, rule and policy
        **dict.fromkeys(
            [(PG_CLASS, 16405), (PG_ATTRDEF, 16430), (PG_CONSTRAINT, 16432), (PG_CONSTRAINT, 16440)], 16400
        ),
        **dict.fromkeys([(PG_TRIGGER, 16450), (PG_REWRITE, 16452), (PG_POLICY, 16453)], 16400),
        (PG_CONSTRAINT, 16442): 16401,  # lines' foreign key
        # audit_log's sequence, default, check and trigger
        **dict.fromkeys([(PG_CLASS, 16406), (PG_ATTRDEF, 16431), (PG_CONSTRAINT, 16433), (PG_TRIGGER, 16451)], 16402),
    },
    view_reads={16420: frozenset({16400, 16401}), 16421: frozenset({16402})},
)


def dump_ids(entries: list[toc.TocEntry]) -> list[int]:
    return [e.dump_id for e in entries]


KNOWN = toc.KnownNames(("public", "sales"), frozenset({"postgres", "pg_database_owner"}))


def test_a_listing_is_parsed_entry_by_entry_without_its_comments():
    entries = toc.parse(LISTING, KNOWN)
    assert len(entries) == 35
    assert entries[0] == toc.TocEntry(
        "6; 2615 2200 SCHEMA - public pg_database_owner", 6, 2615, 2200, "SCHEMA", "-", "public", "pg_database_owner"
    )
    table = entries[5]
    assert (table.dump_id, table.catalog, table.oid, table.desc, table.schema, table.tag, table.owner) == (
        215,
        1259,
        16400,
        "TABLE",
        "public",
        "orders",
        "postgres",
    )


ODD = toc.KnownNames(("Sales Dept", "DATA", "SET", "OWNED", "ATTACH"), frozenset({"postgres", "sales team"}))


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        ("3460; 0 0 SEQUENCE OWNED BY public orders_id_seq postgres", ("SEQUENCE OWNED BY", "public", "orders_id_seq")),
        ("3401; 0 16407 SEQUENCE SET public counter postgres", ("SEQUENCE SET", "public", "counter")),
        ("218; 1259 16405 SEQUENCE public orders_id_seq postgres", ("SEQUENCE", "public", "orders_id_seq")),
        (
            "3330; 2606 16442 FK CONSTRAINT public lines lines_fkey postgres",
            ("FK CONSTRAINT", "public", "lines lines_fkey"),
        ),
        ("3470; 0 0 TABLE ATTACH public measurements_2024 postgres", ("TABLE ATTACH", "public", "measurements_2024")),
        ("3400; 0 16400 TABLE DATA public orders postgres", ("TABLE DATA", "public", "orders")),
        ("225; 1259 16422 MATERIALIZED VIEW public mv postgres", ("MATERIALIZED VIEW", "public", "mv")),
        ("3501; 0 0 COMMENT - SCHEMA public pg_database_owner", ("COMMENT", "-", "SCHEMA public")),
        # A kind this module does not know, a line without an owner: the kind and the rest, unread.
        ("9; 0 0 ENCODING - ENCODING", ("ENCODING", "", "- ENCODING")),
        ("10; 0 0 NEWFANGLED public thing postgres", ("NEWFANGLED", "", "public thing postgres")),
    ],
)
def test_the_longest_known_kind_is_read_from_a_line(line, fields):
    (entry,) = toc.parse(line, KNOWN)
    assert (entry.line, entry.desc, entry.schema, entry.tag) == (line, *fields)


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        ("6; 2615 16384 SCHEMA - Sales Dept sales team", ("SCHEMA", "-", "Sales Dept", "sales team")),
        ("218; 1259 16400 TABLE Sales Dept order items postgres", ("TABLE", "Sales Dept", "order items", "postgres")),
        ("220; 1259 16401 TABLE DATA SET sales team", ("TABLE", "DATA", "SET", "sales team")),
        ("3400; 0 16401 TABLE DATA SET SET sales team", ("TABLE DATA", "SET", "SET", "sales team")),
        ("221; 1259 16402 TABLE ATTACH p1 postgres", ("TABLE", "ATTACH", "p1", "postgres")),
        ("3470; 0 0 TABLE ATTACH ATTACH p1 postgres", ("TABLE ATTACH", "ATTACH", "p1", "postgres")),
        ("222; 1259 16403 SEQUENCE SET s postgres", ("SEQUENCE", "SET", "s", "postgres")),
        ("223; 1259 16404 SEQUENCE OWNED BY_seq postgres", ("SEQUENCE", "OWNED", "BY_seq", "postgres")),
        ("3460; 0 0 SEQUENCE OWNED BY OWNED BY_seq postgres", ("SEQUENCE OWNED BY", "OWNED", "BY_seq", "postgres")),
        (
            "3290; 2604 16430 DEFAULT Sales Dept order items id postgres",
            ("DEFAULT", "Sales Dept", "order items id", "postgres"),
        ),
    ],
)
def test_schemas_tags_and_owners_with_spaces_or_kind_words_are_read_by_their_fields(line, fields):
    (entry,) = toc.parse(line, ODD)
    assert (entry.desc, entry.schema, entry.tag, entry.owner) == fields


def test_an_entry_that_reads_two_ways_is_refused_naming_the_names():
    known = toc.KnownNames(("a", "a b"), frozenset({"postgres"}))
    with pytest.raises(MigrationMistake, match=r"reads as 2 different objects.*rename one of \['a', 'a b'\]"):
        toc.parse("218; 1259 16400 TABLE a b c postgres", known)


def test_lines_that_are_not_entries_are_skipped():
    assert toc.parse("", KNOWN) == []
    assert toc.parse(";\n; Selected TOC Entries:\n\n  \nnot an entry\n12 0 0 TABLE public t postgres\n", KNOWN) == []


def test_an_entry_names_its_schema_and_tag():
    (attach,) = toc.parse("3470; 0 0 TABLE ATTACH public measurements_2024 postgres", KNOWN)
    assert attach.names("public", "measurements_2024")
    assert not attach.names("public", "measurements")
    assert not attach.names("sales", "measurements_2024")


def test_the_pre_data_stage_restores_the_selected_definitions():
    selection = select(CATALOG, exclude=("audit_log",))
    assert selection.restored == {16400, 16401, 16405, 16407, 16410, 16411, 16420}
    chosen = toc.pre_data(toc.parse(LISTING, KNOWN), selection, existing_schemas={"public"})
    assert dump_ids(chosen) == [
        7,  # schema sales (public exists already)
        870,  # a type, and a function: belong to no table
        230,
        215,  # orders, lines; not audit_log
        216,
        218,  # orders' sequence and its ownership; the standalone counter; not audit_log's
        3460,
        220,
        221,  # the partitioned table, its partition and the attachment
        222,
        3470,
        223,  # the view over selected tables; not the one over audit_log
        3290,  # orders' default; not audit_log's (its check comes after the data)
    ]


def test_every_schema_is_created_where_none_exists():
    selection = select(CATALOG, exclude=("audit_log",))
    schemas = [
        e for e in toc.pre_data(toc.parse(LISTING, KNOWN), selection, existing_schemas=set()) if e.desc == "SCHEMA"
    ]
    assert dump_ids(schemas) == [6, 7]


def test_the_pre_data_stage_follows_a_narrower_selection():
    selection = select(CATALOG, tables=("lines",))
    assert selection.restored == {16401, 16407}
    chosen = toc.pre_data(toc.parse(LISTING, KNOWN), selection, existing_schemas={"public", "sales"})
    assert dump_ids(chosen) == [870, 230, 216, 220]


def test_the_post_data_stage_restores_triggers_rules_policies_and_statistics_of_selected_tables():
    selection = select(CATALOG, exclude=("audit_log",))
    chosen = toc.post_data(toc.parse(LISTING, KNOWN), selection)
    assert dump_ids(chosen) == [3292, 3340, 3350, 3360, 3361, 3370]
    assert [e.desc for e in chosen] == ["CHECK CONSTRAINT", "TRIGGER", "RULE", "POLICY", "ROW SECURITY", "STATISTICS"]


def test_neither_stage_restores_data_keys_indexes_comments_or_grants():
    selection = select(CATALOG)
    entries = toc.parse(LISTING, KNOWN)
    restored = toc.pre_data(entries, selection, existing_schemas=set()) + toc.post_data(entries, selection)
    assert {e.desc for e in entries} - {e.desc for e in restored} == {
        "COMMENT",
        "TABLE DATA",
        "SEQUENCE SET",
        "CONSTRAINT",
        "INDEX",
        "FK CONSTRAINT",
        "ACL",
    }


# -- worker planning (copy/budget.py, copy/workers.py) ------------------------------------------


def test_a_copy_holds_two_connections_per_worker_and_one_for_its_snapshot():
    assert [connections_for(w) for w in (1, 2, 4, 32)] == [3, 5, 9, 65]


@pytest.mark.parametrize(
    ("max_connections", "reserved", "in_use", "kept_free", "available"),
    [
        (100, 3, 10, 10, 77),
        (20, 3, 10, 2, 5),
        (25, 3, 10, 3, 9),
        (19, 3, 14, 2, 0),
        (20, 3, 16, 2, 0),  # never below zero
    ],
)
def test_a_server_keeps_a_tenth_of_its_slots_and_at_least_two_free(
    max_connections, reserved, in_use, kept_free, available
):
    slots = ServerSlots("src", max_connections, reserved, in_use)
    assert (slots.kept_free, slots.available) == (kept_free, available)


def test_a_servers_slots_describe_themselves():
    assert ServerSlots("src", 100, 3, 10).describe() == (
        "server src has 77 slot(s) to spare (max_connections=100, reserved=3, in use=10, "
        "10 kept free for other clients)"
    )


def test_a_worker_budget_describes_its_limits():
    assert WorkerBudget(4, 4, ()).describe() == "4 worker(s)"
    assert WorkerBudget(4, 1, ("one", "two")).describe() == "1 worker(s) instead of 4: one; two"


def _refuse() -> None:
    raise AssertionError("planning must not connect")


@pytest.fixture
def make_pool():
    made: list[ConnectionPool] = []

    def make(name: str, max_size: int) -> ConnectionPool:
        made.append(ConnectionPool(_refuse, name=name, max_size=max_size))
        return made[-1]

    yield make
    for pool in made:
        pool.close()


ROOMY = ServerSlots("big", 1000, 3, 10)


def test_workers_as_requested_when_nothing_limits_them(make_pool):
    budget = plan_workers(
        4, source_pool=make_pool("s", 10), target_pool=make_pool("t", 10), source_slots=ROOMY, target_slots=ROOMY
    )
    assert budget == WorkerBudget(4, 4, ())


def test_a_limit_that_just_fits_does_not_cut(make_pool):
    # 4 workers need 5 source connections, 4 target ones and 9 in all.
    budget = plan_workers(
        4,
        source_pool=make_pool("s", 5),
        target_pool=make_pool("t", 4),
        source_slots=ServerSlots("src", 20, 3, 10),  # 5 to spare: the snapshot and 4 workers
        target_slots=ServerSlots("dst", 20, 3, 11),  # 4 to spare
        connection_limit=9,
    )
    assert budget == WorkerBudget(4, 4, ())


def test_the_pools_max_sizes_cap_the_workers(make_pool):
    budget = plan_workers(
        4, source_pool=make_pool("s", 3), target_pool=make_pool("t", 1), source_slots=ROOMY, target_slots=ROOMY
    )
    assert budget == WorkerBudget(
        4,
        1,
        (
            "source pool 's' has max_size=3 and 4 worker(s) need 5; raise [pooled_postgres] max_size for more",
            "target pool 't' has max_size=1; raise [pooled_postgres] max_size for more",
        ),
    )


def test_one_pool_for_both_sides_holds_every_connection(make_pool):
    shared = make_pool("both", 6)
    budget = plan_workers(4, source_pool=shared, target_pool=shared, source_slots=ROOMY, target_slots=None)
    assert budget == WorkerBudget(
        4,
        2,
        (
            "source and target share pool 'both' (max_size=6), and 4 worker(s) need 9; "
            "raise [pooled_postgres] max_size for more",
        ),
    )


def test_the_tasks_connection_limit_caps_the_workers(make_pool):
    budget = plan_workers(
        4,
        source_pool=make_pool("s", 10),
        target_pool=make_pool("t", 10),
        source_slots=ROOMY,
        target_slots=ROOMY,
        connection_limit=7,
    )
    assert budget.workers == 3
    assert budget.limits == (
        "the task may hold 7 connection(s) (pool_slots), and each worker needs two plus one for the snapshot",
    )


@pytest.mark.parametrize("limit", [0, 1, 2])
def test_a_connection_limit_below_three_fits_no_worker(make_pool, limit):
    with pytest.raises(CopyMistake) as refused:
        plan_workers(
            2,
            source_pool=make_pool("s", 10),
            target_pool=make_pool("t", 10),
            source_slots=ROOMY,
            target_slots=ROOMY,
            connection_limit=limit,
        )
    assert str(refused.value) == (
        f"no worker fits the connection limits: the task may hold {limit} connection(s) (pool_slots), and each "
        "worker needs two plus one for the snapshot. A copy needs at least 3 connections (2 per worker and 1 for "
        "the snapshot)."
    )


def test_each_servers_free_slots_cap_the_workers(make_pool):
    source_slots = ServerSlots("src", 20, 3, 10)  # 5 to spare: the snapshot and 4 workers
    target_slots = ServerSlots("dst", 20, 3, 14)  # 1 to spare
    budget = plan_workers(
        8,
        source_pool=make_pool("s", 20),
        target_pool=make_pool("t", 20),
        source_slots=source_slots,
        target_slots=target_slots,
    )
    assert budget == WorkerBudget(8, 1, (source_slots.describe(), target_slots.describe()))


def test_one_server_for_both_sides_gives_each_worker_two_slots(make_pool):
    slots = ServerSlots("one", 30, 3, 10)  # 14 to spare: the snapshot and 6 workers of two
    budget = plan_workers(
        8, source_pool=make_pool("s", 20), target_pool=make_pool("t", 20), source_slots=slots, target_slots=None
    )
    assert budget == WorkerBudget(8, 6, (slots.describe(),))


def test_a_server_without_a_free_slot_refuses_the_copy(make_pool):
    full = ServerSlots("src", 20, 3, 15)
    with pytest.raises(BudgetError) as refused:
        plan_workers(
            2, source_pool=make_pool("s", 10), target_pool=make_pool("t", 10), source_slots=full, target_slots=ROOMY
        )
    assert str(refused.value).startswith(
        "not enough free connections to copy: server src has 0 slot(s) to spare (max_connections=20, reserved=3, "
        "in use=15, 2 kept free for other clients). One worker needs 2 connections on the source server"
    )


def test_workers_run_every_item_with_no_more_threads_than_items():
    seen: list[tuple[int, str]] = []

    def work(item: int) -> None:
        seen.append((item, threading.current_thread().name))

    outcome = run_workers([1, 2, 3], workers=8, work=work, stop=StopSignal(), name="w")
    assert outcome == WorkOutcome(3, 0, 0, None)
    assert sorted(item for item, _ in seen) == [1, 2, 3]
    assert {thread for _, thread in seen} <= {"w-1", "w-2", "w-3"}


def test_the_first_failure_stops_the_workers():
    failure = ValueError("boom")
    stop = StopSignal()

    def work(item: int) -> None:
        if item == 2:
            raise failure

    outcome = run_workers([1, 2, 3, 4], workers=1, work=work, stop=stop, describe=lambda i: f"item {i}")
    assert outcome == WorkOutcome(1, 0, 2, failure)
    assert stop.stopped


# -- the keyset of a chunk plan (copy/plan.py) --------------------------------------------------


def table(unique_keys: tuple[tuple[str, ...], ...] = (), primary_key: tuple[str, ...] | None = None) -> Table:
    return Table(TableName("public", "t"), 1, (), unique_keys, primary_key, 0, 0)


def test_the_primary_key_is_the_keyset():
    chosen = choose_keyset(table((("id",), ("code",)), primary_key=("id",)))
    assert chosen == Keyset("key", ("id",), "primary key ['id']")


def test_a_chosen_unique_key_is_the_keyset():
    chosen = choose_keyset(table((("id",), ("code",)), primary_key=("id",)), key=("code",))
    assert chosen == Keyset("key", ("code",), "the key ['code'] you chose")


def test_without_a_primary_key_the_first_unique_index_is_the_keyset():
    assert choose_keyset(table((("a", "b"), ("c",)))) == Keyset(
        "key", ("a", "b"), "unique index on ['a', 'b'] (no primary key)"
    )


def test_without_a_unique_key_chunks_are_page_ranges():
    assert choose_keyset(table()) == Keyset(
        "ctid", (), "no primary key or unique NOT NULL index, so chunks are page (ctid) ranges"
    )


@pytest.mark.parametrize(
    ("keys", "usable"),
    [((("id",),), "[['id']]"), ((), "none")],
)
def test_a_chosen_key_that_is_not_unique_is_refused(keys, usable):
    message = f'key [\'note\'] of "public"."t" is not a unique btree index on NOT NULL columns; usable keys: {usable}'
    with pytest.raises(CatalogError, match=re.escape(message)):
        choose_keyset(table(keys, primary_key=keys[0] if keys else None), key=("note",))


# -- selection: names ---------------------------------------------------------------------------


def _two_schemas() -> SourceCatalog:
    relations = {
        oid: Relation(oid, TableName(schema, name), RelKind.TABLE, None, 0, 0)
        for oid, schema, name in ((1, "sales", "orders"), (2, "archive", "orders"), (3, "archive", "audit"))
    }
    return SourceCatalog(schemas=("sales", "archive"), relations=relations, owner={})


def test_a_bare_name_names_the_table_in_every_selected_schema():
    catalog = _two_schemas()
    assert [str(t.name) for t in select(catalog, tables=("orders",)).tables] == [
        '"archive"."orders"',
        '"sales"."orders"',
    ]
    assert [str(t.name) for t in select(catalog, exclude=("orders",)).tables] == ['"archive"."audit"']


def test_a_qualified_name_names_one_table_and_a_table_named_twice_is_selected_once():
    catalog = _two_schemas()
    assert [str(t.name) for t in select(catalog, tables=("sales.orders",)).tables] == ['"sales"."orders"']
    assert [str(t.name) for t in select(catalog, tables=("orders", "archive.orders")).tables] == [
        '"archive"."orders"',
        '"sales"."orders"',
    ]
