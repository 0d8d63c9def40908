"""Exponential backoff with jitter, for every retry loop of the package.

Jitter keeps clients that failed together (a server restart drops them all) from retrying in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays that double from ``first`` up to ``cap`` seconds, each within ``jitter`` of its value."""

    first: float
    cap: float
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first)."""
        return min(self.first * 2 ** (attempt - 1), self.cap) * random.uniform(1 - self.jitter, 1 + self.jitter)
