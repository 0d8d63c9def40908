"""Closed sets of words (a copy's mode, a keyset's kind, ...) as enums that still read as words.

A member equals its word and prints as it, so words from a DAG's parameters or read back from the
ledger work unchanged, and ``parse`` turns a word into a member or says which words there are.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from airflow_pool_provider.errors import CopyMistake, Mistake

_Word = TypeVar("_Word", bound="Choice")


class Choice(str, Enum):
    """One word of a closed set."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls: type[_Word], name: str, value: object, mistake: type[Mistake] = CopyMistake) -> _Word:
        """The member ``value`` names; else ``mistake`` naming parameter ``name`` and the valid words."""
        try:
            return cls(value)
        except ValueError:
            raise mistake(f"{name} must be one of {', '.join(cls)}, got {value!r}") from None
