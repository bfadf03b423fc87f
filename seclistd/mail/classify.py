"""Classification: ordered rule functions turn a parsed message into a Route.

Order matters and is the policy: loops are refused first; mail to a list member's own
return path (``security+bounce-TOKEN@…``, ``mail.verp``) is that member's bounce
(``rule_member_bounce``); other bounces and automatic replies are attached to the case they
answer (or quarantined when they answer nothing of ours, so they never open a case that
pages the team); then replies on an existing case (In-Reply-To and References first, the
``[SEC-…]`` subject tag second), then replies on a join request (the same way,
``[JOIN-…]``); then the answer to a member's key-rotation token (a reply to the token
mail, or a ``Token:`` line from a member address with a rotation waiting); a message without
a usable From is quarantined; a mail shaped like a join request opens one; a mail from a
current member's address that offers a key is a key rotation (``member_key``: the pipeline
hands it back as a new report when the key is the one already pinned); everything else is a
new report. Keyword commands come before replies: anyone's signed-looking ``X-LEAK``
(before the team's commands: a team member may report a leak too), a team member's
(``X-CASE`` or ``X-REQUEST``), and anyone's ``X-VOUCH`` or ``X-LEAVE`` (its signature
decides, later).

Embargoed notices (``workflows.discussion``), before replies on a case: a mail that answers
a notice copy (In-Reply-To/References) or quotes a copy's token is a recipient's reply
(``notice_reply``) when its From is a recipient of that notice, else a leak (``leak``:
someone outside the notice had a copy). A mail not threaded on a case that names a case
under embargo, from neither its reporter nor the team, is a leak report too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import ListSettings
from seclistd.list_models import JoinRequest, Member
from seclistd.mail import loops, member_syntax, notice_syntax, request_syntax, verp
from seclistd.mail.parse import ParsedMail
from seclistd.models import Case, Message, Outbox
from seclistd.workflows import discussion
from seclistd.workflows.commands import looks_like_command, named_case, parse_keywords
from seclistd.workflows.requests import looks_like_request

MEMBER_TOKEN_KIND = "member_key_token"  # the outbox kind of a key-rotation token mail
_DSN_MSGID = re.compile(rb"^message-id:[ \t]*(<[^<>\s]{1,900}>)", re.I | re.M)


@dataclass(frozen=True)
class Route:
    kind: str  # "quarantine" | "command" | "reply" | "request_reply" | "join_request" |
    # "new_report" | "member_bounce" | "member_token" | "member_key" | "notice_reply" | "leak"
    label: str  # what the message is: loop, bounce, auto_reply, reply, new_report, ...
    case_id: str | None = None
    reason: str | None = None
    request_id: str | None = None  # the join request it answers (request_reply, commands)
    list_name: str | None = None  # the list a new join request asks to join
    member_id: int | None = None  # "member_bounce": the member its return path names;
    # "member_token": the member whose rotation token the mail answers
    copy_id: int | None = None  # "notice_reply", "leak": the notice copy answered or quoted
    own_copy_id: int | None = None  # "notice_reply": the sender's own copy of that notice


@dataclass(frozen=True)
class Context:
    session: Session
    mail: ParsedMail
    raw: bytes
    own_addresses: frozenset[str]
    case_prefix: str
    max_received: int
    team: frozenset[str] = frozenset()
    security_address: str = ""
    # The envelope recipients the intake saw (the listener's RCPT TO), if it saw them.
    envelope_to: tuple[str, ...] = ()
    lists: tuple[ListSettings, ...] = ()
    decrypted: bytes = b""  # the decrypted entity of an encrypted mail, if any


def case_by_thread(session: Session, ids: list[str]) -> str | None:
    """The case a list of Message-IDs belongs to, newest reference first."""
    if not ids:
        return None
    ids = list(dict.fromkeys(reversed(ids)))
    found: dict[str, str] = {}
    for mid, case_id in session.execute(
            select(Message.message_id, Message.case_id)
            .where(Message.message_id.in_(ids), Message.case_id.is_not(None))):
        found.setdefault(mid, case_id)
    for mid, case_id in session.execute(
            select(Outbox.message_id, Outbox.case_id)
            .where(Outbox.message_id.in_(ids), Outbox.case_id.is_not(None))):
        found.setdefault(mid, case_id)
    for mid in ids:
        if mid in found:
            return found[mid]
    return None


def case_by_subject(session: Session, subject: str, prefix: str) -> str | None:
    for match in re.finditer(rf"\[({re.escape(prefix)}-\d{{4}}-\d{{4,6}})\]", subject or ""):
        if session.get(Case, match.group(1)) is not None:
            return match.group(1)
    return None


def request_by_thread(session: Session, ids: list[str]) -> str | None:
    """The join request a list of Message-IDs belongs to, newest reference first."""
    if not ids:
        return None
    ids = list(dict.fromkeys(reversed(ids)))
    found: dict[str, str] = {}
    for table in (Message, Outbox):
        for mid, request_id in session.execute(
                select(table.message_id, table.request_id)
                .where(table.message_id.in_(ids), table.request_id.is_not(None))):
            found.setdefault(mid, request_id)
    return next((found[mid] for mid in ids if mid in found), None)


def request_by_subject(session: Session, subject: str) -> str | None:
    for request_id in request_syntax.tagged_ids(subject):
        if session.get(JoinRequest, request_id) is not None:
            return request_id
    return None


def threaded_request(ctx: Context) -> str | None:
    mail = ctx.mail
    return (request_by_thread(ctx.session, mail.in_reply_to + mail.references)
            or request_by_subject(ctx.session, mail.subject))


def threaded_case(ctx: Context) -> str | None:
    mail = ctx.mail
    return (case_by_thread(ctx.session, mail.in_reply_to + mail.references)
            or case_by_subject(ctx.session, mail.subject, ctx.case_prefix))


def rule_loop(ctx: Context) -> Route | None:
    reason = loops.loop_reason(ctx.mail, ctx.own_addresses, ctx.max_received)
    return Route("quarantine", "loop", reason=reason) if reason else None


def bounce_token(ctx: Context) -> str | None:
    """The member bounce token of the return path this message came back to, if any.

    The envelope recipient decides when the intake knows it (the built-in listener): then
    headers are not read at all. Otherwise (IMAP, ``ingest``) the headers the delivering
    MTA writes are read, in this order: ``X-Original-To`` (Postfix), ``Delivered-To``
    (Postfix's local delivery and Dovecot's LMTP), then To and Cc (a DSN is addressed to
    the envelope sender). A header can be forged, but only to name a token one already
    knows: the tokens are random and go only to the member's own mail system.
    """
    if not ctx.security_address:
        return None
    if ctx.envelope_to:
        candidates: list[str] = list(ctx.envelope_to)
    else:
        mail = ctx.mail
        candidates = [*mail.headers.get("x-original-to", [])[:10],
                      *mail.headers.get("delivered-to", [])[:10], *mail.to_addrs[:20]]
    for candidate in candidates:
        token = verp.token_of(candidate[:400], ctx.security_address)
        if token is not None:
            return token
    return None


def rule_member_bounce(ctx: Context) -> Route | None:
    """Mail to a member's return path: that member's bounce (or automatic reply); a token
    that names no member is quarantined (a forgery, or a member deleted since)."""
    token = bounce_token(ctx)
    if token is None:
        return None
    member_id = ctx.session.scalars(select(Member.id).where(Member.bounce_token == token)
                                    ).first()
    if member_id is None:
        return Route("quarantine", "bounce", reason="sent to a member bounce address "
                     f"({verp.PREFIX}…) whose token names no list member")
    return Route("member_bounce", "member_bounce", member_id=member_id)


def rule_bounce(ctx: Context) -> Route | None:
    if not loops.is_bounce(ctx.mail):
        return None
    case_id = threaded_case(ctx) or case_by_thread(
        ctx.session, [m.decode("ascii", "replace") for m in _DSN_MSGID.findall(ctx.raw)[:50]])
    if case_id:
        return Route("reply", "bounce", case_id=case_id)
    request_id = threaded_request(ctx)
    if request_id:
        return Route("request_reply", "bounce", request_id=request_id)
    return Route("quarantine", "bounce", reason="delivery status notification that matches "
                 "no mail we sent")


def rule_auto_reply(ctx: Context) -> Route | None:
    if not loops.is_auto_reply(ctx.mail):
        return None
    case_id = threaded_case(ctx)
    if case_id:
        return Route("reply", "auto_reply", case_id=case_id)
    request_id = threaded_request(ctx)
    if request_id:
        return Route("request_reply", "auto_reply", request_id=request_id)
    return Route("quarantine", "auto_reply", reason="automatic reply that matches no case")


def rule_command(ctx: Context) -> Route | None:
    """Keyword lines from a team address: a command, to be checked by its signature."""
    mail = ctx.mail
    if mail.from_addr in ctx.team and (looks_like_command(mail.text)
                                       or looks_like_command(ctx.raw.decode("latin-1"))):
        if _member_command(ctx) and not _join_command(ctx) and \
                named_case(mail.text, ctx.raw.decode("latin-1")) is None:
            return Route("command", "member_command")
        if _join_command(ctx):
            return Route("command", "join_command", request_id=threaded_request(ctx))
        return Route("command", "command", case_id=threaded_case(ctx))
    return None


def _join_command(ctx: Context) -> bool:
    return (request_syntax.is_join_command(ctx.mail.text)
            or request_syntax.is_join_command(ctx.raw.decode("latin-1")))


def rule_join_command(ctx: Context) -> Route | None:
    """Keyword lines of a join-request command (a vouch, a team decision) from anyone: the
    signature, not the From header, decides whether it counts."""
    if _join_command(ctx):
        return Route("command", "join_command", request_id=threaded_request(ctx))
    return None


def _member_command(ctx: Context) -> bool:
    """``X-LEAVE`` heads the mail's text, or the mail is signed or encrypted and has an
    ``X-LEAVE`` line anywhere (its signature then says whether it counts). An unsigned reply
    that merely carries a quoted welcome (top-posted, unquoted) is no command."""
    mail = ctx.mail
    if member_syntax.LEAVE in (name for name, _ in parse_keywords((mail.text or "")[:4096])[0]):
        return True
    return mail.content_type in ("multipart/signed", "multipart/encrypted") and (
        member_syntax.is_member_command(mail.text)
        or member_syntax.is_member_command(ctx.raw.decode("latin-1")))


def rule_member_command(ctx: Context) -> Route | None:
    """An ``X-LEAVE`` command from anyone: the signature, not the From, decides."""
    return Route("command", "member_command") if _member_command(ctx) else None


def member_by_thread(session: Session, ids: list[str]) -> int | None:
    """The member whose key-rotation token mail these Message-IDs answer, if any."""
    if not ids:
        return None
    return session.scalars(select(Outbox.member_id).where(
        Outbox.message_id.in_(list(dict.fromkeys(ids))[:100]),
        Outbox.kind == MEMBER_TOKEN_KIND, Outbox.member_id.is_not(None))).first()


def rule_member_token(ctx: Context) -> Route | None:
    """The answer to a member's key-rotation token: a reply to the token mail (whoever sent
    it: the handler records a token from another address as proving nothing), or a
    ``Token:`` line from a current member's address with a rotation waiting."""
    mail = ctx.mail
    member_id = member_by_thread(ctx.session, mail.in_reply_to + mail.references)
    if member_id is None and mail.from_addr and request_syntax.tokens_in(mail.text):
        member_id = ctx.session.scalars(select(Member.id).where(
            Member.email == loops.canonical_mailbox(mail.from_addr),
            Member.pending_token_sha256.is_not(None), Member.state != "removed")
            .order_by(Member.id)).first()
    if member_id is None:
        return None
    return Route("member_token", "member_token", member_id=member_id)


def rule_member_key(ctx: Context) -> Route | None:
    """A mail from a current member's address that offers a key: a key rotation, to be
    judged by its signature (``workflows.member_rotation``)."""
    mail = ctx.mail
    if not mail.from_addr or not (member_syntax.offers_key(ctx.raw)
                                  or member_syntax.offers_key(ctx.decrypted)):
        return None
    member_id = ctx.session.scalars(select(Member.id).where(
        Member.email == loops.canonical_mailbox(mail.from_addr), Member.state != "removed")
        .order_by(Member.id)).first()
    return Route("member_key", "member_key", member_id=member_id) if member_id else None


def rule_leak_command(ctx: Context) -> Route | None:
    """An ``X-LEAK`` keyword line in a signed or encrypted mail, from anyone: the signature
    (a member's pinned key or a team key) decides whether it counts."""
    mail = ctx.mail
    if mail.content_type not in ("multipart/signed", "multipart/encrypted"):
        return None
    if notice_syntax.has_leak_keyword(mail.text) or notice_syntax.has_leak_keyword(
            ctx.raw[:notice_syntax.SCAN_CHARS].decode("latin-1")):
        return Route("command", "leak_command")
    return None


def rule_notice(ctx: Context) -> Route | None:
    """A mail that answers a notice copy or quotes a copy's token: a recipient's reply, or
    a leak when the From is not a recipient of that notice."""
    found = discussion.locate(ctx.session, ctx.mail, ctx.raw)
    if found is None:
        return None
    if found.own_id is not None:
        return Route("notice_reply", "notice_reply", case_id=found.case_id,
                     copy_id=found.copy_id, own_copy_id=found.own_id)
    case = ctx.session.get(Case, found.case_id)
    if case is None or case.state != "embargoed":
        # Public now (disclosed or closed): a copy quoted or answered from outside leaks
        # nothing and must not count against the member whose copy it was.
        return None
    return Route("leak", "leak", case_id=found.case_id, copy_id=found.copy_id)


def rule_embargoed_named(ctx: Context) -> Route | None:
    """A mail that names a case under embargo without being threaded on it, from neither
    the case's reporter nor the team: a report that the case leaked; from an address the
    notice went to, that recipient's reply (its signature decides what it may do)."""
    mail = ctx.mail
    if not mail.from_addr or case_by_thread(ctx.session, mail.in_reply_to + mail.references):
        return None
    sender = loops.canonical_mailbox(mail.from_addr)
    if sender in ctx.team or sender in ctx.own_addresses:
        return None
    for case_id in notice_syntax.case_ids_named(ctx.case_prefix, mail.subject, mail.text):
        case = ctx.session.get(Case, case_id)
        if case is None or case.state != "embargoed":
            continue
        if sender in {loops.canonical_mailbox(a) for a in (case.reporter, case.reply_to,
                                                            case.answer_to) if a}:
            continue
        own = discussion.copy_for(ctx.session, case_id, sender)
        if own is not None:
            return Route("notice_reply", "notice_reply", case_id=case_id, copy_id=own,
                         own_copy_id=own)
        return Route("leak", "leak", case_id=case_id)
    return None


def rule_request_reply(ctx: Context) -> Route | None:
    request_id = threaded_request(ctx)
    return Route("request_reply", "reply", request_id=request_id) if request_id else None


def rule_join_request(ctx: Context) -> Route | None:
    """A new join request: the shape of one (``workflows.criteria``) for the list the mail
    names, else the first list. Mail that must get no automatic answer (bulk, list mail,
    automatic mail) is never a request."""
    mail = ctx.mail
    if not ctx.lists or loops.no_autoreply_reason(mail, ctx.own_addresses):
        return None
    lst = looks_like_request(ctx.lists, mail.subject, mail.text)
    return Route("join_request", "join_request", list_name=lst.name) if lst else None


def rule_reply(ctx: Context) -> Route | None:
    case_id = threaded_case(ctx)
    return Route("reply", "reply", case_id=case_id) if case_id else None


def rule_sender(ctx: Context) -> Route | None:
    if ctx.mail.from_addr:
        return None
    return Route("quarantine", "bad_sender",
                 reason=f"cannot open a case: {ctx.mail.from_problem}")


def rule_new_report(ctx: Context) -> Route | None:
    return Route("new_report", "new_report")


RULES: tuple[Callable[[Context], Route | None], ...] = (
    rule_loop, rule_member_bounce, rule_bounce, rule_auto_reply, rule_leak_command,
    rule_command, rule_join_command, rule_member_command, rule_notice, rule_embargoed_named,
    rule_reply, rule_request_reply, rule_member_token,
    rule_sender, rule_join_request, rule_member_key, rule_new_report,
)


def classify(ctx: Context) -> Route:
    for rule in RULES:
        route = rule(ctx)
        if route is not None:
            return route
    raise AssertionError("rule_new_report always answers")
