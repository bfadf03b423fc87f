"""Signed commands on join requests, and who may give them (DESIGN.md §4).

Two kinds, with every rule of the team's case commands (``workflows.commands``: the whole
command inside one good PGP/MIME signature, keywords only from the first text part directly
inside the signed entity, the signature at most 30 days old and not from the future, spent
once whether the command was carried out or refused):

- ``X-VOUCH: JOIN-ID`` from a list member: the signature must be by the pinned key of a
  member of the request's list, and that member must be ``active``; each member counts
  once per request. The member is found by the signing key, never by the From header.
- ``X-REQUEST: JOIN-ID`` with ``X-APPROVE`` or ``X-DENY`` (the text after the blank line is
  the note for the applicant) from the team: the signature must be by the sender's key in
  ``[team]``. A command naming both ``X-REQUEST`` and ``X-CASE`` is refused.

A refusal is recorded on the request the mail names (else the one its thread belongs to)
and the sender gets one short mail naming the rule that failed, never an echo of the mail;
such mails are capped per sender like every automatic answer. A spent signature's
``HonouredSignature.case_id`` holds the request's ID (``JOIN-…``): the column names the
target the signature was spent on.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring
from seclistd.list_models import JoinRequest, Member, Vouch
from seclistd.mail import compose, loops, request_syntax
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Message
from seclistd.outbox import automatic_answers_since, enqueue
from seclistd.workflows import member_states, requests
from seclistd.workflows.commands import (
    Refused,
    Signed,
    authenticate,
    check_time,
    is_spent,
    parse_keywords,
    signature_id,
    signed_content,
    spend,
)

VOUCHABLE = (requests.SUBMITTED, requests.INCOMPLETE, requests.VERIFYING)


def handle(session: Session, now: dt.datetime, settings: Settings, keyring: Keyring | None,
           message: Message, mail: ParsedMail, unwrapped: Unwrapped,
           fallback_request: str | None) -> str | None:
    """Carry out a vouch or a team decision; returns the request it is recorded on (None:
    no request to record it on)."""
    spent: tuple[str, str] | None = None
    try:
        signed = signed_content(unwrapped, keyring)
        keywords, text = parse_keywords(signed.text)
        names = [name for name, _ in keywords]
        team = {m.email for m in settings.team.members}
        # X-REQUEST is the team's; X-VOUCH a member's; with neither (the keywords were not
        # in the signed first text part), the sender's role picks the rules that refuse it.
        if "X-REQUEST" in names or ("X-VOUCH" not in names and mail.from_addr in team):
            actor, sig_id = authenticate(session, settings, mail, signed)
            spent = (sig_id, signed.signature.primary_fingerprint)
            check_time(signed.signature, now)
            req, action = _team_target(session, keywords)
            try:
                with session.begin_nested():
                    if action == "approve":
                        requests.approve(session, now, settings, req.id, actor)
                    else:
                        requests.deny(session, now, settings, req.id, actor, text)
            except requests.RequestError as exc:
                raise Refused(f"nothing was done: {exc}") from exc
            detail = f"signed X-{action.upper()} carried out"
        else:
            member, sig_id = _authenticate_member(session, mail, signed)
            spent = (sig_id, signed.signature.primary_fingerprint)
            actor = member.email
            check_time(signed.signature, now)
            req = _vouch_target(session, keywords)
            _vouch(session, now, settings, req, member, signed, message)
            detail = f"vouch by {member.email} ({member.organization or '-'}), " \
                     f"{len(req.vouches)} of {settings.membership.vouches_required}"
    except Refused as refusal:
        recorded_on = _refuse(session, now, settings, message, mail, str(refusal),
                              fallback_request)
        if spent is not None:
            spend(session, now, *spent, recorded_on, message)
        return recorded_on
    spend(session, now, sig_id, signed.signature.primary_fingerprint, req.id, message)
    message.request_id = req.id
    message.signed_by = signed.signature.primary_fingerprint
    requests.record(session, now, req, actor=actor, action="command", detail=detail)
    return req.id


def _target(session: Session, keywords: list[tuple[str, str]], keyword: str) -> JoinRequest:
    targets = [arg.strip() for name, arg in keywords if name == keyword]
    if len(targets) != 1 or not request_syntax.is_request_id(targets[0]):
        raise Refused(f"the signed text must name its request once, as {keyword}: JOIN-ID")
    req = session.get(JoinRequest, targets[0])
    if req is None:
        raise Refused(f"{keyword} names {targets[0]}, which is not a join request")
    return req


def _team_target(session: Session, keywords: list[tuple[str, str]]) -> tuple[JoinRequest, str]:
    names = [name for name, _ in keywords]
    if "X-CASE" in names:
        raise Refused("a command names either a case (X-CASE) or a join request (X-REQUEST), "
                      "never both: send two signed mails")
    req = _target(session, keywords, "X-REQUEST")
    actions = [name for name in names if name != "X-REQUEST"]
    unknown = [name for name in actions if name not in request_syntax.TEAM_KEYWORDS]
    if unknown:
        raise Refused(f"unknown keyword {unknown[0]} with X-REQUEST, expected X-APPROVE or "
                      "X-DENY")
    if len(actions) != 1:
        raise Refused("X-REQUEST needs exactly one of X-APPROVE or X-DENY")
    return req, request_syntax.TEAM_KEYWORDS[actions[0]]


def _vouch_target(session: Session, keywords: list[tuple[str, str]]) -> JoinRequest:
    names = [name for name, _ in keywords]
    other = [name for name in names if name != "X-VOUCH"]
    if other:
        raise Refused(f"a vouch carries X-VOUCH and nothing else, found {other[0]}")
    return _target(session, keywords, "X-VOUCH")


def _authenticate_member(session: Session, mail: ParsedMail,
                         signed: Signed) -> tuple[Member, str]:
    """(member, signature id) when the signing key is a member's pinned key and the
    signature is unused; Refused otherwise. The From header only words the refusal."""
    fingerprint = signed.signature.primary_fingerprint
    members = list(session.scalars(select(Member).where(Member.fingerprint == fingerprint)
                                   .order_by(Member.id)))
    if not members:
        sender = loops.canonical_mailbox(mail.from_addr) if mail.from_addr else ""
        if sender and session.scalar(select(Member.id).where(Member.email == sender)):
            raise Refused("the signature is not by the key on record for the sender")
        raise Refused("the signing key is not the key of any list member")
    sig_id = signature_id(signed)
    if is_spent(session, sig_id):
        raise Refused("this signature was already used once (carried out or refused); "
                      "sign a new mail")
    active = [m for m in members if m.state == member_states.ACTIVE]
    return (active or members)[0], sig_id


def _vouch(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest,
           member: Member, signed: Signed, message: Message) -> None:
    if member.list_name != req.list_name:
        member = session.scalar(select(Member).where(
            Member.list_name == req.list_name,
            Member.fingerprint == member.fingerprint)) or member
    if member.list_name != req.list_name:
        raise Refused(f"the signer is not a member of {req.list_name}, the list "
                      f"{req.id} asks to join")
    if member.state != member_states.ACTIVE:
        raise Refused(f"the signer's membership is {member.state}: only active members vouch")
    if member.email == req.applicant:
        raise Refused("an applicant cannot vouch for their own request")
    if req.state not in VOUCHABLE:
        raise Refused(f"{req.id} is {req.state}: it takes no more vouches")
    if any(v.member_id == member.id for v in req.vouches):
        raise Refused(f"{member.email} already vouched for {req.id}; each member counts once")
    session.flush()
    vouch = Vouch(request_id=req.id, member_id=member.id,
                  fingerprint=signed.signature.primary_fingerprint, at=now,
                  message_id=message.id)
    session.add(vouch)
    req.vouches.append(vouch)
    requests.record(session, now, req, actor=member.email, action="vouch",
                    detail=f"signed vouch by {member.email} with key "
                           f"{signed.signature.primary_fingerprint}")
    requests.vouch_recorded(session, now, settings, req, member)


def _refuse(session: Session, now: dt.datetime, settings: Settings, message: Message,
            mail: ParsedMail, reason: str, fallback: str | None) -> str | None:
    named = request_syntax.named_request(mail.text or "", message.raw.decode("latin-1"))
    req = (session.get(JoinRequest, named) if named else None) or (
        session.get(JoinRequest, fallback) if fallback else None)
    sender = mail.from_addr or ""
    if req is not None:
        message.request_id = req.id
        requests.record(session, now, req, actor=sender or "(unknown sender)",
                        action="command_refused", detail=reason)
    if not sender:
        return req.id if req else None
    limit = settings.autoreply.max_per_sender_per_day
    if automatic_answers_since(session, sender, now - dt.timedelta(days=1)) >= limit:
        return req.id if req else None
    body = render("command_refused.txt.j2", settings.templates.dir, reason=reason,
                  case_id=req.id if req else None,
                  security_address=settings.project.security_address)
    subject = (compose.tagged_subject(req.id, "Command not carried out") if req
               else "Command not carried out")
    enqueue(session, now, settings, kind="command_refused", to=sender, subject=subject,
            body=body, in_reply_to=mail.message_id, auto=True, auto_submitted="auto-replied",
            request_id=req.id if req else None)
    return req.id if req else None
