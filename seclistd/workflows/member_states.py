"""The states of a list member and the one path that changes them (DESIGN.md §3 "Member").

``active`` → ``suspended`` (bounces, an expired or revoked key, or the team) → ``active``
again (``resume``), and from either to ``removed``. A removed member may be added again,
which makes it ``active``. Every change writes a ``MemberEvent`` in the caller's
transaction; callers that must tell someone enqueue that mail in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.list_models import Member, MemberEvent
from seclistd.workflows import member_mail

ACTIVE, SUSPENDED, REMOVED = "active", "suspended", "removed"
STATES = (ACTIVE, SUSPENDED, REMOVED)

# (from_state, action) -> to_state
TRANSITIONS: dict[tuple[str, str], str] = {
    (ACTIVE, "suspend"): SUSPENDED,
    (SUSPENDED, "resume"): ACTIVE,
    (ACTIVE, "remove"): REMOVED,
    (SUSPENDED, "remove"): REMOVED,
    (REMOVED, "readd"): ACTIVE,
}


class MemberStateError(Exception):
    """An action that the member's state does not allow (the message names what would)."""


def allowed_actions(state: str) -> list[str]:
    return sorted(action for (frm, action) in TRANSITIONS if frm == state)


def record(session: Session, member: Member, *, actor: str, action: str, now: dt.datetime,
           detail: str = "", from_state: str | None = None,
           to_state: str | None = None) -> MemberEvent:
    """Write one audit event on ``member`` (no state change of its own)."""
    event = MemberEvent(member_id=member.id, at=now, actor=actor, action=action,
                        from_state=from_state, to_state=to_state, detail=detail)
    session.add(event)
    return event


def change_state(session: Session, member: Member, action: str, *, actor: str,
                 now: dt.datetime, reason: str = "") -> MemberEvent:
    """Apply ``action`` (suspend, resume, remove, readd) to ``member`` with its audit event.

    Raises ``MemberStateError`` naming the allowed actions when the state forbids it.
    """
    to_state = TRANSITIONS.get((member.state, action))
    if to_state is None:
        allowed = ", ".join(allowed_actions(member.state)) or "none"
        raise MemberStateError(
            f"member {member.email} is {member.state}; {action} is not possible "
            f"(possible: {allowed})")
    from_state = member.state
    member.state = to_state
    member.state_reason = reason or None
    if to_state == REMOVED:
        member.removed_at = now
    elif to_state == ACTIVE:
        member.removed_at = None
        if action == "resume":
            member.bounce_score = 0
            member.bounce_warnings = 0
            member.next_bounce_warning_at = None
    event = record(session, member, actor=actor, action=action, now=now, detail=reason,
                   from_state=from_state, to_state=to_state)
    # What the state means for the member's confidential mail not yet sent.
    if to_state == SUSPENDED:
        member_mail.hold_for(session, member)
    elif to_state == REMOVED:
        member_mail.cancel_for(session, member)
    else:
        member_mail.release_held(session, now, member)
    return event


def new_bounce_token() -> str:
    """The secret part of a member's own return path (lower-case, safe in a local part)."""
    return secrets.token_hex(10)


def find_member(session: Session, list_name: str, email: str) -> Member | None:
    return session.scalars(select(Member).where(Member.list_name == list_name,
                                                Member.email == email.lower())).first()


def add_member(session: Session, *, list_name: str, email: str, organization: str,
               actor: str, now: dt.datetime, name: str = "", fingerprint: str | None = None,
               key_expires: dt.datetime | None = None, request_id: str | None = None,
               detail: str = "") -> Member:
    """Create an active member, or make a removed one active again with the new details.

    Raises ``MemberStateError`` when the address is already an active or suspended member
    of that list.
    """
    email = email.lower()
    member = find_member(session, list_name, email)
    if member is not None and member.state != REMOVED:
        raise MemberStateError(f"{email} is already a member of {list_name} ({member.state})")
    if member is None:
        member = Member(list_name=list_name, email=email, state=ACTIVE, joined_at=now,
                        bounce_token=new_bounce_token(), bounce_score=0, bounce_warnings=0,
                        name=name, organization=organization)
        session.add(member)
        session.flush()
        action, from_state = "add", None
    else:
        from_state = member.state
        member.state, member.removed_at, member.state_reason = ACTIVE, None, None
        member.joined_at = now
        member.bounce_score, member.bounce_warnings = 0, 0
        member.last_bounce_at = member.next_bounce_warning_at = None
        action = "readd"
    member.name = name or member.name
    member.organization = organization
    member.fingerprint = fingerprint
    member.key_expires = key_expires
    member.key_warned_at = None
    member.request_id = request_id or member.request_id
    record(session, member, actor=actor, action=action, now=now, detail=detail,
           from_state=from_state, to_state=ACTIVE)
    return member
