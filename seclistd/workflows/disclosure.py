"""The disclosure of a case, on time: the advisory, the "now public" notices, the fixing
release, and the sweep that discloses at the embargo's end (issue 10, item 6).

One path: every disclosure goes through ``lifecycle.act(... "disclose" ...)``, whose
``disclose`` step calls ``publish`` here; the sweep, the operator's ``cases disclose``, a
signed ``X-DISCLOSE`` and a fixing release that is due all take it. ``publish`` queues, in
the caller's transaction:

- the advisory, to each of the lists' ``public_addresses``: plaintext, PGP/MIME
  multipart/signed by the project key (RFC 3156). It is signed here, when the row is
  written, not by the relay: the outbox row then holds the exact bytes that go out (one
  Message-ID, the same bytes on every retry), the relay needs no new kind of row (it sends
  a row with no key to encrypt to as it is), and an advisory that cannot be signed (no
  project key, gpg failing) is never queued: the disclosure fails as a whole and is retried,
  rather than going out unsigned;
- a "now public" notice to the members who were sent the embargoed notice (the
  announcement's recipients of role ``member`` that were not held) and to the team; it is
  public now, so a member whose key cannot be used gets it in plaintext;
- ``cases.disclosed_at`` and ``announcements.public_at``.

The reporter's mail (told and credited) is the ``disclose`` action's own (``lifecycle``).

The sweep (``sweep``, a scheduler job and part of ``run --once``) claims the embargoed cases
whose ``embargo_until`` has come, ``FOR UPDATE SKIP LOCKED`` (on SQLite the writer lock of
``BEGIN IMMEDIATE``), and discloses each in its own savepoint. The state change is in the
same transaction as the advisory's outbox rows, so a second daemon, a second sweep or a
restart finds the case ``disclosed`` and queues nothing: the advisory goes out once. It
never fires early: a case is due only when ``embargo_until <= now``. A case whose
disclosure fails is rolled back alone, the failure is an event on it (``disclose_failed``;
the team is told the first time) and it is retried with Postfix's backoff, counted from
those events, until it works.

The fixing release (ORAS: disclose on the day of the release): ``released`` records
``fixed_version`` and ``released_at``; the case is disclosed at once when there is no
embargo or its end has passed, else the sweep discloses it at the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from seclistd import failures
from seclistd.config import Settings
from seclistd.embargo_models import Announcement, AnnouncementRecipient
from seclistd.list_models import Member
from seclistd.mail import compose
from seclistd.mail.render import render
from seclistd.models import Case, Event
from seclistd.outbox import enqueue
from seclistd.workflows import states

log = logging.getLogger(__name__)

SYSTEM = "seclistd"
BATCH = 100
ADVISORY = "advisory"  # outbox kind: the signed advisory to a public address
NOW_PUBLIC = "now_public"  # outbox kind: the notice to members and the team
FAILED = "disclose_failed"  # event action: a disclosure the sweep could not make
NOTIFIED = ("queued", "sent", "acknowledged")  # copies that were (or are being) sent


class DisclosureError(Exception):
    """The disclosure cannot be made now (the text says why and what would fix it)."""


# -- the fixing release -------------------------------------------------------------------

def record_release(case: Case, version: str | None, now: dt.datetime,
                   settings: Settings) -> str:
    """Record the fixing release on ``case``; the event detail. DisclosureError without a
    version."""
    version = compose.clean(version, 255)
    if not version:
        raise DisclosureError("released needs the fixed version (--version V, or "
                              "X-RELEASED: V), e.g. 1.2.3")
    case.fixed_version = version
    case.released_at = now
    if release_due(case, now):
        return f"fixed in {version}: disclosed at once"
    assert case.embargo_until is not None
    return (f"fixed in {version}: disclosed when the embargo ends, "
            f"{when(settings, case.embargo_until)}")


def release_due(case: Case, now: dt.datetime) -> bool:
    """Whether a released case is disclosed now (no embargo, or its end has come)."""
    return case.embargo_until is None or case.embargo_until <= now


# -- the disclosure ------------------------------------------------------------------------

def when(settings: Settings, at: dt.datetime) -> str:
    """A time for people: the project's zone with weekday, and UTC."""
    local = at.astimezone(settings.project.tz)
    utc = at.astimezone(dt.UTC)
    text = f"{local:%A} {local.day} {local:%B %Y, %H:%M %Z}"
    if local.utcoffset() != dt.timedelta(0):
        text += f" ({utc:%A %H:%M} UTC)"
    return text


def public_addresses(settings: Settings) -> list[str]:
    return list(dict.fromkeys(a for lst in settings.lists for a in lst.public_addresses))


def advisory_text(session: Session, now: dt.datetime, settings: Settings, case: Case,
                  credit: str) -> str:
    """The advisory's text, from the case's fields; its details are the team's text of the
    embargoed notice, when there was one (the text given to `disclose` is for the reporter)."""
    announcement = session.get(Announcement, case.id)
    details = announcement.text.strip() if announcement else ""
    severity = case.severity or ""
    if case.severity and case.cvss_score is not None:
        severity = f"{case.cvss_score:.1f} ({case.severity})"
    body = render("advisory.txt.j2", settings.templates.dir,
                  project=settings.project.name, case_id=case.id, title=case.subject,
                  published=when(settings, now), severity=severity,
                  affected=case.affected_versions or "", fixed=case.fixed_version or "",
                  released=when(settings, case.released_at) if case.released_at else "",
                  workaround=case.workaround or "", credit=credit, details=details,
                  security_address=settings.project.security_address)
    # Trailing blanks would be at the mercy of every hop; the signature covers the lines.
    return "\n".join(line.rstrip() for line in body.splitlines()) + "\n"


def _sign(settings: Settings, raw: bytes) -> bytes:
    from seclistd.crypto import CryptoError, keyring
    from seclistd.mail.pgpmime import sign_message

    ring = keyring(settings.gnupg)
    if ring is None:
        raise DisclosureError("gpg is not installed, so the advisory cannot be signed; "
                              "install gnupg and disclose again")
    try:
        return sign_message(raw, ring.sign_detached, boundary=f"seclistd-{secrets.token_hex(12)}")
    except CryptoError as exc:
        raise DisclosureError(f"the advisory cannot be signed ({exc}); nothing was "
                              "disclosed") from exc


def publish(session: Session, now: dt.datetime, settings: Settings, case: Case, *,
            credit: str) -> str:
    """Queue the signed advisory and the "now public" notices; set the disclosure times.
    Returns what was done, for the event. Called by ``lifecycle`` for ``disclose`` only."""
    if case.disclosed_at is not None:  # never twice, whatever the caller
        return f"already disclosed at {case.disclosed_at.isoformat()}"
    advisory = advisory_text(session, now, settings, case, credit)
    subject = compose.tagged_subject(case.id, f"Security advisory: {case.subject}")
    addresses = public_addresses(settings)
    for address in addresses:
        row = enqueue(session, now, settings, kind=ADVISORY, to=address, subject=subject,
                      body=advisory, case=case, auto_submitted=None, confidential=False)
        row.raw = _sign(settings, row.raw)
        row.encrypt_to, row.must_encrypt = None, False  # public: signed, never encrypted
    members = _tell_members(session, now, settings, case, advisory)
    team = _tell_team(session, now, settings, case, advisory, addresses)
    case.disclosed_at = now
    announcement = session.get(Announcement, case.id)
    if announcement is not None:
        announcement.public_at = now
    parts = [("advisory signed and sent to " + ", ".join(addresses)) if addresses else
             "no public address configured (lists.public_addresses): no advisory was mailed",
             f"now-public notice to {members} member(s) and {len(team)} team member(s)"]
    return "; ".join(parts)


def _tell_members(session: Session, now: dt.datetime, settings: Settings, case: Case,
                  advisory: str) -> int:
    copies = session.scalars(
        select(AnnouncementRecipient).where(AnnouncementRecipient.case_id == case.id,
                                            AnnouncementRecipient.role == "member",
                                            AnnouncementRecipient.status.in_(NOTIFIED))
        .order_by(AnnouncementRecipient.id)).all()
    told = 0
    seen: set[int] = set()
    for copy in copies:
        member = session.get(Member, copy.member_id) if copy.member_id is not None else None
        if member is None or member.state == "removed" or member.id in seen:
            continue
        seen.add(member.id)
        body = render("now_public.txt.j2", settings.templates.dir, case_id=case.id,
                      project=settings.project.name, advisory=advisory, team=False,
                      addresses=[], security_address=settings.project.security_address)
        row = enqueue(session, now, settings, kind=NOW_PUBLIC, to=member.email,
                      to_name=member.name, body=body, case=case, member=member,
                      subject=compose.tagged_subject(case.id, f"Now public: {case.subject}"),
                      confidential=False)
        row.case_id = case.id
        told += 1
    return told


def _tell_team(session: Session, now: dt.datetime, settings: Settings, case: Case,
               advisory: str, addresses: list[str]) -> list[str]:
    from seclistd.workflows import lifecycle

    body = render("now_public.txt.j2", settings.templates.dir, case_id=case.id,
                  project=settings.project.name, advisory=advisory, team=True,
                  addresses=addresses, security_address=settings.project.security_address)
    return lifecycle.notify_team(session, now, settings, case, kind=NOW_PUBLIC,
                                 subject=f"Now public: {case.subject}", body=body)


# -- the sweep -----------------------------------------------------------------------------

def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    """Disclose every embargoed case whose embargo has ended; how many were disclosed."""
    from seclistd.workflows import lifecycle

    cases = session.scalars(
        select(Case).where(Case.state == states.EMBARGOED, Case.embargo_until.is_not(None),
                           Case.embargo_until <= now)
        .order_by(Case.embargo_until).limit(BATCH).with_for_update(skip_locked=True)).all()
    disclosed = 0
    for case in cases:
        if not _retry_due(session, now, case):
            continue
        try:
            with session.begin_nested():
                lifecycle.act(session, now, settings, case.id,
                              lifecycle.Request(action="disclose"), SYSTEM)
                session.flush()
            disclosed += 1
        except Exception as exc:  # noqa: BLE001 - one case must not stop the sweep
            _failed(session, now, settings, case, exc)
    if disclosed:
        log.info("disclosure sweep disclosed %d case(s)", disclosed)
    return disclosed


def _failures(session: Session, case: Case) -> tuple[int, dt.datetime | None]:
    count, last = session.execute(
        select(func.count(), func.max(Event.at)).where(Event.case_id == case.id,
                                                       Event.action == FAILED)).one()
    return int(count or 0), last


def _retry_due(session: Session, now: dt.datetime, case: Case) -> bool:
    count, last = _failures(session, case)
    return not count or last is None or now >= last + dt.timedelta(
        seconds=failures.backoff(count))


def _failed(session: Session, now: dt.datetime, settings: Settings, case: Case,
            exc: Exception) -> None:
    """Record the failed disclosure on the case (its savepoint is rolled back); the team is
    told the first time, and the sweep tries again with backoff."""
    from seclistd.workflows import lifecycle

    error = (str(exc) if isinstance(exc, (DisclosureError, lifecycle.ActionError))
             else failures.describe(exc))
    log.error("disclosure of %s failed (retried with backoff): %s", case.id, error,
              exc_info=not isinstance(exc, (SQLAlchemyError, DisclosureError,
                                            lifecycle.ActionError)))
    count, _last = _failures(session, case)
    retry_at = now + dt.timedelta(seconds=failures.backoff(count + 1))
    detail = f"{error}; retried from {when(settings, retry_at)}"
    if not count:
        try:
            with session.begin_nested():
                body = render("team_disclose_failed.txt.j2", settings.templates.dir,
                              case_id=case.id, error=error, retry_at=when(settings, retry_at),
                              project=settings.project.name,
                              security_address=settings.project.security_address)
                sent = lifecycle.notify_team(session, now, settings, case, kind=FAILED,
                                             subject="The disclosure failed", body=body)
                session.flush()
            detail += f"; team told: {', '.join(sent) or 'nobody (no team)'}"
        except Exception as told_exc:  # noqa: BLE001 - the failure stays recorded
            detail += f"; the team could not be told ({failures.describe(told_exc)})"
    states.record(session, now, case, actor=SYSTEM, action=FAILED, detail=detail)
