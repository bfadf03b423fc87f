"""The one reminder to list members who have not acknowledged an embargoed notice.

A member's copy (role ``member``, status ``queued`` or ``sent``: never a held copy, which
the member could not read) that is still unacknowledged gets one reminder, encrypted to
the member's key (``member_mail.mail_member``), once the last business day before the
embargo's date has begun: the embargo's end is taken in ``project.timezone``, the working
day before its local date is found on the configured calendar (``seclistd.calendar``), and
the reminder is due from the start (00:00) of that day. A notice sent after that moment
(an embargo shorter than a business day) gets no reminder: the notice itself is fresh.
No reminder once the embargo has ended or the case is no longer embargoed.
``reminded_at`` is set once; each copy is handled in its own savepoint, so one that fails
is rolled back alone, logged, and tried again at the next run.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.calendar import calendar_for
from seclistd.config import Settings
from seclistd.embargo_models import Announcement, AnnouncementRecipient
from seclistd.errors import describe
from seclistd.list_models import Member
from seclistd.mail import compose
from seclistd.mail.render import render
from seclistd.models import Case, Outbox
from seclistd.workflows import lifecycle, member_mail
from seclistd.workflows.discussion import REMINDER_KIND

log = logging.getLogger(__name__)


def due_at(settings: Settings, until: dt.datetime) -> dt.datetime:
    """The start of the last working day before the embargo's local date."""
    tz = settings.project.tz
    calendar = calendar_for(settings.calendar, tz)
    day = until.astimezone(tz).date() - dt.timedelta(days=1)
    for _ in range(366):
        if calendar.is_working_day(day):
            break
        day -= dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(0, 0), tzinfo=tz)


def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    """Remind each due, unacknowledged member copy once; returns how many were reminded."""
    rows = session.execute(
        select(AnnouncementRecipient, Announcement)
        .join(Announcement, Announcement.case_id == AnnouncementRecipient.case_id)
        .join(Case, Case.id == Announcement.case_id)
        .where(Case.state == "embargoed", Announcement.until > now,
               AnnouncementRecipient.role == "member",
               AnnouncementRecipient.status.in_(("queued", "sent")),
               AnnouncementRecipient.acknowledged_at.is_(None),
               AnnouncementRecipient.reminded_at.is_(None))
        .order_by(AnnouncementRecipient.id)
        .with_for_update(skip_locked=True, of=AnnouncementRecipient)).all()
    done = 0
    for copy, announcement in rows:
        due = due_at(settings, announcement.until)
        if now < due or announcement.created_at >= due:
            continue
        try:
            with session.begin_nested():
                if remind(session, now, settings, copy, announcement):
                    done += 1
        except Exception as exc:  # noqa: BLE001 - one copy must not stop the sweep
            log.error("reminder for copy %d of %s failed (%s); tried again next run",
                      copy.id, copy.case_id, describe(exc))
    return done


def remind(session: Session, now: dt.datetime, settings: Settings,
           copy: AnnouncementRecipient, announcement: Announcement) -> bool:
    member = session.get(Member, copy.member_id) if copy.member_id else None
    if member is None or member.state != "active":
        return False
    notice = session.get(Outbox, copy.outbox_id) if copy.outbox_id else None
    body = render("notice_reminder.txt.j2", settings.templates.dir, case_id=copy.case_id,
                  email=copy.email, until=lifecycle.local_time(settings, announcement.until),
                  until_utc=_utc(announcement.until),
                  security_address=settings.project.security_address)
    row = member_mail.mail_member(
        session, now, settings, member, kind=REMINDER_KIND,
        subject=compose.tagged_subject(copy.case_id, "Reminder: acknowledge the notice"),
        body=body, case_id=copy.case_id, in_reply_to=notice.message_id if notice else None)
    row.case_id = copy.case_id
    copy.reminded_at = now
    return True


def _utc(when: dt.datetime) -> str:
    utc = when.astimezone(dt.UTC)
    return f"{utc:%A} {utc.day} {utc:%B %Y, %H:%M} UTC"
