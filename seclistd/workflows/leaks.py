"""Leaks of a case's embargoed details (issue 10, item 5): recorded, the team alerted at
once, repeated leakers flagged for removal.

Two ways in:

- ``on_command``: a signed ``X-LEAK`` with ``X-CASE: ID`` from a list member (its pinned
  key, every rule of ``member_commands.signer``) or a team member (its key in ``[team]``).
  A copy token in the signed text (the leaked copy's ``This copy's token: …``, or
  ``X-LEAK: TOKEN``) names the member whose copy leaked. Refusals are recorded on the
  member the From names and answered as for ``X-LEAVE``.
- ``on_report``: a mail from anyone else that quotes a copy's token (or answers a copy)
  or names a case under embargo ("your embargoed issue SEC-… is on a public forum").
  The token, never the From header, names the member. Case IDs are guessable, so reports
  that carry no token alert the team at most ``UNVERIFIED_ALERTS_PER_DAY`` times per case
  and day; beyond that they are still recorded.

Each leak is a ``Leak`` row and an event on the case; the team gets an alert of its own at
once (never in a digest), encrypted to each team member's key, that says how to disclose
early (``seclistd cases disclose ID``). Leaks count against the member named by a token:
from ``[membership] leaks_before_removal_flag`` leaked cases on (several reports of one
case's leaked copy are one incident), each alert flags the member for removal and the
member's history records it. Removal stays the team's call.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring
from seclistd.embargo_models import Announcement, AnnouncementRecipient, Leak
from seclistd.list_models import Member
from seclistd.mail import loops, notice_syntax
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Case, Message
from seclistd.workflows import lifecycle, member_commands, member_states, states
from seclistd.workflows.commands import (
    Refused,
    authenticate,
    check_time,
    parse_keywords,
    signed_content,
    spend,
)
from seclistd.workflows.discussion import by_tokens

ALERT_KIND = "leak_alert"
UNVERIFIED_ALERTS_PER_DAY = 5
TEXT_CHARS = 8000  # of the report, in the alert


def on_command(session: Session, now: dt.datetime, settings: Settings, keyring: Keyring | None,
               message: Message, mail: ParsedMail, unwrapped: Unwrapped) -> str | None:
    """Carry out (or refuse) a signed ``X-LEAK``. Returns None when the outcome is recorded,
    else the reason to quarantine the message with."""
    sender = loops.canonical_mailbox(mail.from_addr or "")
    spent: tuple[str, str] | None = None
    try:
        signed = signed_content(unwrapped, keyring)
        if sender in {m.email for m in settings.team.members}:
            _, sig_id = authenticate(session, settings, mail, signed)
        else:
            _, sig_id = member_commands.signer(session, mail, signed)
        spent = (sig_id, signed.signature.primary_fingerprint)
        check_time(signed.signature, now)
        keywords, text = parse_keywords(signed.text)
        names = [n for n, _ in keywords]
        if notice_syntax.LEAK not in names:
            raise Refused("the signed text must start with X-LEAK and X-CASE: ID lines")
        cases = [arg.strip() for n, arg in keywords if n == notice_syntax.CASE]
        if len(cases) != 1 or not cases[0]:
            raise Refused("a leak report names its case once, as X-CASE: ID")
        case = session.get(Case, cases[0])
        if case is None or session.get(Announcement, case.id) is None:
            raise Refused(f"X-CASE names {cases[0][:40]}, which is no case under embargo")
    except Refused as refusal:
        named = member_commands.refuse(session, now, settings, message, mail, str(refusal),
                                       action="leak_refused")
        if spent is not None:
            spend(session, now, *spent, None, message)
        return None if named else f"X-LEAK refused ({refusal}) and no member to record it on"
    spend(session, now, spent[0], spent[1], case.id, message)
    message.case_id = case.id
    message.signed_by = signed.signature.primary_fingerprint
    args = " ".join(arg for n, arg in keywords if n == notice_syntax.LEAK)
    copy = _copy_named(session, case.id, [args, text])
    record(session, now, settings, case, message, reported_by=sender, signed=True, copy=copy,
           text=text)
    return None


def _copy_named(session: Session, case_id: str, texts: list[str]
                ) -> AnnouncementRecipient | None:
    found = by_tokens(session, notice_syntax.token_candidates(*texts))
    return next((c for c in found if c.case_id == case_id), None)


def on_report(session: Session, now: dt.datetime, settings: Settings, message: Message,
              mail: ParsedMail, case_id: str, copy_id: int | None) -> None:
    """Record an unsigned report (or a leaked copy coming back from outside)."""
    case = session.get(Case, case_id)
    assert case is not None
    message.case_id = case.id
    copy = session.get(AnnouncementRecipient, copy_id) if copy_id else None
    record(session, now, settings, case, message,
           reported_by=loops.canonical_mailbox(mail.from_addr or "") or "(unknown sender)",
           signed=False, copy=copy, text=mail.text or "")


def record(session: Session, now: dt.datetime, settings: Settings, case: Case,
           message: Message, *, reported_by: str, signed: bool,
           copy: AnnouncementRecipient | None, text: str) -> Leak:
    """The Leak row, the case event, the member's count and flag, the team's alert."""
    member = session.get(Member, copy.member_id) if copy and copy.member_id else None
    session.flush()
    leak = Leak(case_id=case.id, member_id=member.id if member else None,
                reported_by=reported_by[:998], signed=signed, at=now,
                detail=text[:TEXT_CHARS], message_id=message.id)
    session.add(leak)
    session.flush()
    leaks = 0
    flagged = False
    threshold = settings.membership.leaks_before_removal_flag
    if member is not None:
        # Repeated leaks are leaks of different cases: several reports of one leaked copy
        # (anyone may send them) are one incident.
        leaks = session.scalar(select(func.count(func.distinct(Leak.case_id))).where(
            Leak.member_id == member.id)) or 0
        member_states.record(session, member, actor=reported_by, action="leak", now=now,
                             detail=f"a leak of {case.id} traced to this member's copy "
                                    f"(leaks of {leaks} case(s) so far)")
        flagged = leaks >= threshold
        if flagged:
            member_states.record(session, member, actor="seclistd", action="leak_flag",
                                 now=now, detail=f"leaks of {leaks} cases: flagged to the "
                                                 "team for removal")
    whose = f"; the copy of {member.email}" if member else "; whose copy is not known"
    alerted = _alert(session, now, settings, case, reported_by=reported_by, signed=signed,
                     member=member, leaks=leaks, flagged=flagged, text=text,
                     token_named=copy is not None)
    states.record(session, now, case, actor=reported_by, action="leak",
                  detail=f"leak reported by {reported_by} "
                         f"({'signed' if signed else 'unsigned'}){whose}; {alerted}"
                         + ("; member flagged for removal" if flagged else ""))
    return leak


def _alert(session: Session, now: dt.datetime, settings: Settings, case: Case, *,
           reported_by: str, signed: bool, member: Member | None, leaks: int, flagged: bool,
           text: str, token_named: bool) -> str:
    if not signed and not token_named:
        since = now - dt.timedelta(days=1)
        earlier = session.scalar(select(func.count()).select_from(Leak).where(
            Leak.case_id == case.id, Leak.signed.is_(False), Leak.member_id.is_(None),
            Leak.at >= since)) or 0
        if earlier > UNVERIFIED_ALERTS_PER_DAY:  # this one is counted too
            return (f"team not alerted again ({UNVERIFIED_ALERTS_PER_DAY} unverified reports "
                    "today)")
    announcement = session.get(Announcement, case.id)
    until = announcement.until if announcement else case.embargo_until
    body = render("team_leak_alert.txt.j2", settings.templates.dir, case_id=case.id,
                  reported_by=reported_by, signed=signed,
                  copy_of=member.email if member else "",
                  organization=member.organization if member else "",
                  list_name=member.list_name if member else "", leaks=leaks, flagged=flagged,
                  threshold=settings.membership.leaks_before_removal_flag,
                  until=lifecycle.local_time(settings, until) if until else "not set",
                  text=text[:TEXT_CHARS])
    told = lifecycle.notify_team(session, now, settings, case, kind=ALERT_KIND,
                                 subject="LEAK of embargoed details", body=body,
                                 private=True, encrypted=True)
    return "team alerted: " + (", ".join(told) or "no team")
