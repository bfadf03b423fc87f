"""Mail syntax of join requests: the ``JOIN-…`` ID and its subject tag, the keyword lines
that act on a request (``X-VOUCH``, ``X-REQUEST`` with ``X-APPROVE``/``X-DENY``), and the
``Token: …`` line that proves an applicant's key (DESIGN.md §4).

Syntax only: who may use a keyword is ``seclistd.workflows.request_commands``. Every scan
here is linear: anchored patterns applied line by line, or a capped prefix of the text.
"""

from __future__ import annotations

import re

PREFIX = "JOIN"
_ID = r"JOIN-\d{4}-\d{4,6}"
ID_PATTERN = re.compile(_ID)
_TAG = re.compile(rf"\[({_ID})\]")
# Keyword lines that make a mail a command on a join request (members and team).
_JOIN_KEYWORD = re.compile(r"^X-(?:VOUCH|REQUEST|APPROVE|DENY)\b", re.M)
_TARGET_LINE = re.compile(rf"^X-(?:VOUCH|REQUEST)[ \t]*:[ \t]*({_ID})", re.M)
_TOKEN_LINE = re.compile(r"token[ \t]*:[ \t]*([A-Za-z0-9]{16,64})(?![A-Za-z0-9])", re.I)
TEAM_KEYWORDS = {"X-APPROVE": "approve", "X-DENY": "deny"}
MAX_TOKENS_PER_MAIL = 5
SCAN_CHARS = 256 * 1024  # of a mail's text, where keyword lines and tokens are looked for


def tagged_ids(subject: str) -> list[str]:
    """The ``[JOIN-…]`` tags of a subject, in order."""
    return _TAG.findall((subject or "")[:2000])


def is_join_command(text: str) -> bool:
    """Whether the text has a keyword line of a join-request command (not a proof of it)."""
    return bool(_JOIN_KEYWORD.search((text or "")[:SCAN_CHARS]))


def named_request(*texts: str) -> str | None:
    """The first ``X-VOUCH:``/``X-REQUEST:`` target anywhere in these texts: where to record a
    refusal, nothing more."""
    for text in texts:
        match = _TARGET_LINE.search((text or "")[:SCAN_CHARS])
        if match:
            return match.group(1)
    return None


def is_request_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value or ""))


def tokens_in(text: str) -> list[str]:
    """The tokens on ``Token: …`` lines that are not quoted (``>``), lower-cased, at most a
    few. Line by line, so the work is linear in the text."""
    found: list[str] = []
    for line in (text or "")[:SCAN_CHARS].splitlines():
        stripped = line.lstrip(" \t")
        if stripped.startswith(">") or stripped[:6].lower() != "token:":
            continue
        match = _TOKEN_LINE.match(stripped[:200])
        if match and match.group(1).lower() not in found:
            found.append(match.group(1).lower())
            if len(found) >= MAX_TOKENS_PER_MAIL:
                break
    return found
