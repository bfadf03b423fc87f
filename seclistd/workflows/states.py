"""Case states (DESIGN.md §3) and the helpers that change state with an audit event."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from seclistd.models import Case, Event

NEW = "new"
ACKNOWLEDGED = "acknowledged"
CONFIRMED = "confirmed"
EMBARGOED = "embargoed"
DISCLOSED = "disclosed"
CLOSED = "closed"
STATES = (NEW, ACKNOWLEDGED, CONFIRMED, EMBARGOED, DISCLOSED, CLOSED)
RESOLUTIONS = ("fixed", "rejected", "duplicate", "withdrawn")


def record(session: Session, now: dt.datetime, case: Case, *, actor: str, action: str,
           detail: str = "", to_state: str | None = None) -> Event:
    """Write an audit event; with ``to_state``, move the case there in the same transaction."""
    from_state = case.state
    if to_state is not None:
        case.state = to_state
    event = Event(case_id=case.id, at=now, actor=actor, action=action, from_state=from_state,
                  to_state=case.state, detail=detail)
    session.add(event)
    return event
