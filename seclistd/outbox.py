"""The transactional outbox: outgoing mail is written in the caller's transaction.

``enqueue`` renders nothing itself: it takes a finished body, fixes the Message-ID, builds
the bytes from sanitised strings and adds one row per envelope recipient to the session the
caller is committing with its state change. The relay (``seclistd.relay``) sends rows later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.list_models import Member
from seclistd.mail import compose, verp
from seclistd.mail.loops import canonical_mailbox, counting_key
from seclistd.models import Case, Outbox

STATUSES = ("pending", "sent", "failed", "held")


def recipient_key(settings: Settings, case: Case | None, to: str) -> tuple[str | None, bool]:
    """(fingerprint to encrypt to, whether the mail may only go out encrypted).

    A team member with a fingerprint in [team] gets mail encrypted to it. A case's handler
    outside [team] gets mail only encrypted, to the key found for them when assigned (held
    without one). The reporter gets mail encrypted to the key pinned on the case; a reporter
    who wrote encrypted but sent no key gets nothing in plaintext: the mail is held until
    their key is known.
    """
    to = canonical_mailbox(to)
    for member in settings.team.members:
        if member.email == to:
            return (member.fingerprint or None), bool(member.fingerprint)
    if case is not None and case.handler and to == canonical_mailbox(case.handler):
        return case.handler_key, True
    if case is not None and to in (canonical_mailbox(case.reporter),
                                   canonical_mailbox(case.reply_to or ""),
                                   canonical_mailbox(case.answer_to or "")):
        return case.reporter_key, bool(case.reporter_key) or bool(case.encrypted)
    return None, False


def enqueue(session: Session, now: dt.datetime, settings: Settings, *, kind: str, to: str,
            subject: str, body: str, case: Case | None = None, to_name: str = "",
            in_reply_to: str | None = None, references: list[str] | None = None,
            auto: bool = False, auto_submitted: str | None = "auto-generated",
            confidential: bool = True, member: Member | None = None,
            request_id: str | None = None, encrypt_to: str | None = None,
            message_id: str | None = None,
            attachments: Sequence[compose.Attachment] = ()) -> Outbox:
    """One mail to one recipient. ``auto`` marks an automatic answer to a sender (counted by
    the per-sender limit); ``auto_submitted`` is the RFC 3834 header (None for mail a person
    wrote). ``confidential=False`` for a mail that carries nothing of the case (a
    confirmation code): encrypted when a key is known, else it may go out in plaintext. The
    recipient is written in its canonical spelling (one mailbox, one spelling: what the
    per-sender limit counts).

    Mail to a list ``member`` goes out with the member's own return path (``mail.verp``);
    confidential mail is encrypted to the member's pinned key (held without one); a
    content-free note (``confidential=False``) is encrypted when that key can be used and
    goes in plaintext when it cannot (none pinned, expired, revoked).
    ``encrypt_to`` names the key for anyone else (a join request's applicant); confidential
    mail given one may go out only encrypted to it. ``request_id`` ties it to a join request.
    ``attachments`` make the mail multipart/mixed; encrypted, they travel inside.
    """
    project = settings.project
    to = canonical_mailbox(compose.clean(to, 320))
    message_id = message_id or compose.new_message_id(project.domain)
    raw = compose.build(
        from_addr=compose.address(project.security_address, f"{project.name} security team"),
        to_addr=compose.address(to, to_name), subject=subject, body=body,
        message_id=message_id, now=now, in_reply_to=in_reply_to, references=references,
        auto_submitted=auto_submitted,
        loop_address=project.security_address, attachments=attachments)
    envelope_from = project.security_address
    if member is not None:
        # Content-free notes (a suspension, a key that expired) are encrypted when the pinned
        # key can be used and must reach the member when it cannot: the relay then sends
        # them in plaintext (must_encrypt False).
        encrypt_to, must_encrypt = member.fingerprint, True
        envelope_from = verp.bounce_address(project.security_address, member.bounce_token)
    elif encrypt_to is not None:
        must_encrypt = True
    else:
        encrypt_to, must_encrypt = recipient_key(settings, case, to)
    if member is not None:
        must_encrypt = confidential
    else:
        must_encrypt = must_encrypt and (confidential or encrypt_to is not None)
    row = Outbox(case_id=case.id if case else None, kind=kind, auto=auto,
                 request_id=request_id, member_id=member.id if member is not None else None,
                 to_addr=to, envelope_from=envelope_from,
                 subject=compose.clean(subject), message_id=message_id, raw=raw,
                 status="pending", encrypted=False, encrypt_to=encrypt_to,
                 must_encrypt=must_encrypt, attempts=0, created_at=now, next_attempt_at=now)
    session.add(row)
    return row


def automatic_answers_since(session: Session, to: str, since: dt.datetime) -> int:
    """How many automatic answers went (or are going) to the mailbox ``to`` since ``since``,
    however either spelled it, ``+tag`` and IDN spellings included (``loops.counting_key``).
    The database narrows the rows to those whose local part starts alike; the key decides."""
    key = counting_key(to)
    base = key.rpartition("@")[0] or key
    pattern = base.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    t = Outbox.__table__.c
    rows = session.connection().execute(select(t.to_addr).where(
        t.auto.is_(True), t.created_at >= since, t.to_addr.like(pattern, escape="\\"))
    ).scalars()
    return sum(1 for addr in rows if counting_key(addr) == key)


def all_automatic_answers_since(session: Session, since: dt.datetime) -> int:
    """How many automatic answers went (or are going) to anyone since ``since``."""
    t = Outbox.__table__.c
    return session.connection().execute(select(func.count()).where(
        t.auto.is_(True), t.created_at >= since)).scalar() or 0
