"""A list member's own signed command, ``X-LEAVE`` (DESIGN.md §4, members' keywords), and
who a member's signature proves the sender to be.

``X-LEAVE`` (optionally ``X-LEAVE: LIST``) removes the member from that list, or from every
list where its address is a member under the signing key. It counts only when every rule of
the team's commands holds (``workflows.commands``): the whole mail inside one good PGP/MIME
signature (or encrypted with one inside), the keyword read only from the first text part
directly inside the signed entity (never a forwarded message or an attachment), the
signature by the key pinned on a current member, made at most 30 days ago and not in the
future, and spent once (``HonouredSignature``) whether the command was carried out or
refused. The From address must be the member whose key signed: a member's key acts only for
its own address, so a second member's key with the first one's From is refused.

A removal tells the member (what happened, how to join again) and the team, and writes a
``MemberEvent`` whose actor is the member. A refusal is recorded on the member the From
names (else the message is quarantined with the reason) and the sender gets one short mail
naming the rule that failed, never an echo of the mail, within the per-sender cap on
automatic answers. Unsigned ``X-LEAVE`` never removes anyone.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring
from seclistd.list_models import Member
from seclistd.mail import loops, member_syntax
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Message
from seclistd.outbox import automatic_answers_since, enqueue
from seclistd.workflows import member_notices, member_states
from seclistd.workflows.commands import (
    Refused,
    Signed,
    check_time,
    is_spent,
    parse_keywords,
    signature_id,
    signed_content,
    spend,
)

LEFT_REASON = "left the list by a signed X-LEAVE"


def current(session: Session, **where: object) -> list[Member]:
    """Members not removed, matching ``email=`` and/or ``fingerprint=``, oldest first."""
    query = select(Member).where(Member.state != member_states.REMOVED)
    if "email" in where:
        query = query.where(Member.email == where["email"])
    if "fingerprint" in where:
        query = query.where(Member.fingerprint == where["fingerprint"])
    return list(session.scalars(query.order_by(Member.id)))


def sender_of(mail: ParsedMail) -> str:
    return loops.canonical_mailbox(mail.from_addr) if mail.from_addr else ""


def signer(session: Session, mail: ParsedMail, signed: Signed) -> tuple[list[Member], str]:
    """(the current memberships of the From address under the signing key, signature id)
    when the signature is by the key pinned on that member and was never used; Refused
    otherwise. The From must be the member whose key signed."""
    fingerprint = signed.signature.primary_fingerprint
    sender = sender_of(mail)
    by_key = current(session, fingerprint=fingerprint)
    if not by_key:
        if sender and current(session, email=sender):
            raise Refused("the signature is not by the key on record for the sender")
        raise Refused("the signing key is not the key of any list member")
    mine = [m for m in by_key if m.email == sender]
    if not mine:
        raise Refused("the signing key belongs to another member than the From address: a "
                      "member's key acts only for that member's own address")
    sig_id = signature_id(signed)
    if is_spent(session, sig_id):
        raise Refused("this signature was already used once (carried out or refused); "
                      "sign a new mail")
    return mine, sig_id


def handle(session: Session, now: dt.datetime, settings: Settings, keyring: Keyring | None,
           message: Message, mail: ParsedMail, unwrapped: Unwrapped) -> str | None:
    """Carry out (or refuse) an ``X-LEAVE`` mail. Returns None when the outcome is recorded
    on a member, else the reason to quarantine the message with."""
    spent: tuple[str, str] | None = None
    try:
        signed = signed_content(unwrapped, keyring)
        mine, sig_id = signer(session, mail, signed)
        spent = (sig_id, signed.signature.primary_fingerprint)
        check_time(signed.signature, now)
        targets = leave_targets(mine, parse_keywords(signed.text)[0])
    except Refused as refusal:
        named = refuse(session, now, settings, message, mail, str(refusal))
        if spent is not None:
            spend(session, now, *spent, None, message)
        return None if named else f"X-LEAVE refused ({refusal}) and no member to record it on"
    spend(session, now, spent[0], spent[1], None, message)
    message.signed_by = signed.signature.primary_fingerprint
    for member in targets:
        leave(session, now, settings, member)
    return None


def leave_targets(mine: list[Member], keywords: list[tuple[str, str]]) -> list[Member]:
    """The memberships an authenticated ``X-LEAVE`` ends; Refused when the keywords are
    wrong or name a list the signer is not on."""
    names = [name for name, _ in keywords]
    if member_syntax.LEAVE not in names:
        raise Refused("the signed text must start with the line X-LEAVE (or X-LEAVE: LIST); "
                      "a keyword in a forwarded message or an attachment does not count")
    other = [name for name in names if name != member_syntax.LEAVE]
    if other:
        raise Refused(f"a leave carries X-LEAVE and nothing else, found {other[0]}")
    args = [arg for name, arg in keywords if name == member_syntax.LEAVE]
    if len(args) != 1:
        raise Refused("X-LEAVE may appear once in a mail")
    try:
        list_name = member_syntax.list_argument(args[0])
    except ValueError:
        raise Refused("X-LEAVE takes at most a list name, as X-LEAVE: distributors") from None
    if list_name is None:
        return mine
    targets = [m for m in mine if m.list_name == list_name]
    if not targets:
        lists = ", ".join(sorted({m.list_name for m in mine}))
        raise Refused(f"X-LEAVE names the list {list_name}, where this address is not a "
                      f"member under this key (its lists: {lists})")
    return targets


def leave(session: Session, now: dt.datetime, settings: Settings, member: Member) -> None:
    """Remove ``member`` at its own request; the member and the team are told."""
    member_states.change_state(session, member, "remove", actor=member.email, now=now,
                               reason=LEFT_REASON)
    address = next((lst.address for lst in settings.lists if lst.name == member.list_name),
                   member.list_name)
    member_notices.tell_member(
        session, now, settings, member, kind="member_left",
        subject=f"{member.list_name}: you have left the list", template="member_left.txt.j2",
        list_name=member.list_name, email=member.email, list_address=address)
    sent = member_notices.tell_team(
        session, now, settings, member, kind="team_member_removed",
        subject=f"{member.list_name}: member {member.email} left",
        template="team_member_changed.txt.j2", list_name=member.list_name, email=member.email,
        organization=member.organization, what="removed at its own request", actor=member.email,
        reason=LEFT_REASON, state=member.state)
    member_states.record(session, member, actor=member_notices.SYSTEM, action="leave_notice",
                         now=now, detail=f"member told; {member_notices.told(sent)}")


def refuse(session: Session, now: dt.datetime, settings: Settings, message: Message,
           mail: ParsedMail, reason: str, action: str = "command_refused") -> bool:
    """Record a refused member mail on the member the From names and tell the sender which
    rule failed (capped per sender). Returns whether a member was named."""
    sender = sender_of(mail)
    named = current(session, email=sender) if sender else []
    for member in named:
        member_states.record(session, member, actor=sender, action=action, now=now,
                             detail=f"{reason} (message {message.message_id or message.id})")
    if not sender:
        return bool(named)
    limit = settings.autoreply.max_per_sender_per_day
    if automatic_answers_since(session, sender, now - dt.timedelta(days=1)) >= limit:
        return bool(named)
    body = render("member_command_refused.txt.j2", settings.templates.dir, reason=reason,
                  email=sender, project=settings.project.name,
                  security_address=settings.project.security_address)
    enqueue(session, now, settings, kind="command_refused", to=sender,
            subject="Command not carried out", body=body, in_reply_to=mail.message_id,
            auto=True, auto_submitted="auto-replied", confidential=False,
            member=named[0] if named else None)
    return bool(named)
