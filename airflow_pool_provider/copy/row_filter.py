"""The row filter (``where``): one boolean expression over the source table, and nothing more.

The filter is spliced into every chunk's ``WHERE (filter) AND key range``. Text that closes its
parentheses early (``1=1) OR (1=1``) would escape the range: each chunk would select the whole
table. So the filter is tokenized (with sqlparse, which Airflow's common-sql already installs) and
refused when it holds a comment, a ``;`` outside a literal, or a parenthesis that closes more
than it opens. Where sqlparse and PostgreSQL could read a token differently (a backslash in a
standard string or a quoted name, a dollar quote glued to a name), the filter is refused too.
Then PostgreSQL itself checks it against the source table (``EXPLAIN``) before anything is
written, and checks that it stays inside its parentheses, however it was tokenized. It runs with
the source connection's rights, in read-only transactions: so a source role that may read server
files, end other sessions or run programs (a superuser, or a member of the predefined roles that
allow it) gets no filter at all, since whoever writes the filter would wield those powers.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
from psycopg2 import sql
from sqlparse import tokens as T
from sqlparse.lexer import Lexer

from airflow_pool_provider.copy.names import quote_ident
from airflow_pool_provider.errors import FilterError, Kind, classify, first_line

#: Longest filter accepted; a filter is a condition, not a program.
MAX_LENGTH = 4000


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A checked filter; ``RowFilter.parse(None)`` or ``""`` is "every row"."""

    text: str | None
    # Composed by the DAG's own code (names quoted, values as literals), not typed by whoever
    # triggers the copy: not refused for a powerful source role.
    from_dag: bool = False

    @classmethod
    def parse(cls, text: str | None, from_dag: bool = False) -> RowFilter:
        if text is None or (isinstance(text, str) and not text.strip()):
            return cls(None)
        if not isinstance(text, str):
            raise FilterError(f"where must be a string with one SQL condition, got {text!r}")
        if len(text) > MAX_LENGTH:
            raise FilterError(f"where is {len(text)} characters long; at most {MAX_LENGTH} are accepted")
        problem = _first_problem(text)
        if problem:
            raise FilterError(f"where {text!r} is not one SQL condition: {problem}")
        return cls(text.strip(), from_dag)

    def clause(self) -> sql.Composable:
        """``(filter)``, or ``true``. The filter went through :meth:`parse`."""
        return sql.SQL("({})").format(sql.SQL(self.text)) if self.text else sql.SQL("true")

    def check(self, cur, table: sql.Composable) -> None:
        """Let PostgreSQL plan the filter on the source table; FilterError if it cannot, or if the
        filter does not stay inside its parentheses.

        The plan of ``WHERE false AND (filter)`` folds to a constant false whatever the filter
        is, unless the text closes the parentheses early and adds an ``OR``: then a scan remains.
        This holds whatever a tokenizer made of the text. Runs in a savepoint, so the caller's
        transaction (and its snapshot) survives a bad filter.
        """
        if not self.text:
            return
        if not self.from_dag:
            self._refuse_powerful_role(cur)
        cur.execute("SAVEPOINT row_filter_check")
        try:
            cur.execute(
                sql.SQL("EXPLAIN (FORMAT JSON, COSTS OFF) SELECT 1 FROM {} WHERE false AND {}").format(
                    table, self.clause()
                )
            )
            plan = cur.fetchone()[0][0]["Plan"]
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT row_filter_check")
            if classify(exc) is not Kind.MISTAKE:
                raise  # a timeout, a cancel, a lost connection: not the filter's fault
            raise FilterError(
                f"where {self.text!r} does not work on the source table: {first_line(exc)}. "
                "It must be a boolean condition on the source table's columns."
            ) from exc
        cur.execute("RELEASE SAVEPOINT row_filter_check")
        if plan.get("Node Type") != "Result" or plan.get("One-Time Filter") != "false" or plan.get("Plans"):
            raise FilterError(f"where {self.text!r} is not one SQL condition: it reaches outside its parentheses")

    def _refuse_powerful_role(self, cur) -> None:
        """FilterError if the session's role has (or may take, by SET ROLE) powers beyond reading
        tables: the filter is SQL from whoever triggers the copy, and it would run with them."""
        cur.execute(_POWERS_QUERY)
        role, *held = cur.fetchone()
        powers = [power for power, has in zip(_POWERS, held, strict=True) if has]
        if held[0]:
            powers = powers[:1]  # a superuser holds all the others too
        if powers:
            raise FilterError(
                f"where {self.text!r} is refused: the source connection's role {quote_ident(role)} "
                f"{'; '.join(powers)}. The filter is SQL written by whoever triggers the copy, and it runs "
                "with that role's powers. Use a source connection whose role has none of them: one that "
                "may only read the tables it copies (GRANT SELECT ON the table TO that role)."
            )


#: What a filter could do with the source role, and the query that tells which the role has.
_POWERS = (
    "is (or may become) a superuser: a filter could do anything on the source server",
    "is a member of pg_read_server_files: a filter could read any file of the server (pg_read_file)",
    "is a member of pg_signal_backend: a filter could end other sessions (pg_terminate_backend)",
    "is a member of pg_execute_server_program: a filter could run programs on the server",
)
_POWERS_QUERY = """SELECT session_user,
    EXISTS (SELECT FROM pg_roles r WHERE r.rolsuper AND pg_has_role(session_user, r.oid, 'MEMBER')),
    pg_has_role(session_user, 'pg_read_server_files', 'MEMBER'),
    pg_has_role(session_user, 'pg_signal_backend', 'MEMBER'),
    pg_has_role(session_user, 'pg_execute_server_program', 'MEMBER')"""


def _first_problem(text: str) -> str | None:
    """What makes ``text`` more or other than one expression, or None."""
    tokens = list(Lexer.get_default_instance().get_tokens(text))
    # The text outside literals, each literal standing as one space: a comment may start across
    # two tokens ("+/" then "*"), and PostgreSQL ends an operator where a comment starts.
    code = "".join(" " if _is_literal(t) else v for t, v in tokens)
    if any(t in T.Comment for t, _ in tokens) or "--" in code or "/*" in code:
        return "comments are not allowed"
    if not code.isascii() or "`" in code:
        # Letters, spaces or quotes beyond ASCII are read differently by different parsers.
        return "characters beyond ASCII (and back-quotes) are only allowed inside quotes"
    depth = 0
    previous: tuple[object, str] = (T.Whitespace, "")
    for ttype, value in tokens:
        if ttype in T.Error:
            return f"cannot read it at {value!r} (an unterminated quote?)"
        if ttype in T.Punctuation and value == ";":
            return "';' outside a string ends the statement"
        if ttype in T.Punctuation and value == "(":
            depth += 1
        elif ttype in T.Punctuation and value == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes more parentheses than were opened"
        elif ttype in T.String.Single and "\\" in value and not _is_escape_prefix(previous):
            return r"a backslash in a string is read differently by different parsers; write E'...\...'"
        elif ttype in T.String.Symbol and ("\\" in value or not value.startswith('"')):
            return "a backslash or back-quote in a quoted name is not allowed"
        elif ttype is T.Literal and (
            not _dollar_tag(value).isascii()
            or (previous[0] not in T.Whitespace and previous[1] not in ("(", ",") and previous[0] not in T.Operator)
        ):
            return "a dollar-quoted string must be separated from the word before it, with an ASCII tag"
        previous = (ttype, value)
    if depth:
        return "a '(' is never closed"
    return None


def _is_literal(ttype: object) -> bool:
    return ttype in T.String.Single or ttype in T.String.Symbol or ttype is T.Literal


def _dollar_tag(value: str) -> str:
    return value[1 : value.index("$", 1)] if value.startswith("$") and "$" in value[1:] else ""


def _is_escape_prefix(token: tuple[object, str]) -> bool:
    """An ``E`` glued to the string makes it an escape string, where a backslash escapes."""
    ttype, value = token
    return ttype in T.Name and value in ("E", "e")
