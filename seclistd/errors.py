"""Describing a failure without its content, for logs and quarantine reasons.

An exception's text may carry what the code was working on: a SQLAlchemy error's text holds
the SQL parameters (unless ``hide_parameters``), a PostgreSQL error quotes the value it
refused ('invalid input syntax for type integer: "…"'), a codec error quotes the string it
could not encode. Message content must never reach a log or a quarantine reason, so what we
write down is the exception's type (and the types it was raised from) and where it happened:
file, line and function of each frame, never a message, a value or a local variable.
"""

from __future__ import annotations

import traceback


def _types(exc: BaseException) -> list[str]:
    """The exception's type and, for wrappers (SQLAlchemy's DBAPIError), the driver's."""
    names = [type(exc).__name__]
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        names.append(f"{type(orig).__module__}.{type(orig).__name__}")
    return names


class Explained(Exception):
    """An error whose text is our own words and never carries content (it says why, not
    what): ``describe`` keeps its text."""


def describe(exc: BaseException) -> str:
    """One line: the types and the innermost frame, e.g. 'DataError (psycopg.DataError) at
    seclistd/pipeline.py:60 in process'; an ``Explained`` error's own words come first."""
    names = _types(exc)
    text = names[0] + (f" ({', '.join(names[1:])})" if names[1:] else "")
    if isinstance(exc, Explained) and str(exc):
        return f"{text}: {' '.join(str(exc).split())[:300]}"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        last = frames[-1]
        text += f" at {_short(last.filename)}:{last.lineno} in {last.name}"
    return text


def trace(exc: BaseException) -> str:
    """A traceback without messages: every frame of the exception and of its causes."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines.append(" / ".join(_types(current)))
        for frame in traceback.extract_tb(current.__traceback__):
            lines.append(f"  {_short(frame.filename)}:{frame.lineno} in {frame.name}")
        current = current.__cause__ or current.__context__
        if current is not None:
            lines.append("raised while handling:")
    return "\n".join(lines)


def _short(filename: str) -> str:
    marker = "/seclistd/"
    at = filename.rfind(marker)
    return "seclistd/" + filename[at + len(marker):] if at >= 0 else filename
