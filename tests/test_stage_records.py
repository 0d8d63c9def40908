"""The stage ledger's typed keys and records, without a server: the texts stored (as earlier
versions stored them, so their migrations resume), round trips, and the previous-run state."""

from __future__ import annotations

import pytest

from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.verify import TableCheck
from airflow_pool_provider.migration.ledger import (
    RESTORE,
    WHOLE_STAGE,
    ObjectKey,
    ObjectKind,
    Stage,
    StageRecord,
    Status,
)
from airflow_pool_provider.migration.records import (
    CheckRecord,
    DataRecord,
    PostDataRecord,
    PreDataRecord,
    PreviousRunState,
    SnapshotRecord,
)

ORDERS = TableName("public", "orders")
ODD = TableName('Odd "Schema"', "T.1")


def test_keys_are_stored_as_earlier_versions_stored_them():
    assert WHOLE_STAGE.text == "*"
    assert RESTORE.text == "restore"
    assert ObjectKey.of_table(ORDERS).text == '"public"."orders"'
    assert ObjectKey.on_table(ObjectKind.INDEX, ORDERS, "orders_pkey").text == "index public.orders_pkey"
    assert ObjectKey.on_table(ObjectKind.CONSTRAINT, ORDERS, "pk").text == "constraint public.orders.pk"
    assert ObjectKey.on_table(ObjectKind.FOREIGN_KEY, ORDERS, "fk").text == 'foreign key "public"."orders".fk'
    assert ObjectKey(ObjectKind.REFRESH, "public", "totals").text == 'refresh "public"."totals"'


@pytest.mark.parametrize("table", [ORDERS, ODD])
def test_table_keys_read_back_as_the_same_key(table):
    key = ObjectKey.of_table(table)
    assert ObjectKey.from_text(key.text) == key
    assert ObjectKey.from_text(key.text).table_name == table


def test_keys_compare_by_fields_not_by_text():
    fk = ObjectKey.on_table(ObjectKind.FOREIGN_KEY, ORDERS, "fk")
    constraint = ObjectKey.on_table(ObjectKind.CONSTRAINT, ORDERS, "fk")
    assert fk != constraint  # same name, another kind
    assert ObjectKey.from_json(fk.to_json()) == fk
    assert fk.describe() == "foreign key fk on orders"


def test_records_round_trip_through_json():
    check = TableCheck('"public"."orders"', "record", 10, 10, 123, 123)
    for record in (
        SnapshotRecord("00000003-1", 10, 20, epoch=2),
        PreDataRecord(5, ("type public.mood",), "run-1", ('"public"."orders"',)),
        DataRecord((1, 2)),
        PostDataRecord((ObjectKey.on_table(ObjectKind.FOREIGN_KEY, ORDERS, "fk"),)),
        CheckRecord(check, "run-1"),
    ):
        assert type(record).from_json(record.to_json()) == record


def _row(stage: Stage, key: ObjectKey, detail=None, status=Status.DONE) -> StageRecord:
    return StageRecord(stage, key.text, status, detail or {})


def test_previous_run_state_types_every_record():
    leaf = ObjectKey.of_table(ORDERS)
    check = TableCheck(str(ORDERS), "record", 3, 3, 7, 7)
    state = PreviousRunState.from_records(
        [
            _row(Stage.SNAPSHOT, WHOLE_STAGE, {"snapshot": "s-1", "pid": 1, "backend_pid": 2, "epoch": 3}),
            _row(Stage.PRE_DATA, WHOLE_STAGE, {"entries": 4, "reused": [], "run": "r", "dropped": []}),
            _row(Stage.PRE_DATA, leaf),
            _row(Stage.PRE_DATA, ObjectKey.of_table(ODD), status=Status.PENDING),
            _row(Stage.DATA, leaf, {"epochs": [1, 3]}, status=Status.PENDING),
            _row(Stage.VERIFY, leaf, CheckRecord(check, "r").to_json()),
            _row(Stage.POST_DATA, ObjectKey.on_table(ObjectKind.INDEX, ORDERS, "i")),
            _row(Stage.POST_DATA, RESTORE, {"entries": 2}),
        ]
    )
    assert state.snapshot == SnapshotRecord("s-1", 1, 2, 3)
    assert state.pre_data == PreDataRecord(4, (), "r", ())
    assert state.created_tables == frozenset({ORDERS})  # the pending one was not created
    assert state.epochs == {ORDERS: (1, 3)}
    assert state.checked == {ORDERS: CheckRecord(check, "r")}
    assert state.restore is not None and state.restore.entries == 2
    assert state.post_data is None  # the stage as a whole is not recorded yet
    assert state.stages_done == (Stage.SNAPSHOT, Stage.PRE_DATA)


def test_an_empty_ledger_is_a_migration_that_has_not_started():
    state = PreviousRunState.from_records([])
    assert state == PreviousRunState()
    assert state.snapshot is None and state.stages_done == () and not state.created_tables


def test_a_check_recorded_by_an_earlier_version_names_no_run_so_it_is_never_reused():
    check = TableCheck(str(ORDERS), "record", 3, 3, 7, 7)
    earlier = {
        "table": str(ORDERS),
        "method": "record",
        "source_rows": 3,
        "target_rows": 3,
        "source_sum": 7,
        "target_sum": 7,
    }
    assert CheckRecord.from_json(earlier) == CheckRecord(check, None)
