"""Team notices that must not flood: new reports, quarantined messages and join requests.

The team hears of each new report (``report.notify_team``) and of each quarantined message
(``quarantined``) by a mail of its own, until more than ``autoreply.team_digest_after``
reports (``autoreply.quarantine_digest_after`` quarantined messages) arrived within the last
hour. Past that, each is held as a ``DigestEntry`` in the caller's transaction, and
``sweep`` (a scheduler job claiming the held entries in its own transaction) mails the team
one digest per kind listing what was held since the last digest, at most once an hour.

A notice of quarantine quotes nothing of the message: the sender as read, the reason, the
size, and the commands to look at it. A quarantined message that answers our own mail (a
mail loop, or a bounce or automatic reply naming one of our Message-IDs) causes no mail at
all, not even a digest line: we never mail because of our own mail (RFC 3834). It is still
listed by ``seclistd quarantine list``.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.mail import compose
from seclistd.mail.render import render
from seclistd.models import Case, DigestEntry, Message, Outbox
from seclistd.outbox import enqueue

log = logging.getLogger(__name__)

WINDOW = dt.timedelta(hours=1)  # "within an hour", for both thresholds
DIGEST_EVERY = dt.timedelta(hours=1)  # at most one digest of a kind per hour
SUBJECT_CHARS = 60  # of a reporter's subject, in a digest line
REASON_CHARS = 300
SCAN_BYTES = 64 * 1024  # where a bounce names the Message-ID it answers
DIGEST_LINES = 500
KINDS = {
    "case": ("team_report_digest.txt.j2", "report_digest", "Digest: {n} new reports"),
    "quarantine": ("team_quarantine_digest.txt.j2", "quarantine_digest",
                   "Digest: {n} messages quarantined"),
    "request": ("team_request_digest.txt.j2", "request_digest",
                "Digest: {n} join request notices"),
}


def _when(settings: Settings, at: dt.datetime) -> str:
    return at.astimezone(settings.project.tz).strftime("%Y-%m-%d %H:%M %Z")


# --- new reports --------------------------------------------------------------------------

def report_flood(session: Session, now: dt.datetime, settings: Settings,
                 message: Message) -> bool:
    """Whether more than ``team_digest_after`` new reports arrived in the hour up to ``now``
    (``message``, the one being handled, not counted)."""
    t = Message.__table__.c
    query = select(func.count()).where(t.route == "new_report", t.received_at > now - WINDOW,
                                       t.received_at <= now)
    if message.id is not None:
        query = query.where(t.id != message.id)
    count = session.connection().execute(query).scalar() or 0
    return count >= settings.autoreply.team_digest_after


def hold_case(session: Session, now: dt.datetime, settings: Settings, case: Case) -> None:
    """List the new case in the next digest instead of sending its notice now."""
    subject = ("(encrypted report)" if case.encrypted
               else compose.short(case.subject, SUBJECT_CHARS) or "(no subject)")
    line = f"{case.id}  {_when(settings, case.received_at)}  {case.reporter}  {subject}"
    session.add(DigestEntry(kind="case", ref=case.id, line=line, at=now))


# --- join requests ------------------------------------------------------------------------

def hold_request_notice(session: Session, now: dt.datetime, settings: Settings,
                        request_id: str, applicant: str, what: str) -> bool:
    """Past ``team_digest_after`` join requests the team heard of within the hour, list this
    notice in the next digest instead of mailing it; returns whether it was held."""
    t = Outbox.__table__.c
    mailed = session.connection().execute(
        select(func.count(func.distinct(t.request_id))).where(
            t.kind == "request_team", t.created_at > now - WINDOW,
            t.created_at <= now)).scalar() or 0
    held = session.connection().execute(
        select(func.count()).select_from(DigestEntry).where(
            DigestEntry.kind == "request", DigestEntry.at > now - WINDOW)).scalar() or 0
    if mailed + held < settings.autoreply.team_digest_after:
        return False
    line = f"{request_id}  {_when(settings, now)}  {applicant}  {compose.short(what, 80)}"
    session.add(DigestEntry(kind="request", ref=request_id, line=line, at=now))
    return True


# --- quarantine ---------------------------------------------------------------------------

def answers_our_mail(message: Message, settings: Settings) -> bool:
    """A mail loop, or a bounce or automatic reply to a mail of ours (it names one of our
    Message-IDs, which all end in ``.seclistd@<our domain>>``)."""
    if message.route == "loop":
        return True
    if message.route not in ("bounce", "auto_reply"):
        return False
    marker = f".seclistd@{settings.project.domain}>".lower().encode()
    return marker in message.raw[:SCAN_BYTES].lower()


def quarantined(session: Session, now: dt.datetime, settings: Settings,
                message: Message) -> str:
    """Tell the team that ``message`` (just quarantined, in this transaction) is kept in
    quarantine, or hold it for the digest. Returns what was done, for the log."""
    if answers_our_mail(message, settings):
        log.info("quarantined message answers our own mail: no team notice")
        return "none (it answers our own mail)"
    session.flush()  # the message's ID goes into the notice
    t = Message.__table__.c
    recent = session.connection().execute(select(func.count()).where(
        t.status == "quarantined", t.received_at > now - WINDOW, t.received_at <= now,
        t.id != message.id)).scalar() or 0
    sender = compose.clean(message.from_addr, 320) or "could not be read"
    reason = compose.short(message.quarantine_reason, REASON_CHARS) or "(none given)"
    threshold = settings.autoreply.quarantine_digest_after
    if recent >= threshold:
        line = (f"{message.id}  {_when(settings, message.received_at)}  {sender}  "
                f"{compose.short(reason, 100)}")
        session.add(DigestEntry(kind="quarantine", ref=str(message.id), line=line, at=now))
        return "held for the quarantine digest"
    if not settings.team.members:
        return "none (no team)"
    body = render("team_quarantined.txt.j2", settings.templates.dir,
                  security_address=settings.project.security_address, message=message.id,
                  sender=sender, envelope_from=compose.clean(message.envelope_from, 320) or "-",
                  received_at=_when(settings, message.received_at), size=message.size,
                  reason=reason, threshold=threshold)
    who = compose.short(message.from_addr, 80) or "an unreadable sender"
    for member in settings.team.members:
        enqueue(session, now, settings, kind="quarantined", to=member.email,
                to_name=member.name, body=body,
                subject=f"Quarantined: message {message.id} from {who}")
    return "team notified"


# --- the digest sweep ---------------------------------------------------------------------

def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    """Mail each kind's held entries as one digest, unless one went out within the hour.

    Entries are claimed ``FOR UPDATE SKIP LOCKED``, so two daemons never list one twice.
    Returns the number of entries digested.
    """
    done = 0
    for kind, (template, mail_kind, subject) in KINDS.items():
        last = session.scalar(select(func.max(DigestEntry.digested_at))
                              .where(DigestEntry.kind == kind))
        if last is not None and now - last < DIGEST_EVERY:
            continue
        entries = session.scalars(
            select(DigestEntry).where(DigestEntry.kind == kind,
                                      DigestEntry.digested_at.is_(None))
            .order_by(DigestEntry.id).with_for_update(skip_locked=True)).all()
        if not entries:
            continue
        for entry in entries:
            entry.digested_at = now
        threshold = (settings.autoreply.quarantine_digest_after if kind == "quarantine"
                     else settings.autoreply.team_digest_after)
        body = render(template, settings.templates.dir,
                      security_address=settings.project.security_address,
                      threshold=threshold, count=len(entries),
                      lines=[e.line for e in entries[:DIGEST_LINES]],
                      more=max(0, len(entries) - DIGEST_LINES))
        for member in settings.team.members:
            enqueue(session, now, settings, kind=mail_kind, to=member.email,
                    to_name=member.name, subject=subject.format(n=len(entries)), body=body)
        log.info("%s digest: %d entries", kind, len(entries))
        done += len(entries)
    return done
