"""RFC 3834 and mail-loop rules: when a message must get no automatic answer.

Each rule returns a reason (for the case's audit trail) or None. The message itself is
always recorded; only the automatic answer is withheld.
"""

from __future__ import annotations

import contextlib
import re

from seclistd.mail.parse import ParsedMail

# RFC 5322 atext, plus any non-ASCII character (RFC 6532); a dot-atom is atoms joined by dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
MAX_ADDRESS = 998

DAEMON_LOCALPARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply",
                     "donotreply")


def canonical_mailbox(addr: str) -> str:
    """The one spelling of a mailbox, so that every way of writing it is counted once.

    ``"bs"@x``, ``BS@X.`` and ``@r:bs@x`` all give ``bs@x``: angle brackets and a source
    route (RFC 5321 says to ignore it) are dropped, the domain loses a trailing dot, a
    quoted local part loses its quotes when the unquoted form means the same (a dot-atom),
    and everything is lower case: the local part is case-sensitive on paper but not at any
    mail host we answer, and our answers already went out in lower case. The result is also
    where automatic answers are sent, which is the same mailbox. Linear in the input.
    """
    text = addr.strip()[:MAX_ADDRESS]
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if text.startswith("@") and ":" in text:  # @a,@b:local@domain
        text = text.partition(":")[2].strip()
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    domain = domain.strip().rstrip(".")
    local = local.strip()
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = _unquote(local[1:-1])
    return f"{local}@{domain}".lower()


def counting_key(addr: str) -> str:
    """What the per-sender cap counts: the canonical mailbox without a ``+tag`` on its local
    part, its domain in ASCII (IDNA): ``v+1@exämple.com`` and ``V@xn--exmple-cua.com.`` are
    one target of backscatter. Only for counting: mail still goes to the canonical
    spelling."""
    local, at, domain = canonical_mailbox(addr).rpartition("@")
    if not at:
        return local + domain
    if not local.startswith('"'):
        local = local.partition("+")[0] or local
    with contextlib.suppress(UnicodeError):  # not a valid IDN: counted as written
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}"


def _unquote(quoted: str) -> str:
    """A quoted local part's content: bare when it is a dot-atom, else minimally quoted."""
    chars, escaped = [], False
    for char in quoted:
        if escaped or char != "\\":
            chars.append(char)
            escaped = False
        else:
            escaped = True
    inner = "".join(chars)
    if _DOT_ATOM.fullmatch(inner):
        return inner
    return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
    if mail.from_addr and canonical_mailbox(mail.from_addr) in own_addresses:
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
    """Where an automatic answer goes: the return path, else From (RFC 3834 §4), in its
    canonical spelling (the per-sender limit counts it, and it is the same mailbox)."""
    if mail.return_path:
        return canonical_mailbox(mail.return_path)
    if mail.return_path == "":
        return None
    return canonical_mailbox(mail.from_addr) if mail.from_addr else None
