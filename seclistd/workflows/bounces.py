"""Bounces of mail to list members: the score, suspension, warnings and removal.

A message that came back to a member's own return path (``classify.rule_member_bounce``) is
handed to ``handle`` in the transaction that stored it. What the bounce reports is read by
``mail.dsn``; the member is the one its return path names, never one the bounce text names.

- A hard failure raises ``bounce_score`` by 1, at most once per day (the local date in
  ``project.timezone``, as Mailman counts it). A score whose last counted bounce is older
  than ``membership.bounce_stale_after_days`` starts again at 0 first.
- At ``membership.bounce_score_threshold`` an active member is suspended (no embargoed mail
  while suspended); the member gets a short note (which may bounce too: that is counted,
  at most once a day, and changes nothing more) and the team is told.
- ``sweep`` then sends the suspended member ``membership.bounce_warnings`` warnings,
  ``bounce_warning_interval_days`` apart (the first one interval after the suspension),
  and removes it one interval after the last, unless the team resumed it (``members
  resume`` resets the score and the warnings: ``member_states.change_state``).
- Soft failures (delays, 4.x.x) and mail that is no bounce at all (an automatic reply sent
  to the return path) are recorded and counted for nothing; so is every bounce of a member
  already suspended or removed (the score still counts while suspended).

Every step is a ``MemberEvent``; the message row is linked to nothing (no case, no request):
the event names the message's number.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.failures import backoff
from seclistd.list_models import Member
from seclistd.mail import dsn
from seclistd.mail.parse import ParsedMail
from seclistd.models import Message
from seclistd.workflows import member_states
from seclistd.workflows.member_notices import (
    SYSTEM,
    each_member,
    tell_member,
    tell_team,
    told,
    when,
)

log = logging.getLogger(__name__)

BATCH = 500
REASON = "mail to the member kept bouncing"  # the start of a suspension reason set here


def _score(value: float) -> str:
    return f"{value:g}"


def handle(session: Session, now: dt.datetime, settings: Settings, message: Message,
           mail: ParsedMail, member_id: int) -> None:
    """Record the bounce ``message`` of the member ``member_id`` and act on it."""
    member = session.get(Member, member_id, with_for_update=True)
    assert member is not None  # classify found it in this transaction
    session.flush()  # the message's number goes into the event
    report = dsn.read(message.raw, from_addr=mail.from_addr, subject=mail.subject)
    seen = f"message {message.id}: {report.summary()}"
    if not report.hard:
        what = ("a delay or temporary failure" if report.verdict == dsn.SOFT
                else "not a delivery failure")
        member_states.record(session, member, actor=SYSTEM, action="bounce_ignored", now=now,
                             detail=f"{seen}; {what}, not counted")
        return
    count_hard(session, now, settings, member, seen)


def count_hard(session: Session, now: dt.datetime, settings: Settings, member: Member,
               seen: str) -> None:
    """Count one hard failure (at most once a day), and suspend at the threshold."""
    ms = settings.membership
    if member.state == member_states.REMOVED:
        member_states.record(session, member, actor=SYSTEM, action="bounce", now=now,
                             detail=f"{seen}; the member is removed, not counted")
        return
    notes: list[str] = []
    last = member.last_bounce_at
    if last is not None and now - last > dt.timedelta(days=ms.bounce_stale_after_days):
        notes.append(f"the score of {_score(member.bounce_score)} was stale (last counted "
                     f"{when(settings, last)}) and starts again at 0")
        member.bounce_score = 0
    tz = settings.project.tz
    if last is not None and last.astimezone(tz).date() == now.astimezone(tz).date():
        member_states.record(session, member, actor=SYSTEM, action="bounce", now=now,
                             detail=f"{seen}; a bounce was counted today already, score "
                                    f"stays {_score(member.bounce_score)}")
        return
    member.bounce_score = (member.bounce_score or 0) + 1
    member.last_bounce_at = now
    notes.append(f"score {_score(member.bounce_score)} of {_score(ms.bounce_score_threshold)}")
    member_states.record(session, member, actor=SYSTEM, action="bounce", now=now,
                         detail=f"{seen}; " + "; ".join(notes))
    if member.bounce_score >= ms.bounce_score_threshold and \
            member.state == member_states.ACTIVE:
        suspend(session, now, settings, member)


def suspend(session: Session, now: dt.datetime, settings: Settings, member: Member) -> None:
    """Suspend ``member`` for its bounces, tell it and the team, schedule the warnings."""
    ms = settings.membership
    interval = dt.timedelta(days=ms.bounce_warning_interval_days)
    removal = now + interval * (ms.bounce_warnings + 1)
    reason = (f"{REASON} (score {_score(member.bounce_score)}, threshold "
              f"{_score(ms.bounce_score_threshold)})")
    member_states.change_state(session, member, "suspend", actor=SYSTEM, now=now,
                               reason=reason)
    member.bounce_warnings = 0
    member.next_bounce_warning_at = now + interval
    tell_member(session, now, settings, member, kind="member_suspended",
                subject=f"Your {member.list_name} membership is suspended: mail to you bounces",
                template="member_bounce_suspended.txt.j2", score=_score(member.bounce_score),
                remove_at=when(settings, removal), warnings=ms.bounce_warnings)
    sent = tell_team(session, now, settings, member, kind="member_suspended",
                     subject=f"Member suspended (bounces): {member.email}",
                     template="team_member_bounces.txt.j2", what="suspended",
                     score=_score(member.bounce_score), remove_at=when(settings, removal),
                     warnings=ms.bounce_warnings)
    member_states.record(session, member, actor=SYSTEM, action="bounce_notice", now=now,
                         detail=f"member told; {told(sent)}; removal due "
                                f"{when(settings, removal)} unless resumed")


def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    """Warn, then remove, the members suspended for their bounces whose next step is due."""
    members = session.scalars(
        select(Member).where(Member.state == member_states.SUSPENDED,
                             Member.next_bounce_warning_at.is_not(None),
                             Member.next_bounce_warning_at <= now)
        .order_by(Member.next_bounce_warning_at, Member.id).limit(BATCH)
        .with_for_update(skip_locked=True)).all()

    def retry_later(member: Member, failures_in_a_row: int) -> None:
        member.next_bounce_warning_at = now + dt.timedelta(seconds=backoff(failures_in_a_row))

    done = each_member(session, now, settings, members,
                       lambda member: _step(session, now, settings, member),
                       sweep="bounce", on_failure=retry_later)
    if members:
        log.info("bounce sweep handled %d members", len(members))
    return done


def _step(session: Session, now: dt.datetime, settings: Settings, member: Member) -> None:
    ms = settings.membership
    interval = dt.timedelta(days=ms.bounce_warning_interval_days)
    if (member.bounce_warnings or 0) < ms.bounce_warnings:
        member.bounce_warnings = (member.bounce_warnings or 0) + 1
        left = ms.bounce_warnings - member.bounce_warnings
        removal = now + interval * (left + 1)
        member.next_bounce_warning_at = now + interval
        tell_member(session, now, settings, member, kind="member_bounce_warning",
                    subject=f"Warning {member.bounce_warnings} of {ms.bounce_warnings}: your "
                            f"{member.list_name} membership will end",
                    template="member_bounce_warning.txt.j2", warning=member.bounce_warnings,
                    warnings=ms.bounce_warnings, remove_at=when(settings, removal))
        member_states.record(session, member, actor=SYSTEM, action="bounce_warning", now=now,
                             detail=f"warning {member.bounce_warnings} of {ms.bounce_warnings}"
                                    f" sent; removal due {when(settings, removal)}")
        return
    member.next_bounce_warning_at = None
    reason = (f"{REASON}: removed after {ms.bounce_warnings} warning(s) while suspended "
              f"(score {_score(member.bounce_score)})")
    member_states.change_state(session, member, "remove", actor=SYSTEM, now=now, reason=reason)
    tell_member(session, now, settings, member, kind="member_removed",
                subject=f"You are no longer on {member.list_name}",
                template="member_bounce_removed.txt.j2", warnings=ms.bounce_warnings)
    sent = tell_team(session, now, settings, member, kind="member_removed",
                     subject=f"Member removed (bounces): {member.email}",
                     template="team_member_bounces.txt.j2", what="removed",
                     score=_score(member.bounce_score), remove_at=when(settings, now),
                     warnings=ms.bounce_warnings)
    member_states.record(session, member, actor=SYSTEM, action="bounce_notice", now=now,
                         detail=f"member told of the removal; {told(sent)}")
