"""Actions on a case: the one way a case changes, whoever asks (CLI or signed mail).

``act`` looks the (state, action) pair up in ``states.RULES``, checks the action's own
conditions, applies it, writes the audit event and queues the mail it causes, all in the
caller's transaction. The text of ack, reply, reject and disclose is mailed to the reporter,
threaded on their last message with ``[ID]`` in the subject; every other action's text stays
internal (an event, never a mail to the reporter).

Who gets what: a person's answer goes to the reporter's own address (the report's Reply-To,
else its From: ``answer_address``), never to the envelope sender, which may be a list's
bounce address; an automatic answer (fallback acknowledgment) goes to the return path
(RFC 3834 §4). A team member with no fingerprint on record never gets the words of an
encrypted case in plaintext: ``notify_team(private=True)`` sends them a notice without content.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd import config as config_mod
from seclistd.config import Settings, TeamMember
from seclistd.mail import compose
from seclistd.mail.render import render
from seclistd.models import Case, Event, Message
from seclistd.outbox import enqueue
from seclistd.workflows import sla, states

# What a content-free notice to a member without a key says happened, by the mail's kind.
NEWS = {"team_new_case": "a new report was opened",
        "reporter_forward": "the reporter wrote again",
        "other_forward": "someone other than the reporter wrote on it"}

# The actions whose text is their point: empty (or white-space) text is refused. For every
# other action the text is an optional note.
NEEDS_TEXT = frozenset({"ack", "reply", "reject", "comment"})


class ActionError(Exception):
    """The action was refused; the text is the one line for the operator or the sender."""


class UnknownCase(ActionError):
    pass


class IllegalAction(ActionError):
    pass


@dataclass(frozen=True)
class Request:
    action: str
    text: str = ""
    email: str | None = None  # assign
    other: str | None = None  # duplicate
    versions: str | None = None  # confirm
    cvss: str | None = None  # confirm
    until: dt.datetime | None = None  # embargo
    credit: str | None = None  # disclose: overrides what the reporter asked for
    attachments: tuple[compose.Attachment, ...] = ()  # embargo: files for the notice


def parse_cvss(vector: str) -> tuple[str, float]:
    """(normalised vector, base score); ActionError when the vector is not valid CVSS."""
    from cvss import CVSS2, CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    vector = vector.strip()
    try:
        if vector.startswith("CVSS:4."):
            v4 = CVSS4(vector)
            return v4.clean_vector(), float(v4.base_score)
        if vector.startswith("CVSS:3."):
            v3 = CVSS3(vector)
            return v3.clean_vector(), float(v3.scores()[0])
        v2 = CVSS2(vector)
        return v2.clean_vector(), float(v2.scores()[0])
    except CVSSError as exc:
        raise ActionError(f"severity {vector!r} is not a valid CVSS vector ({exc}); expected "
                          "e.g. CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") from exc


def load(session: Session, case_id: str) -> Case:
    case = session.get(Case, case_id, with_for_update=True)
    if case is None:
        raise UnknownCase(f"no case {case_id}, expected an ID from `seclistd cases list`")
    return case


def act(session: Session, now: dt.datetime, settings: Settings, case_id: str, req: Request,
        actor: str) -> Event:
    case = load(session, case_id)
    rule = states.RULES.get((case.state, req.action))
    if rule is None:
        raise IllegalAction(
            f"cannot {req.action} {case.id}: it is {case.state}"
            + (f" ({case.resolution})" if case.resolution else "")
            + "; allowed now: " + (", ".join(states.allowed(case.state)) or "nothing"))
    if req.action in NEEDS_TEXT and not req.text.strip():
        why = "mails the reporter" if req.action in states.TO_REPORTER else "records a note"
        raise ActionError(f"{req.action} {why}, so it needs a text (--message or standard "
                          "input; in a mail, the text after the keyword lines)")
    detail = _apply(session, now, settings, case, req, actor)
    if rule.resolution:
        case.resolution = rule.resolution
    if req.action in states.TO_REPORTER:
        mail_reporter(session, now, settings, case, req, actor)
        detail = (detail + "; " if detail else "") + "mailed to the reporter"
    elif req.text.strip():
        detail = (detail + "\n" if detail else "") + req.text.strip()
    event = states.record(session, now, case, actor=actor, action=req.action, detail=detail,
                          to_state=rule.to_state)
    if case.state == states.ACKNOWLEDGED and case.acknowledged_at is None:
        case.acknowledged_at = now
    sla.schedule(case, settings)
    return event


def _apply(session: Session, now: dt.datetime, settings: Settings, case: Case, req: Request,
           actor: str) -> str:
    """The action's own effect; returns the event detail."""
    if req.action == "assign":
        return _assign(session, now, settings, case, req, actor)
    if req.action == "confirm":
        parts = []
        if req.versions:
            case.affected_versions = compose.clean(req.versions, 500)
            parts.append(f"affected versions: {case.affected_versions}")
        if req.cvss:
            case.severity, case.cvss_score = parse_cvss(req.cvss)
            parts.append(f"severity: {case.severity} ({case.cvss_score})")
        if case.handler is None and actor in {m.email for m in settings.team.members}:
            case.handler = actor
            parts.append(f"handler: {actor}")
        return "; ".join(parts)
    if req.action == "duplicate":
        other_id = (req.other or "").strip()
        other = session.get(Case, other_id)
        if other is None or other.id == case.id:
            raise ActionError(f"{other_id or '(none)'} is not another case, expected the ID of "
                              "the case this one duplicates")
        case.duplicate_of = other.id
        return f"duplicate of {other.id}"
    if req.action == "embargo":
        return _embargo(session, case, req, now, settings, actor)
    if req.action == "disclose":
        if req.credit is not None:
            case.credit = compose.clean(req.credit, 200)
        line, how = credit_for(case, settings, by_team=req.credit is not None)
        return f"credited as {line or '(no credit)'} ({CREDIT_HOW[how]})"
    return ""


def _assign(session: Session, now: dt.datetime, settings: Settings, case: Case, req: Request,
            actor: str) -> str:
    """Make ``req.email`` the handler: a team member, or another maintainer (ORAS: the
    patch-and-release team may include them). Mail to a handler outside [team] goes out
    only encrypted, to the key the operator imported for that address; without one it is
    held, like any recipient who must not get plaintext."""
    email = (req.email or "").strip().lower()
    if config_mod.address_problem(email):
        raise ActionError(f"{email or '(none)'} is not a mail address, expected the handler's "
                          "address, e.g. alice@example.org")
    member = next((m for m in settings.team.members if m.email == email), None)
    case.handler = email
    if member is not None:
        case.handler_key = None
        note = "a member of the security team"
    else:
        case.handler_key = _imported_key(settings, email)
        note = "not on the security team; " + (
            f"their mail is encrypted to {case.handler_key}" if case.handler_key else
            "no key of theirs is in the keyring, so their mail is held until one is: "
            "`seclistd keys import FILE`, then `seclistd outbox retry ID`")
    body = render("assigned.txt.j2", settings.templates.dir, case=case_view(case, settings),
                  actor=actor, text=req.text.strip())
    enqueue(session, now, settings, kind="assigned", to=email,
            to_name=member.name if member else "",
            subject=compose.tagged_subject(case.id, f"Assigned to you: {case.subject}"),
            body=body, case=case, in_reply_to=case.root_message_id)
    return f"handler: {email} ({note})"


def _imported_key(settings: Settings, address: str) -> str | None:
    """The one usable key in the keyring with a user ID for exactly ``address``."""
    from seclistd.crypto import keyring

    ring = keyring(settings.gnupg)
    return ring.key_for_address(address) if ring else None


def _embargo(session: Session, case: Case, req: Request, now: dt.datetime,
             settings: Settings, actor: str) -> str:
    """Set or move the embargo end and send the notice (``workflows.announce``): the first
    line of the detail says until when and how many copies were queued and held; each
    warning follows on its own line, starting ``warning:``."""
    from seclistd.workflows import announce

    until = req.until
    if until is None or until.tzinfo is None:
        raise ActionError("embargo needs --until with a date, time and offset, e.g. "
                          "2026-12-01T15:00:00+00:00")
    if until <= now:
        raise ActionError(f"embargo end {until.isoformat()} is in the past, expected a future "
                          "time")
    until = until.astimezone(dt.UTC)
    existing = announce.announcement_of(session, case.id)
    try:
        warnings = announce.check_terms(settings, existing, until, now)
        previous = case.embargo_until
        case.embargo_until = until
        if existing is None:
            announcement = announce.send_notice(session, now, settings, case, actor=actor,
                                                text=req.text, attachments=req.attachments)
        else:
            announcement = announce.reschedule(session, now, settings, case, actor=actor,
                                               text=req.text, attachments=req.attachments,
                                               previous=previous or existing.until)
    except announce.TermsError as exc:
        raise ActionError(str(exc)) from exc
    counts = announce.fanout_counts(session, announcement)
    moved = f" (moved from {announce.shown(settings, previous)})" if existing and previous \
        else ""
    files = f", {len(req.attachments)} file(s) attached" if req.attachments else ""
    lines = [f"embargo until {announce.shown(settings, until)}{moved}; notice "
             f"{'revision ' + str(announcement.revision) + ' ' if announcement.revision else ''}"
             f"to {counts.recipients} recipient(s): {counts.queued} queued, {counts.held} held"
             f"{files}"]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)


def credit_line(case: Case) -> str:
    if not case.credit and not case.credit_github:
        return ""
    name = case.credit or ""
    if case.credit_github:
        name = f"{name} (GitHub @{case.credit_github})" if name else f"@{case.credit_github}"
    return name


CREDIT_HOW = {
    "asked": "as the reporter asked",
    "declined": "the reporter asked not to be named",
    "team": "set by the team",
    "default": "project.default_credit: the reporter did not say, named as in their mail",
    "no_name": "project.default_credit: the reporter did not say and gave no name",
    "default_anonymous": "project.default_credit: the reporter did not say",
}


def credit_for(case: Case, settings: Settings, by_team: bool = False) -> tuple[str, str]:
    """(the advisory's credit line, how it was decided: a key of ``CREDIT_HOW``).

    A wish the reporter stated wins; without one, ``project.default_credit`` decides, and
    the disclosure mail says so rather than claim a wish the reporter never expressed.
    """
    line = credit_line(case)
    if by_team:
        return line, "team"
    if case.credit is not None or case.credit_github:
        return line, "asked" if line else "declined"
    if settings.project.default_credit == "anonymous":
        return "", "default_anonymous"
    name = (case.reporter_name or "").strip()
    return (name, "default") if name else ("", "no_name")


def local_time(settings: Settings, when: dt.datetime) -> str:
    """A time as people read it in mail: in the project's time zone, with its name
    ("Wednesday 7 July 2027, 23:59 EDT": the day without a leading zero)."""
    local = when.astimezone(settings.project.tz)
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M %Z}"


def case_view(case: Case, settings: Settings) -> dict[str, object]:
    """What templates may show of a case (times in the project's time zone)."""
    return {
        "id": case.id, "state": case.state, "subject": case.subject, "reporter": case.reporter,
        "handler": case.handler or "(unassigned)",
        "received_at": local_time(settings, case.received_at),
        "ack_due": local_time(settings, case.ack_due),
        "embargo_until": (local_time(settings, case.embargo_until)
                          if case.embargo_until else None),
        "missing": list(case.missing_information or []),
        "project": settings.project.name,
        "security_address": settings.project.security_address,
    }


def thread_of(session: Session, case: Case) -> tuple[str | None, list[str]]:
    """(In-Reply-To, References) for a mail to the reporter: their latest message."""
    latest = session.scalar(
        select(Message.message_id).where(Message.case_id == case.id,
                                         Message.from_addr == case.reporter,
                                         Message.message_id.is_not(None))
        .order_by(Message.id.desc()).limit(1))
    refs = [r for r in dict.fromkeys([case.root_message_id, latest]) if r]
    return latest or case.root_message_id, refs


def mail_reporter(session: Session, now: dt.datetime, settings: Settings, case: Case,
                  req: Request, actor: str, *, auto_submitted: str | None = None) -> None:
    template = "disclose.txt.j2" if req.action == "disclose" else "to_reporter.txt.j2"
    credit, credit_how = credit_for(case, settings, by_team=req.credit is not None)
    body = render(template, settings.templates.dir, case=case_view(case, settings),
                  text=req.text.strip(), action=req.action, credit=credit,
                  credit_how=credit_how)
    send_to_reporter(session, now, settings, case, kind=req.action, body=body,
                     auto_submitted=auto_submitted)


def answer_address(case: Case) -> str:
    """Where a person's answer to the reporter goes: the report's Reply-To, else its From."""
    return case.answer_to or case.reporter


def send_to_reporter(session: Session, now: dt.datetime, settings: Settings, case: Case, *,
                     kind: str, body: str, auto_submitted: str | None) -> None:
    """A mail to the reporter: a person's (``auto_submitted`` None) to ``answer_address``, an
    automatic one to the report's return path."""
    in_reply_to, references = thread_of(session, case)
    to = answer_address(case) if auto_submitted is None else (case.reply_to or case.reporter)
    enqueue(session, now, settings, kind=kind, to=to,
            to_name=case.reporter_name or "", body=body, case=case,
            subject=compose.tagged_subject(case.id, f"Re: {case.subject}"),
            in_reply_to=in_reply_to, references=references, auto_submitted=auto_submitted)
    case.last_reporter_contact_at = now
    case.update_reminders = 0
    case.waiting_on = "reporter"


def notify_team(session: Session, now: dt.datetime, settings: Settings, case: Case, *,
                kind: str, subject: str, body: str, handler_only: bool = False,
                private: bool = False, encrypted: bool = False) -> list[str]:
    """Mail the handler (when ``handler_only`` and assigned) or every team member.

    ``private``: the body holds the reporter's words. On an encrypted case, or when those
    words came encrypted (``encrypted``: a reporter's encrypted reply on a plain case), a
    member without a fingerprint on record (whose copy could only go out in plaintext) gets
    a notice that says where to read it instead, with nothing of the content, not even the
    subject.
    """
    members = settings.team.members
    if handler_only and case.handler:
        # The handler may be a maintainer outside [team] (see _assign).
        members = tuple(m for m in members if m.email == case.handler) or (
            TeamMember(email=case.handler),)
    for member in members:
        if private and (case.encrypted or encrypted) and not member.fingerprint:
            notice = render("team_encrypted_notice.txt.j2", settings.templates.dir,
                            case_id=case.id, what=NEWS.get(kind, "there is news"),
                            security_address=settings.project.security_address)
            enqueue(session, now, settings, kind=kind, to=member.email, to_name=member.name,
                    subject=compose.tagged_subject(case.id, "Encrypted case: content withheld"),
                    body=notice, case=case, in_reply_to=case.root_message_id)
            continue
        enqueue(session, now, settings, kind=kind, to=member.email, to_name=member.name,
                subject=compose.tagged_subject(case.id, subject), body=body, case=case,
                in_reply_to=case.root_message_id)
    return [m.email for m in members]
