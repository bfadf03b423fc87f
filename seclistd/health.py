"""The `status` document: the contract's counts (``views.status``) plus the installation's
health — which daemons run (their heartbeats), the oldest mail still waiting to go out, the
next acknowledgment deadline and embargo lift, the rows that are failing, and join requests
and members by state.

``status`` returns plain JSON-ready values (times ISO 8601 in the project's zone, ages in
whole seconds); ``seclistd.status_render`` turns it into the table and the Prometheus
exposition. Every query reads a bounded number of rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd import heartbeat, views
from seclistd.list_models import JoinRequest, Member, MemberEvent, RequestEvent
from seclistd.models import Case, Event, Outbox
from seclistd.workflows import member_states, requests, states

NEWEST_FAILING = 5  # failing outbox rows listed (the counts cover all)
MEMBER_SWEEPS = {"bounce_failed": "bounce", "key_failed": "key"}
DISCLOSE_FAILED = "disclose_failed"  # disclosure.FAILED (not imported: it pulls in gpg)
REQUEST_SWEEP_FAILED = "sweep_failed"


def seconds(delta: dt.timedelta) -> int:
    return int(delta.total_seconds())


def status(session: Session, now: dt.datetime, tz: ZoneInfo) -> dict[str, Any]:
    doc = views.status(session, now, tz)
    daemons = [{**d, "started_at": views.iso(d["started_at"], tz),
                "last_seen": views.iso(d["last_seen"], tz),
                "last_seen_age_seconds": max(0, seconds(now - d["last_seen"]))}
               for d in heartbeat.read(session, now)]
    doc.update({
        "daemon_running": any(d["running"] for d in daemons),
        "daemons": daemons,
        "oldest_pending_outbox": oldest_pending(session, now, tz),
        "next_sla_deadline": next_deadline(session, now, tz),
        "next_embargo_lift": next_lift(session, now, tz),
        "outbox_failing": failing_outbox(session, now, tz),
        "disclosure_failures": disclosure_failures(session, now, tz),
        "member_sweep_failures": member_sweep_failures(session, tz),
        "request_sweep_failures": request_sweep_failures(session, tz),
        "requests_by_state": {s: 0 for s in requests.STATES} | counts(session, JoinRequest.state),
        "members_by_state": {s: 0 for s in member_states.STATES} | counts(session, Member.state),
    })
    return doc


def counts(session: Session, column: Any) -> dict[str, int]:
    return {k: v for k, v in session.execute(select(column, func.count()).group_by(column))}


def _moment(case_id: str, when: dt.datetime, now: dt.datetime, tz: ZoneInfo) -> dict[str, Any]:
    return {"case_id": case_id, "at": views.iso(when, tz), "in_seconds": seconds(when - now)}


def oldest_pending(session: Session, now: dt.datetime, tz: ZoneInfo) -> dict[str, Any] | None:
    row = session.scalars(select(Outbox).where(Outbox.status == "pending")
                          .order_by(Outbox.created_at, Outbox.id).limit(1)).first()
    if row is None:
        return None
    return {"id": row.id, "case_id": row.case_id, "kind": row.kind,
            "created_at": views.iso(row.created_at, tz), "attempts": row.attempts,
            "age_seconds": max(0, seconds(now - row.created_at))}


def next_deadline(session: Session, now: dt.datetime, tz: ZoneInfo) -> dict[str, Any] | None:
    """The earliest acknowledgment deadline of a case still ``new`` (past or not)."""
    case = session.scalars(select(Case).where(Case.state == states.NEW)
                           .order_by(Case.ack_due, Case.id).limit(1)).first()
    return _moment(case.id, case.ack_due, now, tz) if case else None


def next_lift(session: Session, now: dt.datetime, tz: ZoneInfo) -> dict[str, Any] | None:
    """The earliest end of embargo of a case still embargoed (past: its disclosure is due)."""
    case = session.scalars(select(Case).where(Case.state == states.EMBARGOED,
                                              Case.embargo_until.is_not(None))
                           .order_by(Case.embargo_until, Case.id).limit(1)).first()
    return _moment(case.id, case.embargo_until, now, tz) if case and case.embargo_until \
        else None


def failing_outbox(session: Session, now: dt.datetime, tz: ZoneInfo) -> list[dict[str, Any]]:
    """The newest failed or held rows, each with its error."""
    rows = session.scalars(select(Outbox).where(Outbox.status.in_(("failed", "held")))
                           .order_by(Outbox.id.desc()).limit(NEWEST_FAILING))
    return [{"id": o.id, "case_id": o.case_id, "status": o.status, "kind": o.kind,
             "to": o.to_addr, "attempts": o.attempts, "created_at": views.iso(o.created_at, tz),
             "error": o.last_error} for o in rows]


def disclosure_failures(session: Session, now: dt.datetime, tz: ZoneInfo
                        ) -> list[dict[str, Any]]:
    """Embargoed cases past their end whose disclosure failed (they leave the list once
    disclosed)."""
    failed = (select(Event.case_id, func.count().label("n"), func.max(Event.id).label("last"))
              .where(Event.action == DISCLOSE_FAILED).group_by(Event.case_id).subquery())
    rows = session.execute(
        select(Case.id, failed.c.n, Event.at, Event.detail)
        .join(failed, failed.c.case_id == Case.id).join(Event, Event.id == failed.c.last)
        .where(Case.state == states.EMBARGOED).order_by(Case.id).limit(100))
    return [{"case_id": cid, "failures": n, "last_at": views.iso(at, tz), "error": detail}
            for cid, n, at, detail in rows]


def member_sweep_failures(session: Session, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Members (not removed) whose latest event is a failed bounce or key sweep."""
    latest = (select(MemberEvent.member_id, func.max(MemberEvent.id).label("last"))
              .group_by(MemberEvent.member_id).subquery())
    rows = session.execute(
        select(Member.email, Member.list_name, MemberEvent.action, MemberEvent.at,
               MemberEvent.detail)
        .join(latest, latest.c.member_id == Member.id)
        .join(MemberEvent, MemberEvent.id == latest.c.last)
        .where(MemberEvent.action.in_(tuple(MEMBER_SWEEPS)),
               Member.state != member_states.REMOVED)
        .order_by(Member.email).limit(100))
    return [{"member": email, "list": lst, "sweep": MEMBER_SWEEPS[action],
             "at": views.iso(at, tz), "error": detail}
            for email, lst, action, at, detail in rows]


def request_sweep_failures(session: Session, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Open join requests whose latest event is a failed expiry sweep."""
    latest = (select(RequestEvent.request_id, func.max(RequestEvent.id).label("last"))
              .group_by(RequestEvent.request_id).subquery())
    rows = session.execute(
        select(JoinRequest.id, RequestEvent.at, RequestEvent.detail)
        .join(latest, latest.c.request_id == JoinRequest.id)
        .join(RequestEvent, RequestEvent.id == latest.c.last)
        .where(RequestEvent.action == REQUEST_SWEEP_FAILED,
               JoinRequest.state.in_(requests.OPEN_STATES))
        .order_by(JoinRequest.id).limit(100))
    return [{"request_id": rid, "at": views.iso(at, tz), "error": detail}
            for rid, at, detail in rows]
