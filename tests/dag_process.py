"""``airflow dags test`` in a child process, its output read line by line with arrival times."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any


class DagTestProcess:
    """Runs one ``airflow dags test DAG -c CONF`` in its own process group; always stop() it."""

    def __init__(self, dag_id: str, conf: dict[str, Any]) -> None:
        command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, "-c", json.dumps(conf)]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def seen(self, pattern: str) -> float | None:
        """When a line matching ``pattern`` (a regex) arrived, if one has."""
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def signal(self, signum: int = signal.SIGTERM) -> float:
        """Send ``signum`` to the process itself (what Airflow's supervisor does); returns when."""
        self.process.send_signal(signum)
        return time.monotonic()

    def kill_group(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill_group()
        self.process.wait(30)
        self._reader.join(10)  # the output is read to its end before the pipe is closed
        self.process.stdout.close()
