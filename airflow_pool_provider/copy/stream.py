"""One chunk's bytes: ``COPY ... TO STDOUT`` on the source piped into ``COPY ... FROM STDIN``.

The source side runs in a helper thread and writes into an OS pipe; the target side reads from it
in the calling thread. The pipe (1 MiB at most) is the only buffer, so memory stays flat however
large the chunk, and reading overlaps writing. Per-row work stays in C: the source writes
through a ``BufferedWriter`` and the target reads large blocks.
"""

from __future__ import annotations

import fcntl
import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

_PIPE_SIZE = 1 << 20
_BLOCK = 1 << 17
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(slots=True)
class StreamResult:
    source_rows: int
    target_rows: int
    bytes: int
    after_source: Any  # what ``after_source`` returned


class _PipeReader:
    """What the target's COPY FROM reads: the pipe, with a byte count."""

    __slots__ = ("_raw", "_view", "bytes")

    def __init__(self, fd: int) -> None:
        self._raw = io.FileIO(fd, "rb")
        self._view = memoryview(bytearray(_BLOCK))
        self.bytes = 0

    def read(self, size: int = _BLOCK) -> bytes:
        # Read into one reused buffer, then copy out exactly what arrived: a fresh block per read,
        # shrunk to the bytes received, fragments the C heap and RSS grows with every chunk.
        n = self._raw.readinto(self._view[:size])
        self.bytes += n
        return bytes(self._view[:n])

    def close(self) -> None:
        if not self._raw.closed:
            self._raw.close()


def pipe(
    source_cur,
    copy_out: sql.Composable,
    target_cur,
    copy_in: sql.Composable,
    after_source: Callable[[], Any] | None = None,
) -> StreamResult:
    """Stream ``copy_out`` on the source into ``copy_in`` on the target; raise if either fails.

    ``after_source`` runs on the source thread once its COPY is done, while the (slower) target
    is still loading: work placed there costs no wall time. If one side fails, its end of the
    pipe is closed so the other side ends too instead of blocking forever.
    """
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:  # a smaller system limit: the default pipe size still works
        pass
    reader = _PipeReader(read_fd)
    writer = io.BufferedWriter(io.FileIO(write_fd, "wb"), buffer_size=_BLOCK)
    failure: list[BaseException] = []
    outcome: dict[str, Any] = {"rows": 0, "after": None}

    def produce() -> None:
        try:
            try:
                source_cur.copy_expert(copy_out, writer, size=_BLOCK)
                outcome["rows"] = source_cur.rowcount
                writer.flush()
            finally:
                try:
                    writer.close()  # EOF for the target
                except OSError:
                    pass
            if after_source is not None:
                outcome["after"] = after_source()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)

    thread = threading.Thread(target=produce, name="copy-source", daemon=True)
    thread.start()
    try:
        target_cur.copy_expert(copy_in, reader, size=_BLOCK)
    except BaseException as target_failure:
        reader.close()  # the source's next write fails with EPIPE and its COPY ends
        thread.join()
        if failure and not isinstance(failure[0], OSError):
            # The source failed first (the target saw a cut stream): report the cause.
            raise failure[0] from target_failure
        raise
    finally:
        reader.close()
        thread.join()
    if failure:
        raise failure[0]
    return StreamResult(outcome["rows"], target_cur.rowcount, reader.bytes, outcome["after"])
