"""The embargoed notice of a case: its terms, its fan-out to the list and the team, and its
rescheduling (issue 10, items 1 and 2; DESIGN.md §3 "Announcement").

``lifecycle.act``'s ``embargo`` action (the CLI and a signed ``X-EMBARGO`` alike) calls
``check_terms`` and then ``send_notice`` (the first embargo of a case) or ``reschedule`` (a
later one), all in the caller's transaction.

Decisions written down here:
- **Which list.** A case names no list, so its notice goes to the first ``[[lists]]`` of the
  config; the announcement records the list's name, and a reschedule stays with that list.
  With no list configured the notice goes to the team alone (and the default limits apply).
- **Who gets a copy.** Every member of that list that is not removed (an active member with a
  pinned key gets it at once; a member without a key, or suspended, gets its copy held and,
  without a key, the content-free note: ``member_mail.mail_member``), and every ``[team]``
  member, each encrypted to its own fingerprint (a team member with none gets its copy held).
  One outbox row per recipient, never one mail to many. A team member who is also a list
  member gets one copy, as a member.
- **Tokens.** Each recipient has one token (``AnnouncementRecipient.token``) for the life of
  the announcement: it is in every copy's text ("This copy's token: …") and Message-ID,
  ``<CASE.TOKEN.seclistd@domain>`` for the first notice and ``<CASE.TOKEN.rN.seclistd@domain>``
  for the N-th reschedule (Message-IDs are unique). ``token_in_message_id`` reads it back.
- **Reschedule.** Everyone who has a copy is sent the notice again with the new time and the
  old one (each copy again encrypted to its recipient alone; removed members excepted),
  threaded on that recipient's first copy; members who joined since get their first copy.
- **Delivery status.** ``AnnouncementRecipient.status`` is written here as ``queued`` or
  ``held`` (and ``acknowledged`` by the members' replies); whether the copy went out is read
  from its outbox row (``outbox_id``) when shown: ``delivery_status``. The relay is untouched.
- **Embargoed content is always encrypted**, whatever ``require_encryption`` says.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import ListSettings, Settings
from seclistd.embargo_models import Announcement, AnnouncementAttachment, AnnouncementRecipient
from seclistd.list_models import Member
from seclistd.mail import compose
from seclistd.mail.compose import Attachment
from seclistd.mail.render import render
from seclistd.models import Case, Outbox
from seclistd.outbox import enqueue
from seclistd.workflows.member_mail import mail_member

NOTICE = "embargo_notice"
RESCHEDULED = "embargo_rescheduled"
TEAM_NO_KEY = ("no fingerprint on record in [team] for this team member; embargoed mail is "
               "held until one is")
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # all of a notice's files together
MAX_ATTACHMENTS = 20
_MESSAGE_ID = re.compile(r"<?([A-Za-z0-9]+-\d{4}-\d{4,6})\.([0-9a-f]{32})\.(?:r\d{1,6}\.)?"
                         r"seclistd@[^>\s]{1,255}>?")
# What an outbox row's status means for the copy it carries.
_DELIVERY = {"pending": "queued", "sent": "sent", "held": "held", "failed": "failed"}


class TermsError(ValueError):
    """The embargo's terms are refused; the text is the one line for the operator."""


@dataclass(frozen=True)
class Fanout:
    """What one notice (or reschedule) queued: copies on their way and copies held."""

    queued: int
    held: int
    recipients: int


def list_for(settings: Settings, announcement: Announcement | None = None
             ) -> ListSettings | None:
    """The list a case's notice goes to: the announcement's, else the first ``[[lists]]``."""
    if announcement is not None:
        return next((lst for lst in settings.lists if lst.name == announcement.list_name),
                    None)
    return settings.lists[0] if settings.lists else None


def shown(settings: Settings, when: dt.datetime) -> str:
    """A time for people: weekday, date, time and zone, in UTC and in the project's zone
    ("Tuesday 8 December 2026, 15:00 UTC (Tuesday 8 December 2026, 10:00 EST,
    America/New_York)")."""
    return shown_in(settings.project.tz, when)


def shown_in(tz: ZoneInfo, when: dt.datetime) -> str:
    utc = when.astimezone(dt.UTC)
    text = f"{utc:%A} {utc.day} {utc:%B %Y, %H:%M} UTC"
    if tz.key in ("UTC", "Etc/UTC"):
        return text
    local = when.astimezone(tz)
    return f"{text} ({local:%A} {local.day} {local:%B %Y, %H:%M %Z}, {tz.key})"


def check_terms(settings: Settings, announcement: Announcement | None, until: dt.datetime,
                now: dt.datetime) -> list[str]:
    """Refuse (TermsError) an embargo longer than the list's ``max_embargo_days``; return
    the warnings for one longer than its ``preferred_embargo_days``."""
    lst = list_for(settings, announcement) or ListSettings(name="", address="")
    length = until - now
    name = f"list {lst.name}" if lst.name else "the default"
    if length > dt.timedelta(days=lst.max_embargo_days):
        raise TermsError(
            f"embargo end {shown(settings, until)} is more than {lst.max_embargo_days} days "
            f"away, the longest {name} allows (lists.max_embargo_days); expected a time "
            f"before {shown(settings, now + dt.timedelta(days=lst.max_embargo_days))}")
    if length > dt.timedelta(days=lst.preferred_embargo_days):
        days = length.total_seconds() / 86400
        return [f"the embargo is {days:.1f} days long, more than the {lst.preferred_embargo_days} "
                f"days {name} prefers (lists.preferred_embargo_days); accepted"]
    return []


def check_attachments(attachments: Sequence[Attachment]) -> None:
    if len(attachments) > MAX_ATTACHMENTS:
        raise TermsError(f"{len(attachments)} attachments, expected at most {MAX_ATTACHMENTS}")
    total = sum(len(a.data) for a in attachments)
    if total > MAX_ATTACHMENT_BYTES:
        raise TermsError(f"the attachments come to {total} bytes, expected at most "
                         f"{MAX_ATTACHMENT_BYTES} bytes in all")


def message_id_for(settings: Settings, case_id: str, token: str, revision: int) -> str:
    domain = compose.clean(settings.project.domain, 200)
    if revision:
        return f"<{case_id}.{token}.r{revision}.seclistd@{domain}>"
    return f"<{case_id}.{token}.seclistd@{domain}>"


def token_in_message_id(message_id: str | None) -> tuple[str, str] | None:
    """(case ID, token) of one of our notices' Message-IDs, else None."""
    match = _MESSAGE_ID.fullmatch((message_id or "").strip()[:600])
    return (match.group(1), match.group(2)) if match else None


def recipient_by_token(session: Session, token: str) -> AnnouncementRecipient | None:
    return session.scalar(select(AnnouncementRecipient).where(
        AnnouncementRecipient.token == token.strip().lower()[:64]))


def announcement_of(session: Session, case_id: str) -> Announcement | None:
    return session.get(Announcement, case_id)


def send_notice(session: Session, now: dt.datetime, settings: Settings, case: Case, *,
                actor: str, text: str, attachments: Sequence[Attachment]) -> Announcement:
    """The first embargoed notice of ``case`` (whose ``embargo_until`` is set): the
    announcement, its files and one encrypted copy per recipient."""
    if case.embargo_until is None:
        raise TermsError(f"{case.id} has no embargo end; expected --until")
    check_attachments(attachments)
    lst = list_for(settings)
    announcement = Announcement(case_id=case.id, list_name=lst.name if lst else "",
                                until=case.embargo_until, text=text.strip(), created_at=now,
                                created_by=actor, revision=0)
    session.add(announcement)
    _add_files(session, now, announcement, attachments)
    session.flush()
    _fan_out(session, now, settings, case, announcement, previous=None)
    return announcement


def reschedule(session: Session, now: dt.datetime, settings: Settings, case: Case, *,
               actor: str, text: str, attachments: Sequence[Attachment],
               previous: dt.datetime) -> Announcement:
    """Move the embargo of an announced case to ``case.embargo_until``: revision + 1, the
    team's new text (when given) and files added, and everyone notified told again."""
    announcement = session.get(Announcement, case.id)
    if announcement is None:
        return send_notice(session, now, settings, case, actor=actor, text=text,
                           attachments=attachments)
    check_attachments(list(_files(announcement)) + list(attachments))
    announcement.revision += 1
    announcement.until = case.embargo_until or announcement.until
    if text.strip():
        announcement.text = text.strip()
    _add_files(session, now, announcement, attachments)
    session.flush()
    _fan_out(session, now, settings, case, announcement, previous=previous)
    return announcement


def fanout_counts(session: Session, announcement: Announcement) -> Fanout:
    """How the latest copies stand: queued (on their way or sent) and held."""
    held = queued = 0
    for rec in announcement.recipients:
        row = session.get(Outbox, rec.outbox_id) if rec.outbox_id else None
        if row is None:
            continue
        if row.status == "held":
            held += 1
        elif row.status in ("pending", "sent"):
            queued += 1
    return Fanout(queued=queued, held=held, recipients=len(announcement.recipients))


def delivery_status(session: Session, rec: AnnouncementRecipient) -> str:
    """``acknowledged`` once the recipient acknowledged; else what its latest copy's outbox
    row says: ``queued`` (waiting to go), ``sent``, ``held`` or ``failed``."""
    if rec.status == "acknowledged" or rec.acknowledged_at is not None:
        return "acknowledged"
    row = session.get(Outbox, rec.outbox_id) if rec.outbox_id else None
    if row is None:
        return rec.status
    return _DELIVERY.get(row.status, rec.status)


def view(session: Session, case: Case, tz: ZoneInfo) -> dict[str, object] | None:
    """The ``announcement`` of ``cases show`` (DESIGN.md §4, with extra keys)."""
    announcement = session.get(Announcement, case.id)
    if announcement is None:
        return None
    recipients = []
    for rec in announcement.recipients:
        row = session.get(Outbox, rec.outbox_id) if rec.outbox_id else None
        recipients.append({
            "email": rec.email, "status": delivery_status(session, rec),
            "vendor_status": rec.vendor_status, "statement": rec.statement,
            "role": rec.role,
            "acknowledged_at": (rec.acknowledged_at.astimezone(tz).isoformat()
                                if rec.acknowledged_at else None),
            "sent_at": (row.sent_at.astimezone(tz).isoformat()
                        if row is not None and row.sent_at else None),
            "status_at": rec.status_at.astimezone(tz).isoformat() if rec.status_at else None,
            "reminded_at": (rec.reminded_at.astimezone(tz).isoformat()
                            if rec.reminded_at else None)})
    return {"until": announcement.until.astimezone(tz).isoformat(),
            "until_utc": announcement.until.astimezone(dt.UTC).isoformat(),
            "until_shown": shown_in(tz, announcement.until),
            "list": announcement.list_name or None, "revision": announcement.revision,
            "attachments": [a.filename for a in announcement.attachments],
            "recipients": recipients}


# -- the fan-out ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    email: str
    name: str
    role: str  # "member" | "team"
    member: Member | None
    fingerprint: str | None


def _targets(session: Session, settings: Settings, announcement: Announcement
             ) -> list[_Target]:
    out: list[_Target] = []
    seen: set[str] = set()
    if announcement.list_name:
        members = session.scalars(select(Member).where(
            Member.list_name == announcement.list_name, Member.state != "removed")
            .order_by(Member.id))
        for member in members:
            if member.email not in seen:
                seen.add(member.email)
                out.append(_Target(member.email, member.name, "member", member,
                                   member.fingerprint))
    for team in settings.team.members:
        if team.email not in seen:
            seen.add(team.email)
            out.append(_Target(team.email, team.name, "team", None, team.fingerprint or None))
    return out


def _fan_out(session: Session, now: dt.datetime, settings: Settings, case: Case,
             announcement: Announcement, previous: dt.datetime | None) -> None:
    files = [Attachment(a.filename, a.content_type, a.data) for a in _files(announcement)]
    existing = {r.email: r for r in announcement.recipients}
    for target in _targets(session, settings, announcement):
        rec = existing.get(target.email)
        first = rec is None
        if rec is None:
            rec = AnnouncementRecipient(
                case_id=case.id, member_id=target.member.id if target.member else None,
                email=target.email, role=target.role, token=secrets.token_hex(16),
                status="queued")
            session.add(rec)
            announcement.recipients.append(rec)
        revision = announcement.revision
        thread = None if first else message_id_for(settings, case.id, rec.token, 0)
        body = _body(settings, case, announcement, rec.token,
                     previous=None if first else previous, files=files)
        subject = compose.tagged_subject(case.id, ("Embargo moved: " if previous and not first
                                                   else "Embargoed: ") + case.subject)
        message_id = message_id_for(settings, case.id, rec.token, revision)
        kind = RESCHEDULED if previous is not None and not first else NOTICE
        if target.member is not None:
            row = mail_member(session, now, settings, target.member, kind=kind,
                              subject=subject, body=body, case_id=case.id,
                              in_reply_to=thread, references=[thread] if thread else None,
                              message_id=message_id, attachments=files)
        else:
            row = enqueue(session, now, settings, kind=kind, to=target.email,
                          to_name=target.name, subject=subject, body=body, case=case,
                          in_reply_to=thread, references=[thread] if thread else None,
                          encrypt_to=target.fingerprint, message_id=message_id,
                          attachments=files)
            row.must_encrypt = True
            if not target.fingerprint:
                row.status, row.last_error = "held", TEAM_NO_KEY
        session.flush()
        rec.outbox_id = row.id
        if rec.status != "acknowledged":
            rec.status = "held" if row.status == "held" else "queued"


def _files(announcement: Announcement) -> list[AnnouncementAttachment]:
    return list(announcement.attachments)


def _add_files(session: Session, now: dt.datetime, announcement: Announcement,
               attachments: Sequence[Attachment]) -> None:
    for att in attachments:
        row = AnnouncementAttachment(
            case_id=announcement.case_id, filename=compose.attachment_name(att.filename),
            content_type=compose.mime_type(att.content_type), data=att.data, added_at=now)
        session.add(row)
        announcement.attachments.append(row)


def _body(settings: Settings, case: Case, announcement: Announcement, token: str, *,
          previous: dt.datetime | None, files: Sequence[Attachment]) -> str:
    return render(
        "embargo_notice.txt.j2", settings.templates.dir,
        project=settings.project.name, case_id=case.id, subject=compose.clean(case.subject),
        until=shown(settings, announcement.until),
        previous=shown(settings, previous) if previous is not None else None,
        text=announcement.text, affected_versions=case.affected_versions or "",
        severity=(f"{case.severity} ({case.cvss_score})" if case.severity else ""),
        files=[compose.attachment_name(f.filename) for f in files],
        security_address=settings.project.security_address, token=token)
