"""What a mail address may hold, ASCII or internationalised (RFC 6531/6532).

Shared by intake (a From, Sender or Return-Path we accept) and by outgoing mail (a recipient
we write to), so that an address read from a message and one we send to obey one rule.
"""

from __future__ import annotations

import unicodedata

# Controls, format characters (bidi overrides, zero width), surrogates, private use,
# unassigned code points and separators; U+FFFD marks bytes that could not be decoded.
_NOT_IN_ADDRESS = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"))


def address_problem(addr: str) -> str | None:
    """Why ``addr`` (an addr-spec) is no address to read or write, or None."""
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        return "has no local part and domain"
    if "\ufffd" in addr or any(unicodedata.category(c) in _NOT_IN_ADDRESS for c in addr
                               if not (c.isascii() and c.isprintable())):
        return "holds characters no mail address may hold"
    return None


def is_international(addr: str) -> bool:
    """Whether sending to (or from) ``addr`` needs SMTPUTF8."""
    return not addr.isascii()
