"""Outgoing messages built only from sanitised strings.

Every value that may have come from a received message goes through ``clean`` (no CR, LF,
NUL or other control characters, bounded length) before it becomes a header, so a subject
carrying an encoded CR/LF (CVE-2024-6923) cannot add a header. Addresses go through
``email.headerregistry.Address``, which refuses anything that is not one address.
"""

from __future__ import annotations

import datetime as dt
import re
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
SMTP_POLICY = policy.SMTP.clone(max_line_length=78)


def clean(value: str | None, limit: int = 200) -> str:
    """A single-line, printable, bounded version of ``value``."""
    text = _CONTROL.sub(" ", value or "")
    text = " ".join(text.split())
    return text[:limit].rstrip()


def address(addr: str, name: str = "") -> Address:
    local, _, domain = clean(addr, 320).rpartition("@")
    return Address(display_name=clean(name, 100), username=local, domain=domain)


def new_message_id(domain: str) -> str:
    return make_msgid(idstring="seclistd", domain=clean(domain, 200))


def tagged_subject(tag: str, subject: str) -> str:
    """``[TAG] subject`` with the tag once, whatever the original subject carried."""
    original = clean(subject, 160)
    original = original.replace(f"[{tag}]", "").strip()
    return clean(f"[{tag}] {original}" if original else f"[{tag}]", 200)


def build(*, from_addr: Address, to_addr: Address, subject: str, body: str, message_id: str,
          now: dt.datetime, in_reply_to: str | None = None, references: list[str] | None = None,
          auto_submitted: str | None = None, loop_address: str | None = None) -> bytes:
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = from_addr
    msg["To"] = to_addr
    msg["Subject"] = clean(subject, 200)
    msg["Date"] = format_datetime(now.astimezone(dt.UTC))
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = clean(in_reply_to, 998)
    refs = [clean(r, 998) for r in (references or []) if r][-20:]
    if refs:
        msg["References"] = " ".join(refs)
    if auto_submitted:
        msg["Auto-Submitted"] = auto_submitted
    if loop_address:
        msg["X-Loop"] = clean(loop_address, 320)
    msg.set_content(body, charset="utf-8")
    return msg.as_bytes(policy=SMTP_POLICY)
