"""One-time tokens that prove a key: made here, mailed encrypted to the key, answered on a
``Token: …`` line (``mail.request_syntax.tokens_in``).

Shared by the join requests' proof of key (``workflows.requests``) and the members' key
rotation (``workflows.member_rotation``). Only a token's SHA-256 is ever stored; a token is
compared in constant time and counts once (the caller clears the stored digest).
"""

from __future__ import annotations

import hashlib
import secrets

from seclistd.mail import request_syntax


def new_token() -> tuple[str, str]:
    """(token to mail, its SHA-256 to store)."""
    token = secrets.token_hex(16)
    return token, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.strip().lower().encode()).hexdigest()


def matches(token: str, stored: str | None) -> bool:
    """Whether ``token`` is the one whose digest is ``stored`` (None never matches)."""
    return stored is not None and secrets.compare_digest(digest(token), stored)


def offered(text: str) -> list[str]:
    """The tokens a mail's own (unquoted) ``Token: …`` lines carry, at most a few."""
    return request_syntax.tokens_in(text)
