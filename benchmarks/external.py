"""The tools the benchmarks measure against, run the same way by every benchmark."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time


def pgcopydb_clone(server, src_db: str, dst_db: str, split: bool = True) -> float:
    """``pgcopydb clone --table-jobs 2 --index-jobs 2`` (tables above 50 MB split); seconds."""
    work = tempfile.mkdtemp(prefix="pgcopydb-")
    command = [
        "pgcopydb",
        "clone",
        "--source",
        server.uri(src_db),
        "--target",
        server.uri(dst_db),
        "--dir",
        work,
        "--table-jobs",
        "2",
        "--index-jobs",
        "2",
        "--no-owner",
        "--no-acl",
        "--skip-extensions",
    ]
    if split:
        command += ["--split-tables-larger-than", "50MB"]
    try:
        return _timed(command, "pgcopydb clone")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pg_dump_restore(server, src_db: str, dst_db: str, bin_dir: str | None = None) -> float:
    """``pg_dump -Fd -j 2`` then ``pg_restore -j 2`` into ``dst_db``; seconds for both."""
    folder = tempfile.mkdtemp(prefix="pgdump-")
    dump = shutil.which("pg_dump") if bin_dir is None else f"{bin_dir}/pg_dump"
    restore = shutil.which("pg_restore") if bin_dir is None else f"{bin_dir}/pg_restore"
    try:
        started = time.perf_counter()
        _timed([dump, "-Fd", "-j", "2", "-f", f"{folder}/dump", "-d", server.uri(src_db)], "pg_dump")
        _timed([restore, "-j", "2", "--no-owner", "--no-acl", "-d", server.uri(dst_db), f"{folder}/dump"], "pg_restore")
        return time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def _timed(command: list[str], what: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, start_new_session=True)  # its own signals
    if result.returncode:
        raise SystemExit(f"{what} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started
