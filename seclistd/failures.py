"""Failures of one row (a case in a sweep, an outbox row in the relay): what to record, when
to try again.

``describe`` turns an exception into the one line stored on the row, shown in ``status``
and ``outbox list`` and mailed to the team: its types and where it was raised, never its
text (``errors.describe``). ``backoff`` is Postfix's schedule: 300 s doubling to 4000 s.
"""

from __future__ import annotations

import re

from seclistd import errors

FIRST_RETRY = 300
MAX_BACKOFF = 4000

_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]+")


def backoff(failures: int) -> int:
    """Seconds before the next try after ``failures`` failed tries (Postfix's defaults)."""
    return min(FIRST_RETRY * 2 ** max(failures - 1, 0), MAX_BACKOFF)


def describe(exc: BaseException) -> str:
    """The one line stored on the row: the exception's types and where it was raised, never
    its text (``errors.describe``: a database error's text holds the SQL parameters, another
    error's may quote message content)."""
    return errors.describe(exc)


def clean_text(text: str, limit: int = 2000) -> str:
    """An error text fit to store: no NUL or other control characters but newlines, valid
    UTF-8, bounded (a next hop's answer is not ours to trust)."""
    text = _CONTROL_BUT_NEWLINE.sub(" ", text).encode("utf-8", "replace").decode("utf-8")
    return text[:limit]
