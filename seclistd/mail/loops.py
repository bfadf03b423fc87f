"""RFC 3834 and mail-loop rules: when a message must get no automatic answer.

Each rule returns a reason (for the case's audit trail) or None. The message itself is
always recorded; only the automatic answer is withheld.
"""

from __future__ import annotations

from seclistd.mail.parse import ParsedMail

DAEMON_LOCALPARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply",
                     "donotreply")


def is_auto_submitted(mail: ParsedMail) -> bool:
    value = mail.header("auto-submitted").strip().lower()
    return bool(value) and value.split(";")[0].strip() != "no"


def is_bounce(mail: ParsedMail) -> bool:
    """A delivery status notification (or a mail from a mailer daemon)."""
    if mail.content_type == "multipart/report" and mail.report_type == "delivery-status":
        return True
    local = (mail.from_addr or "").partition("@")[0]
    return local == "mailer-daemon" or (mail.return_path == "" and local == "postmaster")


def is_auto_reply(mail: ParsedMail) -> bool:
    if is_auto_submitted(mail):
        return True
    if mail.has_header("x-autoreply") or mail.has_header("x-autorespond"):
        return True
    return mail.header("precedence").strip().lower() == "auto_reply"


def loop_reason(mail: ParsedMail, own_addresses: frozenset[str], max_received: int) -> str | None:
    """Why this message is part of a mail loop, or None."""
    if mail.received_count > max_received:
        return (f"mail loop: {mail.received_count} Received headers, over the limit of "
                f"{max_received} (limits.max_received)")
    loops = {v.strip().lower() for v in mail.headers.get("x-loop", [])}
    if loops & own_addresses:
        return "mail loop: X-Loop names our own address"
    if mail.from_addr in own_addresses:
        return "mail loop: the message is from our own address"
    return None


def no_autoreply_reason(mail: ParsedMail, own_addresses: frozenset[str]) -> str | None:
    """Why this sender must get no automatic answer (RFC 3834 and Mailman's rules), or None."""
    if mail.return_path == "":
        return "null return path <>"
    if is_auto_submitted(mail):
        return f"Auto-Submitted: {mail.header('auto-submitted').strip()[:40]}"
    if is_auto_reply(mail):
        return "the message is an automatic reply"
    if mail.has_header("precedence"):
        return f"Precedence: {mail.header('precedence').strip()[:40]}"
    if any(name.startswith("list-") for name in mail.headers):
        return "list mail (List-* header)"
    if mail.has_header("x-auto-response-suppress"):
        return "X-Auto-Response-Suppress is set"
    target = reply_address(mail)
    if not target:
        return "no address to answer"
    if target in own_addresses:
        return "the answer would go to our own address"
    local = target.partition("@")[0]
    if local in DAEMON_LOCALPARTS:
        return f"{local} never gets automatic answers"
    if local.endswith("-request") or local.startswith("owner-") or local.endswith("-owner"):
        return f"{local} is a list administrative address"
    return None


def reply_address(mail: ParsedMail) -> str | None:
    """Where an automatic answer goes: the return path, else From (RFC 3834 §4)."""
    if mail.return_path:
        return mail.return_path
    if mail.return_path == "":
        return None
    return mail.from_addr
