"""What a finished copy reports: a table for the task log and a dict for XCom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_pool_provider.copy.sequences import SequenceMove


@dataclass(frozen=True)
class CopySummary:
    copy_id: str
    source: str
    target: str
    mode: str
    key: str | list[str]  # "ctid" or the key columns
    format: str  # "binary" or "text"
    rows: int  # copied by this run
    chunks: int  # copied by this run
    chunks_skipped: int  # done by an earlier attempt
    bytes: int
    seconds: float
    total_rows: int  # in the target, by the ledger
    total_chunks: int
    checksum: str | None  # "record" / "text" hash, None when checksums are off
    workers: int
    snapshots: int  # 1, or more when the source snapshot was lost and taken anew
    sequences: tuple[SequenceMove, ...] = ()
    ledger: str = ""

    @property
    def rows_per_second(self) -> int | None:
        return round(self.rows / self.seconds) if self.seconds > 0 else None

    def to_xcom(self) -> dict[str, Any]:
        return {
            "copy_id": self.copy_id,
            "source": self.source,
            "target": self.target,
            "mode": self.mode,
            "key": self.key,
            "format": self.format,
            "rows": self.rows,
            "chunks": self.chunks,
            "chunks_skipped": self.chunks_skipped,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rows_per_second": self.rows_per_second,
            "total_rows": self.total_rows,
            "total_chunks": self.total_chunks,
            "workers": self.workers,
            "snapshots": self.snapshots,
            "ledger": self.ledger,
            "verified": True,
            "verification": {
                "counts": "match",
                "counts_match": True,
                "checksums": f"match ({self.checksum} hash)" if self.checksum else "off",
                "checksums_match": True if self.checksum else None,
                "chunks_verified": self.chunks,
            },
            "sequences": [
                {"column": m.column, "sequence": m.target, "next_value": m.next_value, "moved": m.moved}
                for m in self.sequences
            ],
        }

    def table(self) -> str:
        moved = [f"{m.target} -> {m.next_value}" for m in self.sequences if m.moved]
        rows = [
            ("copy", self.copy_id),
            ("source -> target", f"{self.source} -> {self.target}"),
            ("mode / key / format", f"{self.mode} / {self.key} / {self.format}"),
            ("rows copied (this run)", f"{self.rows:,}"),
            ("chunks copied / skipped", f"{self.chunks} / {self.chunks_skipped}"),
            ("rows in target (ledger)", f"{self.total_rows:,}"),
            ("MB streamed", f"{self.bytes / 1e6:,.1f}"),
            ("seconds", f"{self.seconds:.2f}"),
            ("rows/s", f"{self.rows_per_second or 0:,}"),
            ("workers", str(self.workers)),
            ("source snapshots", str(self.snapshots) + ("" if self.snapshots == 1 else " (lost and taken anew)")),
            (
                "verification",
                "counts match, " + (f"checksums match ({self.checksum} hash)" if self.checksum else "checksums off"),
            ),
            ("sequences moved", ", ".join(moved) or "none"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
