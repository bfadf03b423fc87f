"""Per-member return paths (VERP): ``security+bounce-TOKEN@domain`` for mail to a list member.

A delivery status notification comes back to the envelope sender, so the address it reached
names the member whose mail bounced, without trusting anything the bounce says about itself.
With Postfix, ``recipient_delimiter = +`` delivers these to the security mailbox itself.
"""

from __future__ import annotations

PREFIX = "bounce-"
_TOKEN_CHARS = frozenset("0123456789abcdef")


def bounce_address(security_address: str, token: str) -> str:
    """The return path for mail to the member whose bounce token is ``token``."""
    local, _, domain = security_address.rpartition("@")
    return f"{local}+{PREFIX}{token}@{domain}"


def token_of(recipient: str, security_address: str) -> str | None:
    """The bounce token in ``recipient`` when it is one of our return paths, else None.

    Case-insensitive on the whole address (mail systems change case); the token is hex.
    """
    local, _, domain = security_address.lower().rpartition("@")
    r_local, _, r_domain = recipient.strip().strip("<>").lower().rpartition("@")
    if r_domain.rstrip(".") != domain.rstrip(".") or not r_local.startswith(f"{local}+{PREFIX}"):
        return None
    token = r_local[len(local) + 1 + len(PREFIX):]
    if not token or len(token) > 64 or not set(token) <= _TOKEN_CHARS:
        return None
    return token
