"""The report workflow: open a case for a new report, attach replies to existing cases.

Everything here runs inside the caller's transaction: the case, its audit events and the
mail it causes (receipt, team notices) are committed together or not at all.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from seclistd.calendar import calendar_for
from seclistd.config import Settings
from seclistd.mail import compose, loops
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.models import Case, Counter, Event, Message
from seclistd.outbox import automatic_answers_since, enqueue
from seclistd.workflows import completeness, lifecycle, sla, states

SYSTEM = "seclistd"


def next_id(session: Session, name: str, prefix: str, year: int) -> str:
    """The next ``PREFIX-YEAR-NNNN`` for ``name``, numbered per year.

    One atomic ``UPDATE … RETURNING`` (a row lock on PostgreSQL, the write lock on SQLite);
    the first ID of a year inserts the row, and a concurrent first insert fails the
    transaction with an IntegrityError, to be retried by the caller.
    """
    t = Counter.__table__.c
    conn = session.connection()
    value = conn.execute(update(Counter.__table__).where(t.name == name, t.year == year)
                         .values(value=t.value + 1).returning(t.value)).scalar()
    if value is None:
        value = 1
        conn.execute(insert(Counter.__table__).values(name=name, year=year, value=value))
    return f"{prefix}-{year}-{value:04d}"


def open_case(session: Session, now: dt.datetime, settings: Settings, message: Message,
              mail: ParsedMail, offered: list[str] = ()) -> Case:  # type: ignore[assignment]
    """Open a case in state ``new`` with its receipt and team notices."""
    tz = settings.project.tz
    received = message.received_at
    calendar = calendar_for(settings.calendar, tz)
    case_id = next_id(session, "case", settings.project.case_prefix,
                      received.astimezone(tz).year)
    assert mail.from_addr is not None
    own = own_addresses(settings)
    case = Case(id=case_id, state=states.NEW, subject=compose.clean(mail.subject, 500),
                reporter=mail.from_addr, reporter_name=compose.clean(mail.from_name, 200),
                reply_to=loops.reply_address(mail), received_at=received,
                ack_due=calendar.deadline(received, settings.sla.ack_business_days),
                missing_information=completeness.missing(mail.text, mail.attachments),
                encrypted=message.encrypted, waiting_on="team",
                root_message_id=mail.message_id, ack_stage=0, update_reminders=0,
                reporter_key=pick_key(settings, offered, mail.from_addr))
    wish = completeness.credit(mail.text, case.reporter_name or "")
    if wish is not None:
        case.credit, case.credit_github = wish.name, wish.github
    session.add(case)
    message.case_id = case.id
    withheld = no_receipt_reason(session, now, settings, mail, own)
    if withheld:
        receipt_status = f"withheld ({withheld})"
    else:
        to = loops.reply_address(mail)
        assert to is not None
        body = render("receipt.txt.j2", settings.templates.dir, case_id=case.id,
                      project=settings.project.name, reporter_name=case.reporter_name,
                      ack_due=lifecycle.local_time(settings, case.ack_due),
                      missing=case.missing_information, subject=case.subject or "(none)",
                      security_address=settings.project.security_address)
        enqueue(session, now, settings, kind="receipt", to=to, to_name=case.reporter_name or "",
                subject=compose.tagged_subject(case.id, mail.subject), body=body,
                case=case, in_reply_to=mail.message_id,
                references=mail.references + ([mail.message_id] if mail.message_id else []),
                auto=True, auto_submitted="auto-replied")
        receipt_status = f"sent to {to}"
        case.last_reporter_contact_at = now
    notified = notify_team(session, now, settings, case, mail, receipt_status)
    # One audit event for the opening; the mails it caused are on the case as messages.
    detail = f"report received via {message.source}; receipt {receipt_status}"
    if notified:
        detail += f"; team notified: {', '.join(notified)}"
    session.add(Event(case_id=case.id, at=now, actor=mail.from_addr, action="open",
                      from_state=None, to_state=states.NEW, detail=detail))
    if withheld:
        states.record(session, now, case, actor=SYSTEM, action="receipt_withheld",
                      detail=withheld)
    sla.schedule(case, settings)
    return case


def notify_team(session: Session, now: dt.datetime, settings: Settings, case: Case,
                mail: ParsedMail, receipt_status: str) -> list[str]:
    """Send the new case to every team member; returns their addresses."""
    if not settings.team.members:
        return []
    body = render("team_new_case.txt.j2", settings.templates.dir, case_id=case.id,
                  security_address=settings.project.security_address, reporter=case.reporter,
                  received_at=lifecycle.local_time(settings, case.received_at),
                  ack_due=lifecycle.local_time(settings, case.ack_due),
                  receipt_status=receipt_status, encrypted=case.encrypted,
                  attachments=[a for a in mail.attachments if a],
                  subject=case.subject or "(none)", text=mail.text)
    return lifecycle.notify_team(session, now, settings, case, kind="team_new_case",
                                 subject=f"New report: {mail.subject}", body=body)


def no_receipt_reason(session: Session, now: dt.datetime, settings: Settings, mail: ParsedMail,
                      own: frozenset[str]) -> str | None:
    reason = loops.no_autoreply_reason(mail, own)
    if reason:
        return reason
    to = loops.reply_address(mail)
    assert to is not None
    limit = settings.autoreply.max_per_sender_per_day
    if automatic_answers_since(session, to, now - dt.timedelta(days=1)) >= limit:
        return (f"{to} already had {limit} automatic answers in 24 hours "
                "(autoreply.max_per_sender_per_day)")
    return None


def pick_key(settings: Settings, offered: list[str], address: str | None) -> str | None:
    """The offered key to pin: one with a user ID for the address, else the first one."""
    if not offered:
        return None
    from seclistd.crypto import keyring, uid_address

    ring = keyring(settings.gnupg)
    for fingerprint in offered:
        info = ring.key(fingerprint) if ring else None
        if info and address and any(uid_address(uid) == address for uid in info.uids):
            return fingerprint
    return offered[0]


def attach_reply(session: Session, now: dt.datetime, settings: Settings, case: Case,
                 message: Message, mail: ParsedMail, label: str,
                 offered: list[str] = ()) -> None:  # type: ignore[assignment]
    """Record a reply (or a bounce or automatic reply) on its case; never answer it.

    A reply from the reporter is forwarded to the handler (the team while unassigned),
    may supply missing information or a wish for credit, and puts the team on turn.
    """
    message.case_id = case.id
    who = mail.from_addr or "(unknown sender)"
    detail = {"reply": f"message from {who}", "bounce": f"delivery failure report from {who}",
              "auto_reply": f"automatic reply from {who}"}.get(label, label)
    from_reporter = label == "reply" and who in (case.reporter, case.reply_to)
    if from_reporter:
        case.waiting_on = "team"
        detail = f"message from the reporter ({who})"
        if message.encrypted and not case.encrypted:
            case.encrypted = True
        key = pick_key(settings, offered, case.reporter)
        if key and not case.reporter_key:
            case.reporter_key = key
            detail += f"; their key {key} is now pinned"
        elif key and key != case.reporter_key:
            detail += f"; they offered another key {key}, the pinned one stays"
        _reporter_wrote(session, now, settings, case, message, mail)
    states.record(session, now, case, actor=who, action=label, detail=detail)


def _reporter_wrote(session: Session, now: dt.datetime, settings: Settings, case: Case,
                    message: Message, mail: ParsedMail) -> None:
    if case.missing_information:
        earlier = session.scalars(select(Message.text).where(
            Message.case_id == case.id, Message.from_addr == case.reporter)).all()
        everything = "\n\n".join([*(t or "" for t in earlier), mail.text])
        still = [item for item in completeness.missing(everything, mail.attachments)
                 if item in case.missing_information]
        if still != case.missing_information:
            supplied = [i for i in case.missing_information if i not in still]
            case.missing_information = still
            states.record(session, now, case, actor=case.reporter, action="information",
                          detail="supplied: " + "; ".join(supplied))
    wish = completeness.credit(mail.text, case.reporter_name or "")
    if wish is not None:
        case.credit, case.credit_github = wish.name, wish.github
    body = render("reporter_forward.txt.j2", settings.templates.dir,
                  case=lifecycle.case_view(case, settings), subject=mail.subject,
                  text=mail.text, attachments=[a for a in mail.attachments if a])
    lifecycle.notify_team(session, now, settings, case, kind="reporter_forward",
                          subject=f"Reporter wrote: {case.subject}", body=body,
                          handler_only=True)


def own_addresses(settings: Settings) -> frozenset[str]:
    addrs = {settings.project.security_address.lower()}
    addrs.update(lst.address.lower() for lst in settings.lists)
    return frozenset(addrs)
