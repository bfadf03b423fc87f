"""Mail about a member's reachability, and the per-member loop of the member sweeps.

``tell_member`` queues a short note to the member about its own membership (suspended,
warned, removed, key expiring): it carries nothing of any case, goes out in plaintext (the
member's key may be the very problem, and a note the member cannot read helps nobody) with
the member's own return path, so that its bounce is counted like any other. ``tell_team``
queues the team's copy (encrypted to each team member's key, as all team mail).

``each_member`` runs one sweep step per member in its own savepoint: a member whose step
raises is rolled back alone, the failure is recorded on it (a ``MemberEvent``), logged,
and told to the team once per run of failures; the sweep goes on with the next member.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from seclistd import failures
from seclistd.config import Settings
from seclistd.list_models import Member, MemberEvent
from seclistd.mail.render import render
from seclistd.models import Outbox
from seclistd.outbox import enqueue
from seclistd.workflows import member_states
from seclistd.workflows.lifecycle import local_time

log = logging.getLogger(__name__)

SYSTEM = "seclistd"


def view(member: Member) -> dict[str, str]:
    """What templates may show of a member."""
    return {"email": member.email, "organization": member.organization or "",
            "list_name": member.list_name, "name": member.name or ""}


def context(settings: Settings, member: Member, **extra: object) -> dict[str, object]:
    return {"project": settings.project.name,
            "security_address": settings.project.security_address,
            "member": view(member), **extra}


def when(settings: Settings, at: dt.datetime) -> str:
    return local_time(settings, at)


def tell_member(session: Session, now: dt.datetime, settings: Settings, member: Member, *,
                kind: str, subject: str, template: str, **extra: object) -> Outbox:
    """A content-free note to the member with its own return path: encrypted when its key
    can be used, in plaintext when it cannot (``outbox.enqueue``, ``confidential=False``)."""
    body = render(template, settings.templates.dir, **context(settings, member, **extra))
    return enqueue(session, now, settings, kind=kind, to=member.email, to_name=member.name,
                   subject=subject, body=body, member=member, confidential=False)


def tell_team(session: Session, now: dt.datetime, settings: Settings, member: Member, *,
              kind: str, subject: str, template: str, **extra: object) -> list[str]:
    """The team's notice about ``member``; returns who was told."""
    body = render(template, settings.templates.dir, **context(settings, member, **extra))
    for person in settings.team.members:
        enqueue(session, now, settings, kind=kind, to=person.email, to_name=person.name,
                subject=subject, body=body)
    return [person.email for person in settings.team.members]


def told(addresses: list[str]) -> str:
    return f"team told: {', '.join(addresses)}" if addresses else "no team to tell"


def recent_failures(session: Session, member: Member, action: str) -> int:
    """How many of the member's latest events in a row are ``action`` (a sweep's failures)."""
    actions = session.scalars(select(MemberEvent.action).where(MemberEvent.member_id == member.id)
                              .order_by(MemberEvent.id.desc()).limit(50)).all()
    count = 0
    for name in actions:
        if name != action:
            break
        count += 1
    return count


def each_member(session: Session, now: dt.datetime, settings: Settings,
                members: Sequence[Member], step: Callable[[Member], None], *, sweep: str,
                on_failure: Callable[[Member, int], None] | None = None) -> int:
    """Run ``step`` on each member in its own savepoint; returns how many succeeded.

    A failure is recorded as a ``{sweep}_failed`` event on the member; ``on_failure`` gets
    the member and the number of failures in a row (to reschedule it with backoff); the
    team hears of the first failure of a run only."""
    done = 0
    action = f"{sweep}_failed"
    for member in members:
        try:
            with session.begin_nested():
                step(member)
                session.flush()
            done += 1
        except Exception as exc:  # noqa: BLE001 - one member must not stop the sweep
            error = failures.describe(exc)
            log.error("%s sweep of member %s failed: %s", sweep, member.id, error,
                      exc_info=not isinstance(exc, SQLAlchemyError))
            session.expire(member)
            count = recent_failures(session, member, action) + 1
            if on_failure is not None:
                on_failure(member, count)
            detail = f"{error}; tried again at the next run"
            if count == 1:
                detail += "; " + _tell_team_failed(session, now, settings, member, sweep, error)
            member_states.record(session, member, actor=SYSTEM, action=action, now=now,
                                 detail=detail)
    return done


def _tell_team_failed(session: Session, now: dt.datetime, settings: Settings, member: Member,
                      sweep: str, error: str) -> str:
    try:
        with session.begin_nested():
            sent = tell_team(session, now, settings, member, kind="member_sweep_failed",
                             subject=f"The {sweep} check failed for {member.email}",
                             template="team_member_sweep_failed.txt.j2", sweep=sweep,
                             error=error)
            session.flush()
    except Exception as exc:  # noqa: BLE001 - the failure stays recorded on the member
        return f"the team could not be told ({failures.describe(exc)})"
    return told(sent)
