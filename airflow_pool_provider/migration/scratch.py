"""The migration's temporary folders (a password file, a schema dump, pg_restore's SQL): removed
when the work ends, however it ends, and, when a killed process could not, by the next stage.

Each folder's name says which process made it, on which host (``pool-provider-pgpass-1234@host.x``):
a later stage removes those of this user whose process is gone, and never another's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "pool-provider-"
#: ``pool-provider-<purpose>-<pid>@<host>.<random>``, as :func:`folder` names them.
_NAME = re.compile(r"^pool-provider-(?P<purpose>\w+)-(?P<pid>\d+)@(?P<host>.+)\.\w+$")


@contextmanager
def folder(purpose: str) -> Iterator[Path]:
    """A new private folder (0700) for ``purpose``, removed with what it holds when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{purpose}-{os.getpid()}@{socket.gethostname()}."))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Leftover:
    """A folder a process of this user on this host made and did not remove."""

    path: Path
    pid: int


def leftovers(root: Path | None = None) -> list[Leftover]:
    """The folders in ``root`` (the temporary directory) of this user's processes on this host
    that are gone."""
    root = Path(tempfile.gettempdir()) if root is None else root
    found = []
    host = socket.gethostname()
    for path in root.glob(PREFIX + "*"):
        match = _NAME.match(path.name)
        if match is None or match["host"] != host:
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not _alive(int(match["pid"])):
            found.append(Leftover(path, int(match["pid"])))
    return found


def remove_leftovers(log: logging.Logger | logging.LoggerAdapter, root: Path | None = None) -> list[Path]:
    """Remove what killed processes left (a password file among them), and say so."""
    removed = []
    for leftover in leftovers(root):
        shutil.rmtree(leftover.path, ignore_errors=True)
        removed.append(leftover.path)
        log.warning("removed %s, left by process %d, which ended without removing it", leftover.path, leftover.pid)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True
