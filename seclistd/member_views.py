"""Read-only views of distributors-list members: the Member JSON document of the interface
contract (DESIGN.md §4: ``email``, ``organization``, ``fingerprint``, ``state``, ``list``,
``key_expires``) and ``members show``'s, which adds ``events``.

Kept beside ``seclistd.views`` (same conventions: plain dicts ready for ``json.dumps``,
timestamps ISO 8601 with offset in ``project.timezone``) so that every command and mail
that shows a member shapes it alike.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.list_models import Member, MemberEvent
from seclistd.views import iso


def member_view(member: Member, tz: ZoneInfo) -> dict[str, Any]:
    """The contract's Member fields."""
    return {"email": member.email, "organization": member.organization,
            "fingerprint": member.fingerprint, "state": member.state,
            "list": member.list_name, "key_expires": iso(member.key_expires, tz)}


def event_view(event: MemberEvent, tz: ZoneInfo) -> dict[str, Any]:
    return {"at": iso(event.at, tz), "actor": event.actor, "action": event.action,
            "from_state": event.from_state, "to_state": event.to_state,
            "detail": event.detail}


def list_members(session: Session, tz: ZoneInfo, list_name: str,
                 state: str | None = None) -> list[dict[str, Any]]:
    query = select(Member).where(Member.list_name == list_name).order_by(Member.email)
    if state:
        query = query.where(Member.state == state)
    return [member_view(m, tz) for m in session.scalars(query)]


def show_member(session: Session, tz: ZoneInfo, list_name: str,
                email: str) -> dict[str, Any] | None:
    """A member with its details and its events, oldest first (None: no such member)."""
    member = session.scalars(select(Member).where(Member.list_name == list_name,
                                                  Member.email == email.lower())).first()
    if member is None:
        return None
    doc = member_view(member, tz)
    doc.update({"name": member.name, "reason": member.state_reason,
                "joined_at": iso(member.joined_at, tz),
                "removed_at": iso(member.removed_at, tz), "request_id": member.request_id,
                # A new key offered by the member, pinned once its token comes back.
                "pending_fingerprint": member.pending_fingerprint})
    events = session.scalars(select(MemberEvent).where(MemberEvent.member_id == member.id)
                             .order_by(MemberEvent.id))
    doc["events"] = [event_view(e, tz) for e in events]
    return doc
