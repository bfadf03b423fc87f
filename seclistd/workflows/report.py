"""The report workflow: open a case for a new report, attach replies to existing cases.

Everything here runs inside the caller's transaction: the case, its audit events and the
mail it causes (receipt, team notices) are committed together or not at all.

The first mail of a report may pin the key it carries (trust on first use, recorded as a
``key_pinned`` event) and states the credit wish; what a later mail may change, and the
proof it needs, is ``reporter_changes``. The receipt goes to the return path (RFC 3834);
the case remembers the report's Reply-To (``answer_to``) for the answers people write.
"""

from __future__ import annotations

import datetime as dt
from email import policy

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from seclistd.calendar import calendar_for
from seclistd.config import Settings
from seclistd.mail import compose, loops
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.models import Case, Counter, Event, Message, Outbox
from seclistd.outbox import all_automatic_answers_since, automatic_answers_since, enqueue
from seclistd.workflows import completeness, lifecycle, notices, reporter_changes, sla, states

SYSTEM = "seclistd"
# Of a stranger's words, a receipt quotes only this much of the subject and display name,
# never the body: a receipt to a forged return path must not carry someone's spam.
RECEIPT_SUBJECT_CHARS = 60
RECEIPT_NAME_CHARS = 40


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
    """Open a case in state ``new`` with its receipt and team notices; the report's key,
    if it offers one, is pinned (trust on first use)."""
    tz = settings.project.tz
    received = message.received_at
    calendar = calendar_for(settings.calendar, tz)
    case_id = next_id(session, "case", settings.project.case_prefix,
                      received.astimezone(tz).year)
    assert mail.from_addr is not None
    own = own_addresses(settings)
    case = Case(id=case_id, state=states.NEW, subject=compose.clean(mail.subject, 500),
                reporter=mail.from_addr, reporter_name=compose.clean(mail.from_name, 200),
                reply_to=loops.reply_address(mail), answer_to=reply_to_address(mail, own),
                received_at=received,
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
        name = compose.short(case.reporter_name, RECEIPT_NAME_CHARS)
        body = render("receipt.txt.j2", settings.templates.dir, case_id=case.id,
                      project=settings.project.name, reporter_name=name,
                      ack_due=lifecycle.local_time(settings, case.ack_due),
                      missing=case.missing_information,
                      subject=compose.short(case.subject, RECEIPT_SUBJECT_CHARS) or "(none)",
                      security_address=settings.project.security_address,
                      credit_known=wish is not None,
                      default_credit=settings.project.default_credit)
        enqueue(session, now, settings, kind="receipt", to=to, to_name=name,
                subject=compose.tagged_subject(
                    case.id, compose.short(mail.subject, RECEIPT_SUBJECT_CHARS)), body=body,
                case=case, in_reply_to=mail.message_id,
                references=mail.references + ([mail.message_id] if mail.message_id else []),
                auto=True, auto_submitted="auto-replied")
        receipt_status = f"sent to {to}"
        case.last_reporter_contact_at = now
    # One audit event for the opening; the mails it caused are on the case as messages.
    detail = f"report received via {message.source}; receipt {receipt_status}"
    if notices.report_flood(session, now, settings, message):
        notices.hold_case(session, now, settings, case)
        detail += ("; team told in the next digest (over autoreply.team_digest_after new "
                   "reports within an hour)")
    elif notified := notify_team(session, now, settings, case, mail, receipt_status):
        detail += f"; team notified: {', '.join(notified)}"
    session.add(Event(case_id=case.id, at=now, actor=mail.from_addr, action="open",
                      from_state=None, to_state=states.NEW, detail=detail))
    if case.reporter_key:
        states.record(session, now, case, actor=case.reporter, action="key_pinned",
                      detail=f"key {case.reporter_key} pinned on trust on first use: it came "
                             "with the report; a later key needs this key's signature or a "
                             "confirmation from the reporter's address")
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
                                 subject=f"New report: {mail.subject}", body=body, private=True)


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
    hourly = settings.autoreply.max_per_hour
    if all_automatic_answers_since(session, now - dt.timedelta(hours=1)) >= hourly:
        return (f"{hourly} automatic answers went out within the last hour "
                "(autoreply.max_per_hour)")
    return None


def pick_key(settings: Settings, offered: list[str], address: str | None) -> str | None:
    """The offered key to pin: one with a user ID for the address, else the first one."""
    if not offered:
        return None
    from seclistd.crypto import keyring

    return reporter_changes.pick_key(keyring(settings.gnupg), offered, address)


def reply_to_address(mail: ParsedMail, own: frozenset[str]) -> str | None:
    """The report's Reply-To when it is exactly one usable address other than From; else
    None (answers then go to From)."""
    values = mail.headers.get("reply-to", [])
    if len(values) != 1:
        return None
    try:
        header = policy.default.header_factory("reply-to", values[0])
        addresses = header.addresses  # type: ignore[attr-defined]
        defects = header.defects
    except Exception:  # noqa: BLE001 - stdlib header parsing raises many kinds
        return None
    if defects or len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        return None
    spec = compose.clean(addresses[0].addr_spec, 320).lower()
    if spec in own or spec == mail.from_addr or "@" not in spec:
        return None
    if spec.partition("@")[0] in loops.DAEMON_LOCALPARTS:
        return None
    return spec


def attach_reply(session: Session, now: dt.datetime, settings: Settings, case: Case,
                 message: Message, mail: ParsedMail, label: str,
                 evidence: reporter_changes.Evidence | None = None) -> None:
    """Record a reply (or a bounce or automatic reply) on its case; never answer it.

    A reply from the reporter is forwarded to the handler (the team while unassigned), may
    supply missing information, and puts the team on turn. A new key or credit wish in it
    counts only with proof (``reporter_changes``); a reply carrying a confirmation code
    applies the change that code was mailed for.
    """
    evidence = evidence or reporter_changes.Evidence()
    message.case_id = case.id
    who = mail.from_addr or "(unknown sender)"
    detail = {"reply": f"message from {who}", "bounce": f"delivery failure report from {who}",
              "auto_reply": f"automatic reply from {who}"}.get(label, label)
    on_record = {loops.canonical_mailbox(a) for a in (case.reporter, case.reply_to,
                                                         case.answer_to) if a}
    from_reporter = label == "reply" and loops.canonical_mailbox(who) in on_record
    # A code counts only from the address it was mailed to (the reporter's on record).
    notes = (reporter_changes.confirm(session, now, case, message, mail.text)
             if from_reporter else [])
    if from_reporter:
        case.waiting_on = "team"
        detail = f"message from the reporter ({who})"
        if message.encrypted and not case.encrypted:
            detail += "; it came encrypted (answers stay as the report set them)"
        if not notes:  # a confirmation asks for nothing new
            notes = reporter_changes.on_reply(session, now, settings, case, message, mail.text,
                                              evidence)
        _reporter_wrote(session, now, settings, case, mail, notes,
                        encrypted=bool(message.encrypted))
    elif label == "reply" and mail.from_addr:
        detail += "; " + _someone_else_wrote(session, now, settings, case, message, mail)
    states.record(session, now, case, actor=who, action=label, detail=detail)


OTHER_FORWARDS_PER_DAY = 5  # per case: mail tagged with a case ID is easy to send


def _someone_else_wrote(session: Session, now: dt.datetime, settings: Settings, case: Case,
                        message: Message, mail: ParsedMail) -> str:
    """Mail on a case from neither the reporter nor the team (a co-finder, a vendor, or a
    forger: From proves nothing) reaches the handler marked as such, never the reporter; an
    unsigned mail from a team member is kept and its sender told how to send it. Both are
    capped per case and day. Returns what was done, for the event."""
    sender = loops.canonical_mailbox(mail.from_addr or "")
    team = {m.email for m in settings.team.members}
    kind = "team_unsigned" if sender in team else "other_forward"
    since = now - dt.timedelta(days=1)
    sent = session.scalar(select(func.count()).select_from(Outbox).where(
        Outbox.case_id == case.id, Outbox.kind == kind, Outbox.created_at >= since)) or 0
    if sent >= OTHER_FORWARDS_PER_DAY:
        return f"not passed on: {OTHER_FORWARDS_PER_DAY} such mails on this case today"
    if kind == "team_unsigned":
        body = render("team_unsigned.txt.j2", settings.templates.dir, case_id=case.id,
                      security_address=settings.project.security_address)
        enqueue(session, now, settings, kind=kind, to=sender,
                subject=compose.tagged_subject(case.id, "Kept on the case, not sent"),
                body=body, case=case, in_reply_to=mail.message_id)
        return "a team member's unsigned mail: kept on the case, nothing sent on"
    body = render("reporter_forward.txt.j2", settings.templates.dir,
                  case=lifecycle.case_view(case, settings), subject=mail.subject,
                  text=mail.text, attachments=[a for a in mail.attachments if a], notes=[],
                  other_sender=sender)
    lifecycle.notify_team(session, now, settings, case, kind=kind,
                          subject=f"Not from the reporter: {case.subject}", body=body,
                          handler_only=True, private=True, encrypted=bool(message.encrypted))
    return "not from the reporter on record: passed to the handler, marked as such"


def _reporter_wrote(session: Session, now: dt.datetime, settings: Settings, case: Case,
                    mail: ParsedMail, notes: list[str], *, encrypted: bool = False) -> None:
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
    body = render("reporter_forward.txt.j2", settings.templates.dir,
                  case=lifecycle.case_view(case, settings), subject=mail.subject,
                  text=mail.text, attachments=[a for a in mail.attachments if a], notes=notes,
                  other_sender="")
    lifecycle.notify_team(session, now, settings, case, kind="reporter_forward",
                          subject=f"Reporter wrote: {case.subject}", body=body,
                          handler_only=True, private=True, encrypted=encrypted)


def own_addresses(settings: Settings) -> frozenset[str]:
    addrs = {settings.project.security_address.lower()}
    addrs.update(lst.address.lower() for lst in settings.lists)
    return frozenset(addrs)
