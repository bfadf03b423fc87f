"""Mail to list members that may carry embargoed content, and what happens without a key
or while the member is suspended.

Anything confidential goes to a member only encrypted to the member's pinned key. A member
without one (never sent, or not yet proved) gets the mail held, not sent, and one short
plaintext note with no content: something is waiting, send a key. When a key is pinned
(``release_held``) the held mail goes out encrypted to it. A suspended member gets nothing
confidential: such mail is held, and what was still waiting to go is held at suspension
(``hold_for``), released when the member is active again; a removed member's is failed
(``cancel_for``). ``member_states.change_state`` calls these with each change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.list_models import Member
from seclistd.mail.compose import Attachment
from seclistd.mail.render import render
from seclistd.models import Outbox
from seclistd.outbox import enqueue

KEY_NEEDED = "member_key_needed"
NO_KEY = "no OpenPGP key is pinned for this list member; held until one is"
SUSPENDED = "the list member is suspended; held until it is active again"


def mail_member(session: Session, now: dt.datetime, settings: Settings, member: Member, *,
                kind: str, subject: str, body: str, case_id: str | None = None,
                in_reply_to: str | None = None, references: list[str] | None = None,
                message_id: str | None = None,
                attachments: Sequence[Attachment] = ()) -> Outbox:
    """Enqueue confidential mail to ``member``: encrypted to its pinned key, or held (and the
    member told, once while anything is held, that mail is waiting for a key).
    ``message_id`` fixes the Message-ID (an embargoed notice's carries the copy's token);
    ``attachments`` travel inside the encryption."""
    if member.state == "removed":
        raise ValueError(f"{member.email} is no longer a member of {member.list_name}")
    row = enqueue(session, now, settings, kind=kind, to=member.email, subject=subject,
                  body=body, to_name=member.name, in_reply_to=in_reply_to,
                  references=references, auto_submitted="auto-generated", member=member,
                  message_id=message_id, attachments=attachments)
    row.case_id = case_id
    if member.state != "active":
        row.status, row.last_error = "held", SUSPENDED
        return row
    if member.fingerprint:
        return row
    already_held = session.scalar(
        select(func.count()).select_from(Outbox).where(
            Outbox.member_id == member.id, Outbox.status == "held")) or 0
    row.status, row.last_error = "held", NO_KEY
    if not already_held:
        note = render("member_key_needed.txt.j2", settings.templates.dir,
                      list_address=_list_address(settings, member.list_name),
                      security_address=settings.project.security_address,
                      project=settings.project.name)
        enqueue(session, now, settings, kind=KEY_NEEDED, to=member.email,
                subject=f"{settings.project.name}: mail is waiting for your OpenPGP key",
                body=note, to_name=member.name, member=member, confidential=False)
    return row


def hold_for(session: Session, member: Member) -> int:
    """Hold the member's confidential mail that has not gone out yet (it was suspended)."""
    result = session.execute(
        update(Outbox).where(Outbox.member_id == member.id, Outbox.status == "pending",
                             Outbox.must_encrypt.is_(True))
        .values(status="held", last_error=SUSPENDED)
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)


def cancel_for(session: Session, member: Member) -> int:
    """Fail the removed member's confidential mail that has not gone out."""
    result = session.execute(
        update(Outbox).where(Outbox.member_id == member.id,
                             Outbox.status.in_(("pending", "held")),
                             Outbox.must_encrypt.is_(True))
        .values(status="failed", last_error="the member was removed before it was sent")
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)


def release_held(session: Session, now: dt.datetime, member: Member) -> int:
    """Make the member's held confidential mail due now, encrypted to the key pinned on the
    member; returns how many rows were released (none without a key or while the member is
    not active)."""
    if not member.fingerprint or member.state != "active":
        return 0
    result = session.execute(
        update(Outbox).where(Outbox.member_id == member.id, Outbox.status == "held",
                             Outbox.must_encrypt.is_(True))
        .values(status="pending", encrypt_to=member.fingerprint, next_attempt_at=now,
                last_error=None, lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)


def _list_address(settings: Settings, list_name: str) -> str:
    for lst in settings.lists:
        if lst.name == list_name:
            return lst.address
    return settings.project.security_address
