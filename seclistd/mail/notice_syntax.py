"""Mail syntax around an embargoed notice: the members' keywords on it (``X-ACK``,
``X-STATUS``, ``X-LEAK``), the copy tokens a mail may carry, and the case IDs it names.

Syntax only: what a keyword does and who may give it is ``workflows.discussion`` and
``workflows.leaks``. Every scan reads a capped prefix with patterns that do bounded work per
character (no lazy ``.*?``, no ``^\\s*`` under ``re.M``), so its cost is linear.
"""

from __future__ import annotations

import re

ACK = "X-ACK"
STATUS = "X-STATUS"
LEAK = "X-LEAK"
CASE = "X-CASE"
NOTICE_KEYWORDS = (ACK, STATUS)
VENDOR_STATUSES = ("affected", "not-affected", "unknown")
SCAN_CHARS = 256 * 1024
MAX_CANDIDATES = 200  # distinct token-shaped words looked up, per mail
_LEAK_LINE = re.compile(r"^X-LEAK\b", re.M)
# A token-shaped word: 16 to 64 letters, digits, '-' or '_' standing alone. The look-behind
# fails at once inside a longer run, so a long run costs at most 64 steps at its start.
_WORD = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{16,64}(?![A-Za-z0-9_-])")


def has_leak_keyword(text: str) -> bool:
    """Whether the text has an ``X-LEAK`` keyword line (its signature decides later)."""
    return bool(_LEAK_LINE.search((text or "")[:SCAN_CHARS]))


def token_candidates(*texts: str) -> list[str]:
    """Distinct token-shaped words of the texts' first ``SCAN_CHARS`` characters, at most
    ``MAX_CANDIDATES``: which of them are copy tokens is for the database to say."""
    found: dict[str, None] = {}
    for text in texts:
        for match in _WORD.finditer((text or "")[:SCAN_CHARS]):
            found.setdefault(match.group(0), None)
            if len(found) >= MAX_CANDIDATES:
                return list(found)
    return list(found)


def message_id_parts(message_ids: list[str]) -> list[str]:
    """The dot-separated pieces of Message-IDs' local parts (a copy's Message-ID is
    ``<CASEID.TOKEN.seclistd@domain>``), for looking up the token in them."""
    parts: dict[str, None] = {}
    for mid in message_ids[:100]:
        local = mid.strip("<> \t")[:400].partition("@")[0]
        for piece in local.split(".")[:8]:
            if 16 <= len(piece) <= 64:
                parts.setdefault(piece, None)
    return list(parts)


def case_ids_named(prefix: str, *texts: str) -> list[str]:
    """The case IDs (``PREFIX-YYYY-NNNN``) the texts name, in order, at most 20."""
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(prefix)}-\d{{4}}-\d{{4,6}}(?![0-9])")
    found: dict[str, None] = {}
    for text in texts:
        for match in pattern.finditer((text or "")[:SCAN_CHARS]):
            found.setdefault(match.group(0), None)
            if len(found) >= 20:
                return list(found)
    return list(found)


def vendor_status(arg: str) -> str | None:
    """The ``X-STATUS`` value as stored, or None when it is not one of the allowed ones."""
    value = (arg or "").strip().lower().replace("_", "-").replace(" ", "-")
    return value if value in VENDOR_STATUSES else None


def redact(text: str, tokens: list[str]) -> str:
    """The text with each of ``tokens`` replaced: a re-sent review never carries the copy
    token its author quoted (a leak of the re-sent copy would name the wrong member)."""
    for token in tokens:
        if token:
            text = text.replace(token, "[copy token removed]")
    return text
