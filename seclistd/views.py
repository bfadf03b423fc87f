"""Read-only views: the JSON documents of the interface contract (DESIGN.md §4).

Each function takes a session (and ``now`` where time matters) and returns plain dicts and
lists ready for ``json.dumps``; the CLI formats them as text or JSON. Timestamps are ISO
8601 with offset, in ``project.timezone``.
"""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd.embargo_models import Leak
from seclistd.list_models import Member
from seclistd.models import Case, DaemonState, Message, Outbox, QuarantineDeletion
from seclistd.workflows import states

SLA_RISK_WINDOW = dt.timedelta(hours=24)


def iso(when: dt.datetime | None, tz: ZoneInfo) -> str | None:
    return when.astimezone(tz).isoformat() if when else None


def case_summary(case: Case, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": case.id, "state": case.state, "resolution": case.resolution,
        "subject": case.subject, "reporter": case.reporter, "handler": case.handler,
        "received_at": iso(case.received_at, tz), "ack_due": iso(case.ack_due, tz),
        "acknowledged_at": iso(case.acknowledged_at, tz),
        "embargo_until": iso(case.embargo_until, tz),
    }


def list_cases(session: Session, tz: ZoneInfo, state: str | None = None) -> list[dict[str, Any]]:
    query = select(Case).order_by(Case.received_at, Case.id)
    if state:
        query = query.where(Case.state == state)
    return [case_summary(c, tz) for c in session.scalars(query)]


def _outgoing_text(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    body = msg.get_body(preferencelist=("plain",))
    return body.get_content() if body is not None else ""


def show_case(session: Session, tz: ZoneInfo, case_id: str) -> dict[str, Any] | None:
    case = session.get(Case, case_id)
    if case is None:
        return None
    doc = case_summary(case, tz)
    doc["missing_information"] = list(case.missing_information or [])
    doc.update({"affected_versions": case.affected_versions, "severity": case.severity,
                "cvss_score": case.cvss_score, "duplicate_of": case.duplicate_of,
                "credit": case.credit, "credit_github": case.credit_github,
                "waiting_on": case.waiting_on, "fixed_version": case.fixed_version,
                "released_at": iso(case.released_at, tz),
                "disclosed_at": iso(case.disclosed_at, tz)})
    # In time order; messages stored in the same instant in the order they were stored.
    entries: list[tuple[dt.datetime, int, int, dict[str, Any]]] = []
    for m in session.scalars(select(Message).where(Message.case_id == case.id)):
        entries.append((m.received_at, 0, m.id, {
            "direction": "in", "id": m.id, "from": m.from_addr, "to": m.to_addrs,
            "subject": m.subject, "at": iso(m.received_at, tz), "text": m.text or "",
            "kind": m.route}))
    for o in session.scalars(select(Outbox).where(Outbox.case_id == case.id)):
        entries.append((o.created_at, 1, o.id, {
            "direction": "out", "from": o.envelope_from, "to": o.to_addr, "subject": o.subject,
            "at": iso(o.created_at, tz), "text": _outgoing_text(o.raw), "kind": o.kind,
            "status": o.status}))
    doc["messages"] = [e for *_, e in sorted(entries, key=lambda e: e[:3])]
    doc["events"] = [{"at": iso(e.at, tz), "actor": e.actor, "action": e.action,
                      "from_state": e.from_state, "to_state": e.to_state, "detail": e.detail}
                     for e in case.events]
    from seclistd.workflows import announce

    doc["announcement"] = announce.view(session, case, tz) or {
        "until": iso(case.embargo_until, tz), "recipients": []}
    doc["leaks"] = leaks(session, tz, case)
    return doc


def leaks(session: Session, tz: ZoneInfo, case: Case) -> list[dict[str, Any]]:
    """The leaks recorded on the case, each with the member whose copy leaked (if known)."""
    found = session.scalars(select(Leak).where(Leak.case_id == case.id).order_by(Leak.id))
    emails = {m.id: m.email for m in session.scalars(select(Member).where(Member.id.in_(
        select(Leak.member_id).where(Leak.case_id == case.id))))}
    return [{"at": iso(x.at, tz), "reported_by": x.reported_by, "signed": x.signed,
             "member": emails.get(x.member_id) if x.member_id else None} for x in found]


def outbox_row(o: Outbox, tz: ZoneInfo) -> dict[str, Any]:
    return {"id": o.id, "case_id": o.case_id, "to": o.to_addr, "subject": o.subject,
            "status": o.status, "attempts": o.attempts, "message_id": o.message_id,
            "encrypted": o.encrypted, "kind": o.kind, "created_at": iso(o.created_at, tz),
            "next_attempt_at": iso(o.next_attempt_at, tz) if o.status == "pending" else None,
            "last_error": o.last_error}


def list_outbox(session: Session, tz: ZoneInfo, status: str | None = None
                ) -> list[dict[str, Any]]:
    query = select(Outbox).order_by(Outbox.id)
    if status:
        query = query.where(Outbox.status == status)
    return [outbox_row(o, tz) for o in session.scalars(query)]


def quarantine_row(m: Message, tz: ZoneInfo) -> dict[str, Any]:
    return {"id": m.id, "received_at": iso(m.received_at, tz), "source": m.source,
            "from": m.from_addr, "subject": m.subject, "size": m.size,
            "message_id": m.message_id, "reason": m.quarantine_reason}


def list_quarantine(session: Session, tz: ZoneInfo) -> list[dict[str, Any]]:
    query = select(Message).where(Message.status == "quarantined").order_by(Message.id)
    return [quarantine_row(m, tz) for m in session.scalars(query)]


def show_quarantined(session: Session, tz: ZoneInfo, message_id: int,
                     excerpt: int = 256 * 1024) -> dict[str, Any] | None:
    """One quarantined message; ``raw_excerpt`` is its first ``excerpt`` bytes as text
    (bytes that are not UTF-8 as ``\\xNN``), ``truncated`` says whether more follow."""
    m = session.get(Message, message_id)
    if m is None or m.status != "quarantined":
        return None
    doc = quarantine_row(m, tz)
    doc["envelope_from"] = m.envelope_from
    doc["sha256"] = m.sha256
    doc["raw_excerpt"] = m.raw[:excerpt].decode("utf-8", "backslashreplace")
    doc["truncated"] = len(m.raw) > excerpt
    return doc


def quarantined_raw(session: Session, message_id: int) -> bytes | None:
    m = session.get(Message, message_id)
    return m.raw if m is not None and m.status == "quarantined" else None


def deleted_quarantined(session: Session, tz: ZoneInfo, message_id: int
                        ) -> dict[str, Any] | None:
    """The audit record of a quarantined message that was deleted, if it was."""
    d = session.scalars(select(QuarantineDeletion).where(
        QuarantineDeletion.message_id == message_id)).first()
    if d is None:
        return None
    return {"id": d.message_id, "deleted_at": iso(d.deleted_at, tz), "actor": d.actor,
            "reason": d.reason, "sha256": d.sha256, "size": d.size,
            "received_at": iso(d.received_at, tz), "from": d.from_addr,
            "quarantine_reason": d.quarantine_reason}


def _counts(session: Session, column: Any) -> dict[str, int]:
    return {k: v for k, v in session.execute(select(column, func.count()).group_by(column))}


def status(session: Session, now: dt.datetime, tz: ZoneInfo) -> dict[str, Any]:
    by_state = {s: 0 for s in states.STATES} | _counts(session, Case.state)
    by_status = {s: 0 for s in ("pending", "sent", "failed", "held")} | _counts(
        session, Outbox.status)
    at_risk = session.scalar(select(func.count(Case.id)).where(
        Case.state == states.NEW, Case.ack_due <= now + SLA_RISK_WINDOW)) or 0
    last = session.get(DaemonState, "last_imap_pass")
    return {
        "messages_total": session.scalar(select(func.count(Message.id))) or 0,
        "quarantined": session.scalar(select(func.count(Message.id)).where(
            Message.status == "quarantined")) or 0,
        "cases_by_state": by_state,
        "outbox_by_status": by_status,
        "sla_at_risk": at_risk,
        "last_imap_pass": iso(dt.datetime.fromisoformat(last.value), tz) if last else None,
        "sweep_failures": sweep_failures(session, tz),
    }


def sweep_failures(session: Session, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Cases the SLA sweep failed on, with the error and when it tries again."""
    query = select(Case).where(Case.sweep_error.is_not(None)).order_by(Case.id)
    return [{"case_id": c.id, "state": c.state, "error": c.sweep_error,
             "failures": c.sweep_failures, "next_attempt_at": iso(c.next_sla_at, tz)}
            for c in session.scalars(query)]
