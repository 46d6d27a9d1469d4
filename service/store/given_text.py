"""Text a user gave as an answer (a correction, an edited answer): only text with something in it.

Capture refuses a blank (whitespace-only) correction or edited text (`service.capture.check_feedback`),
but rows stored before it did are still there, and a blank answer taken as a training target
teaches the model to say nothing. Snapshots and exports read these columns through `given_text`,
so such a row counts as if the text were absent, in both the same way.

Blank means what Python's `str.strip()` strips (the check capture applies): `WHITESPACE` is that
set, written out because DuckDB's one-argument `trim` strips spaces only.
"""

from __future__ import annotations

WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""Every character for which `str.isspace()` is true (tests/test_export_verdicts.py checks it)."""


# As `chr()` calls (folded into one constant when a query is planned): the characters themselves in
# the SQL text would put line and paragraph separators into every logged or explained query.
_WHITESPACE_SQL = " || ".join(f"chr({ord(c)})" for c in WHITESPACE)


def given_text(column: str) -> str:
    """A SQL expression: `column`'s text when it holds more than whitespace, else NULL.
    `column` is SQL (a column name such as `f.correction`), never user input."""
    return f"CASE WHEN trim({column}, {_WHITESPACE_SQL}) <> '' THEN {column} END"
