"""The list's discussion of an embargoed notice: members' replies, acknowledgments and
vendor statuses (issue 10, items 3 and 4).

Which notice a mail answers (``locate``): its In-Reply-To/References name a copy's
Message-ID (the notice's ``<CASEID.TOKEN.seclistd@domain>``, or a discussion copy or
reminder we sent that recipient), else its text (or its raw bytes) quotes a copy's token.
When the From is a recipient of that notice, the mail is that recipient's reply
(``on_reply``); otherwise someone outside the notice had a copy, which is a leak
(``workflows.leaks``).

A reply is recorded on the case (the message and an event). What happens next depends on
proof, never on the From header:

- **Signed** by the key on record for the recipient whose copy the From names (a list
  member's pinned key, checked with every rule of ``member_commands.signer``: one good
  signature, the member's own address, never used before, made within 30 days; a team
  member's key in ``[team]``): the signed text, and nothing outside it, is re-sent to every
  other recipient of the notice and to the team, each copy encrypted to its recipient
  alone (members through ``member_mail.mail_member``: held without a key or while
  suspended; team members without a key get a content-free note). Each copy says
  "From: SENDER via LIST". Copy tokens the text quotes are removed first, so a leaked
  re-sent copy never names the wrong member. The signature is spent.
- **Not signed** (or signed by another key): passed to the handler only (the team while
  unassigned), marked as unverified; never re-sent to the list. Nothing from a non-member
  is ever re-sent.

Keywords, read from the head of the signed text (``commands.parse_keywords``):
``X-ACK`` marks the recipient's copy ``acknowledged``; ``X-STATUS: affected |
not-affected | unknown`` records the distribution's ``vendor_status`` with the text after
the keyword lines as its ``statement`` (and acknowledges too: a member that states its
status has read the notice). Decision: both change what the team sees about that
distribution, so both need the signature of the recipient's own key, as every member
keyword does; an unsigned one, or one signed by another key, changes nothing, is recorded,
and the sender is told why (within the per-sender cap on automatic answers). A token
answered from the recipient's address is NOT enough: a leaked copy carries the token and
a From header is free to write. An X-STATUS value other than the three is refused and the
member told the allowed values; the signed review is still re-sent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring
from seclistd.embargo_models import Announcement, AnnouncementRecipient
from seclistd.list_models import Member
from seclistd.mail import compose, loops, notice_syntax
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Case, Message, Outbox
from seclistd.outbox import enqueue
from seclistd.workflows import lifecycle, member_commands, member_mail, states
from seclistd.workflows.commands import (
    Refused,
    Signed,
    authenticate,
    check_time,
    parse_keywords,
    signed_content,
    spend,
)

DISCUSSION_KIND = "list_discussion"  # a member's signed review, re-sent to one recipient
FORWARD_KIND = "notice_reply_forward"  # a reply passed to the handler
REMINDER_KIND = "notice_reminder"  # workflows.notice_reminders
THREAD_KINDS = (DISCUSSION_KIND, REMINDER_KIND)
UNSIGNED_FORWARDS_PER_DAY = 20  # per case: unverified replies passed to the handler
KEYWORD_HINT = ("X-ACK and X-STATUS count only in a mail signed (PGP/MIME) with the key on "
                "record for you")


@dataclass(frozen=True)
class Located:
    """The notice copy a mail answers or quotes, and the sender's own copy of that notice
    when the From is one of its recipients (which proves nothing by itself)."""

    case_id: str
    copy_id: int
    own_id: int | None


def by_thread(session: Session, ids: list[str]) -> AnnouncementRecipient | None:
    """The copy whose Message-ID (or a discussion copy or reminder to its recipient) the
    references name, newest reference first."""
    if not ids:
        return None
    ids = list(dict.fromkeys(reversed(ids)))[:100]
    pieces = notice_syntax.message_id_parts(ids)
    if pieces:
        found = session.scalars(select(AnnouncementRecipient).where(
            AnnouncementRecipient.token.in_(pieces))).first()
        if found is not None:
            return found
    row = session.execute(
        select(AnnouncementRecipient).join(Outbox, Outbox.id == AnnouncementRecipient.outbox_id)
        .where(Outbox.message_id.in_(ids))).scalars().first()
    if row is not None:
        return row
    for case_id, to_addr in session.execute(
            select(Outbox.case_id, Outbox.to_addr).where(
                Outbox.message_id.in_(ids), Outbox.kind.in_(THREAD_KINDS),
                Outbox.case_id.is_not(None))):
        found = session.scalars(select(AnnouncementRecipient).where(
            AnnouncementRecipient.case_id == case_id,
            AnnouncementRecipient.email == to_addr)).first()
        if found is not None:
            return found
    return None


def by_tokens(session: Session, words: list[str]) -> list[AnnouncementRecipient]:
    if not words:
        return []
    return list(session.scalars(select(AnnouncementRecipient).where(
        AnnouncementRecipient.token.in_(words)).order_by(AnnouncementRecipient.id)))


def locate(session: Session, mail: ParsedMail, raw: bytes) -> Located | None:
    """Which notice copy the mail answers (by its references) or quotes (by its token)."""
    sender = loops.canonical_mailbox(mail.from_addr) if mail.from_addr else ""
    copy = by_thread(session, mail.in_reply_to + mail.references)
    if copy is None:
        quoted = by_tokens(session, notice_syntax.token_candidates(
            mail.text, raw[:notice_syntax.SCAN_CHARS].decode("latin-1")))
        if not quoted:
            return None
        copy = next((c for c in quoted if c.email == sender), quoted[0])
    own = copy.id if copy.email == sender else (
        copy_for(session, copy.case_id, sender) if sender else None)
    return Located(copy.case_id, copy.id, own)


def copy_for(session: Session, case_id: str, email: str) -> int | None:
    """The id of ``email``'s copy of the case's notice, if the notice went to it."""
    return session.scalars(select(AnnouncementRecipient.id).where(
        AnnouncementRecipient.case_id == case_id, AnnouncementRecipient.email == email)
        .order_by(AnnouncementRecipient.id)).first()


def list_address(settings: Settings, list_name: str) -> str:
    return next((lst.address for lst in settings.lists if lst.name == list_name),
                settings.project.security_address)


def _authenticate(session: Session, settings: Settings, mail: ParsedMail, signed: Signed,
                  own: AnnouncementRecipient) -> str:
    """The signature id when the signature is by the key on record for ``own``'s recipient
    (and the From is that recipient); Refused otherwise."""
    if own.role == "team":
        _, sig_id = authenticate(session, settings, mail, signed)
        return sig_id
    mine, sig_id = member_commands.signer(session, mail, signed)
    if own.member_id not in {m.id for m in mine}:
        raise Refused("the signing key is not the key on record for the member this notice "
                      "went to")
    return sig_id


def on_reply(session: Session, now: dt.datetime, settings: Settings, keyring: Keyring | None,
             message: Message, mail: ParsedMail, unwrapped: Unwrapped,
             located: Located) -> None:
    """Record a recipient's reply on the case, apply its signed keywords, and pass it on:
    re-sent to the list when signed by the recipient's key, to the handler only when not."""
    case = session.get(Case, located.case_id)
    own = session.get(AnnouncementRecipient, located.own_id) if located.own_id else None
    assert case is not None and own is not None
    message.case_id = case.id
    sender = loops.canonical_mailbox(mail.from_addr or "")
    signed: Signed | None = None
    problem = ""
    try:
        signed = signed_content(unwrapped, keyring)
        sig_id = _authenticate(session, settings, mail, signed, own)
        spend(session, now, sig_id, signed.signature.primary_fingerprint, case.id, message)
        check_time(signed.signature, now)
    except Refused as refusal:
        problem, signed = str(refusal), None
    if signed is not None:
        message.signed_by = signed.signature.primary_fingerprint
    keywords, _ = parse_keywords(signed.text if signed is not None else mail.text or "")
    notes: list[str] = []
    if any(name in notice_syntax.NOTICE_KEYWORDS for name, _ in keywords):
        if signed is None:
            reason = f"{KEYWORD_HINT} ({problem}); nothing was changed"
            _refuse(session, now, settings, case, message, mail, reason)
            notes.append("keywords not applied: " + reason)
        else:
            notes.extend(_apply(session, now, settings, case, message, mail, own, signed))
    if signed is not None:
        told = resend(session, now, settings, case, own, signed.text)
        detail = (f"reply on the notice from {sender}, signed with the key on record: "
                  f"re-sent to {told}")
    else:
        detail = (f"reply on the notice from {sender}, not signed with the key on record "
                  f"({problem}): " + _forward(session, now, settings, case, mail, problem))
    states.record(session, now, case, actor=sender, action="notice_reply",
                  detail="; ".join([detail, *notes]))


def _apply(session: Session, now: dt.datetime, settings: Settings, case: Case,
           message: Message, mail: ParsedMail, own: AnnouncementRecipient,
           signed: Signed) -> list[str]:
    """Apply X-ACK / X-STATUS of an authenticated reply; returns notes for the event."""
    keywords, statement = parse_keywords(signed.text)
    try:
        unknown = [n for n, _ in keywords if n not in (*notice_syntax.NOTICE_KEYWORDS,
                                                        notice_syntax.CASE)]
        if unknown:
            raise Refused(f"unknown keyword {unknown[0]} on a notice; a reply may carry "
                          f"{notice_syntax.ACK} and {notice_syntax.STATUS}: "
                          + " | ".join(notice_syntax.VENDOR_STATUSES))
        statuses = [arg for n, arg in keywords if n == notice_syntax.STATUS]
        if len(statuses) > 1:
            raise Refused(f"{notice_syntax.STATUS} may appear once in a mail")
        value = None
        if statuses:
            value = notice_syntax.vendor_status(statuses[0])
            if value is None:
                raise Refused(f"{notice_syntax.STATUS} takes one of "
                              + ", ".join(notice_syntax.VENDOR_STATUSES)
                              + f", got {compose.short(statuses[0], 40)!r}; send it again, "
                              "signed, with one of these")
    except Refused as refusal:
        _refuse(session, now, settings, case, message, mail, str(refusal))
        return [f"keywords not applied: {refusal}"]
    notes = []
    if own.acknowledged_at is None:
        own.acknowledged_at = now
        notes.append("acknowledged")
    own.status = "acknowledged"
    if value is not None:
        # The statement is shown by `cases show` and published in the CSAF export: never
        # with a copy token in it (the author's own, quoted), which would let anyone who
        # reads the advisory pass for a leak of that member's copy.
        statement = notice_syntax.redact(statement, _tokens_quoted(session, case.id,
                                                                   statement))
        own.vendor_status, own.statement, own.status_at = value, statement.strip()[:20000], now
        notes.append(f"vendor status {value}")
    return notes


def _tokens_quoted(session: Session, case_id: str, text: str) -> list[str]:
    """The copy tokens of the case's notice that ``text`` quotes."""
    quoted = set(notice_syntax.token_candidates(text))
    return [r.token for r in session.scalars(select(AnnouncementRecipient).where(
        AnnouncementRecipient.case_id == case_id)) if r.token in quoted]


def _refuse(session: Session, now: dt.datetime, settings: Settings, case: Case,
            message: Message, mail: ParsedMail, reason: str) -> None:
    states.record(session, now, case, actor=loops.canonical_mailbox(mail.from_addr or ""),
                  action="notice_keyword_refused", detail=reason)
    member_commands.refuse(session, now, settings, message, mail, reason,
                           action="notice_keyword_refused")


def _forward(session: Session, now: dt.datetime, settings: Settings, case: Case,
             mail: ParsedMail, problem: str) -> str:
    """Pass an unverified reply to the handler only (capped per case and day)."""
    since = now - dt.timedelta(days=1)
    sent = session.scalar(select(func.count()).select_from(Outbox).where(
        Outbox.case_id == case.id, Outbox.kind == FORWARD_KIND,
        Outbox.created_at >= since)) or 0
    if sent >= UNSIGNED_FORWARDS_PER_DAY:
        return f"kept on the case, not passed on ({UNSIGNED_FORWARDS_PER_DAY} today)"
    body = render("notice_reply_forward.txt.j2", settings.templates.dir, case_id=case.id,
                  sender=loops.canonical_mailbox(mail.from_addr or ""), problem=problem,
                  text=mail.text or "", subject=compose.short(mail.subject, 200))
    told = lifecycle.notify_team(session, now, settings, case, kind=FORWARD_KIND,
                                 subject="Unverified reply on the embargoed notice", body=body,
                                 handler_only=True, private=True, encrypted=True)
    return "passed to the handler only (" + ", ".join(told) + "); not re-sent to the list"


def resend(session: Session, now: dt.datetime, settings: Settings, case: Case,
           own: AnnouncementRecipient, text: str) -> str:
    """Re-send a recipient's signed text to every other recipient and to the team, each copy
    encrypted to its recipient alone. Returns who it went to, for the event."""
    announcement = session.get(Announcement, case.id)
    assert announcement is not None
    recipients = list(session.scalars(select(AnnouncementRecipient).where(
        AnnouncementRecipient.case_id == case.id).order_by(AnnouncementRecipient.id)))
    quoted = set(notice_syntax.token_candidates(text))
    text = notice_syntax.redact(text, [r.token for r in recipients if r.token in quoted])
    sender = own.email
    organization = ""
    if own.member_id is not None:
        member = session.get(Member, own.member_id)
        organization = member.organization if member is not None else ""
    address = list_address(settings, announcement.list_name)
    body = render("list_discussion.txt.j2", settings.templates.dir, case_id=case.id,
                  sender=sender, organization=organization or "", list_address=address,
                  until=lifecycle.local_time(settings, announcement.until), text=text)
    subject = compose.tagged_subject(case.id, "Discussion of the embargoed notice")
    members = held = 0
    for other in recipients:
        if other.id == own.id or other.role != "member" or other.member_id is None:
            continue
        member = session.get(Member, other.member_id)
        if member is None or member.state == "removed":
            continue
        copy = session.get(Outbox, other.outbox_id) if other.outbox_id else None
        row = member_mail.mail_member(session, now, settings, member, kind=DISCUSSION_KIND,
                                      subject=subject, body=body, case_id=case.id,
                                      in_reply_to=copy.message_id if copy else None)
        row.case_id = case.id
        members += 1
        held += row.status == "held"
    team = _to_team(session, now, settings, case, body, subject, exclude=sender)
    return (f"{members} members ({held} held: no key or suspended) and the team "
            f"({', '.join(team) or 'none'})")


def _to_team(session: Session, now: dt.datetime, settings: Settings, case: Case, body: str,
             subject: str, exclude: str) -> list[str]:
    """The team's copies of a re-sent review: each encrypted to the member's key in
    ``[team]``; a team member without one gets a note with nothing of the content."""
    told = []
    for person in settings.team.members:
        if person.email == exclude:
            continue
        if person.fingerprint:
            enqueue(session, now, settings, kind=DISCUSSION_KIND, to=person.email,
                    to_name=person.name, subject=subject, body=body, case=case,
                    encrypt_to=person.fingerprint)
        else:
            note = render("team_encrypted_notice.txt.j2", settings.templates.dir,
                          case_id=case.id, what="a list member wrote on the embargoed notice",
                          security_address=settings.project.security_address)
            enqueue(session, now, settings, kind=DISCUSSION_KIND, to=person.email,
                    to_name=person.name, body=note, case=case,
                    subject=compose.tagged_subject(case.id, "Encrypted case: content withheld"))
        told.append(person.email)
    return told
