"""Words the copy stores or is given keep working: ledger digests written by earlier versions read
back as they were written, DAG parameters given as words become the copy's enums, and retry
delays double up to their cap within their jitter."""

from __future__ import annotations

import pytest

from airflow_pool_provider.backoff import Backoff
from airflow_pool_provider.copy import CopyMode, CopySpec, TargetChecksum
from airflow_pool_provider.copy.catalog import Side
from airflow_pool_provider.copy.checksum import ChecksumMethod, ChunkDigest


@pytest.mark.parametrize("text", ["record:123", "text:-5", "source:record:0", "source:text:987654321"])
def test_ledger_digests_read_back_as_written(text):
    assert str(ChunkDigest.parse(text)) == text


def test_a_source_digest_names_its_side_and_method():
    assert ChunkDigest.parse("source:text:12") == ChunkDigest(Side.SOURCE, ChecksumMethod.TEXT, 12)
    assert ChunkDigest.parse("record:12") == ChunkDigest(Side.TARGET, ChecksumMethod.RECORD, 12)
    assert ChunkDigest.parse(None) is None and ChunkDigest.parse("md5:12") is None


def test_words_from_dag_parameters_become_enums_that_print_as_words():
    spec = CopySpec("t", mode="upsert", target_checksum="per_table")
    assert spec.mode is CopyMode.UPSERT and spec.target_checksum is TargetChecksum.PER_TABLE
    assert f"mode={spec.mode}" == "mode=upsert" and spec.mode == "upsert"


@pytest.mark.parametrize("attempt, delay", [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (6, 5.0), (12, 5.0)])
def test_retry_delays_double_up_to_the_cap_within_the_jitter(attempt, delay):
    backoff = Backoff(first=0.2, cap=5.0)
    assert all(0.8 * delay - 1e-9 <= backoff.delay(attempt) <= 1.2 * delay + 1e-9 for _ in range(100))
