"""Mail syntax of a list member's own commands: the ``X-LEAVE`` keyword line (DESIGN.md §4,
members' keywords), and whether a mail offers an OpenPGP key at all.

Syntax only: who may leave, and what a key offer does, is ``workflows.member_commands`` and
``workflows.member_rotation``. Every scan here is anchored per line or reads a capped
prefix, so its cost is linear in the text.
"""

from __future__ import annotations

import re

LEAVE = "X-LEAVE"
MEMBER_KEYWORDS = (LEAVE,)
_LEAVE_LINE = re.compile(r"^X-LEAVE\b", re.M)
_LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SCAN_CHARS = 256 * 1024
# What an offered key looks like in raw bytes (an armored block, a keys part, Autocrypt).
_KEY_MARKERS = (b"PGP PUBLIC KEY", b"pgp-keys", b"utocrypt")


def is_member_command(text: str) -> bool:
    """Whether the text has an ``X-LEAVE`` keyword line (anywhere: its signature decides)."""
    return bool(_LEAVE_LINE.search((text or "")[:SCAN_CHARS]))


def list_argument(arg: str) -> str | None:
    """The list name an ``X-LEAVE: NAME`` names (None: every list); ValueError when the
    argument is not a list name."""
    arg = (arg or "").strip()
    if not arg:
        return None
    if not _LIST_NAME.fullmatch(arg):
        raise ValueError(arg)
    return arg


def offers_key(raw: bytes) -> bool:
    """Whether the raw mail may carry a public key (a cheap look; gpg judges later)."""
    return any(marker in raw for marker in _KEY_MARKERS)
