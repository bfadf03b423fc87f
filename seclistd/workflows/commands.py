"""Signed keyword commands from the security team (DESIGN.md §4), and who may give them.

A command counts only when every rule holds, checked in this order:
1. the whole message is PGP/MIME signed (top-level multipart/signed), or encrypted with a
   signature inside; the keywords are read from the signed entity and nowhere else: from the
   entity itself when it is text/plain, else from its first text/plain child that is not an
   attachment -- never from a nested multipart, an attachment or a forwarded message/rfc822;
2. there is exactly one signature, and it is good;
3. its primary-key fingerprint is the one on record for the sender in ``[team]``;
4. this signature has not been used before. From here on it is spent (``HonouredSignature``)
   whatever happens next, so a command refused today cannot be replayed once the case has
   moved to a state where it would be carried out;
5. the key is neither expired nor revoked, and the signature's time is sane;
6. the signed text names its target with ``X-CASE: ID``, and that case exists.
Then every keyword applies, in order, through ``lifecycle.act`` (the same path as the CLI),
or none does. A refusal is recorded on the case and the sender gets one short mail naming
the rule that failed, never an echo of what they sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from email.message import Message as EmailMessage

from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring, Signature, Verification
from seclistd.mail import compose
from seclistd.mail.parse import ParsedMail, message_from_bytes
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Case, HonouredSignature, Message
from seclistd.outbox import automatic_answers_since, enqueue
from seclistd.workflows import lifecycle, states

TEAM_KEYWORDS = {"X-ACK": "ack", "X-ASSIGN": "assign", "X-CONFIRM": "confirm",
                 "X-REJECT": "reject", "X-DUPLICATE": "duplicate", "X-REPLY": "reply",
                 "X-EMBARGO": "embargo", "X-DISCLOSE": "disclose", "X-CLOSE": "close"}
# Matched whole against one stripped line; the argument is stripped in Python (a lazy
# ``(.*?)[ \t]*$`` retries the blank run after every character of the argument).
_KEYWORD = re.compile(r"(X-[A-Z]+)[ \t]*(?::(.*))?")
_ANY_KEYWORD = re.compile(r"^X-(?:CASE|ACK|ASSIGN|CONFIRM|REJECT|DUPLICATE|REPLY|EMBARGO|"
                          r"DISCLOSE|CLOSE|VOUCH|LEAK|LEAVE|REQUEST|APPROVE|DENY)\b", re.M)
SIGNATURE_MAX_AGE = dt.timedelta(days=30)
SIGNATURE_MAX_SKEW = dt.timedelta(hours=1)


_CASE_LINE = re.compile(r"^X-CASE[ \t]*:[ \t]*(\S+)", re.M)


def looks_like_command(text: str) -> bool:
    return bool(_ANY_KEYWORD.search(text or ""))


def named_case(*texts: str) -> str | None:
    """The first X-CASE anywhere in these texts: where to record a refusal, nothing more."""
    for text in texts:
        match = _CASE_LINE.search(text or "")
        if match:
            return match.group(1)
    return None


def parse_keywords(text: str) -> tuple[list[tuple[str, str]], str]:
    """(keywords with arguments, the message): keyword lines at the top, then the text."""
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    keywords = []
    while i < len(lines):
        match = _KEYWORD.fullmatch(lines[i].strip())
        if not match:
            break
        keywords.append((match.group(1), (match.group(2) or "").strip(" \t")))
        i += 1
    return keywords, "\n".join(lines[i:]).strip("\n")


def entity_text(entity: bytes) -> str:
    """The text of a signed or decrypted MIME entity: the entity itself when it is
    text/plain, else its first direct text/plain child that is not an attachment. Nothing
    deeper counts: not a nested multipart, not an attachment, not a forwarded message."""
    message = message_from_bytes(entity)
    if message.get_content_type() == "text/plain":
        return _decoded(message)
    if not message.is_multipart():
        return ""
    for part in message.get_payload():
        if (part.get_content_type() == "text/plain" and not part.get_filename()
                and (part.get_content_disposition() or "inline") == "inline"):
            return _decoded(part)
    return ""


def _decoded(part: EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", "replace")


class Refused(Exception):
    """The command was not carried out; the text names the rule that failed."""


@dataclass(frozen=True)
class Signed:
    text: str
    signature: Signature
    raw_signature: bytes
    entity: bytes = b""  # the signed MIME entity: where a command's attachments come from


def signed_content(unwrapped: Unwrapped, keyring: Keyring | None) -> Signed:
    if keyring is None:
        raise Refused("commands need a GnuPG home (gnupg.home) to check signatures")
    if unwrapped.signed is not None:
        verification = keyring.verify_detached(unwrapped.signed.signed,
                                               unwrapped.signed.signature)
        text, raw_sig = entity_text(unwrapped.signed.signed), unwrapped.signed.signature
        entity = unwrapped.signed.signed
    elif unwrapped.decrypted is not None and unwrapped.inner_verification and \
            unwrapped.inner_verification.signatures:
        verification = unwrapped.inner_verification
        text = (unwrapped.decrypted.decode("utf-8", "replace") if unwrapped.inline
                else entity_text(unwrapped.decrypted))
        raw_sig = unwrapped.decrypted
        entity = b"" if unwrapped.inline else unwrapped.decrypted
    else:
        raise Refused("the command is not signed: sign the whole mail with PGP/MIME")
    return Signed(text=text, signature=one_good(verification), raw_signature=raw_sig,
                  entity=entity)


def signed_attachments(signed: Signed) -> tuple[compose.Attachment, ...]:
    """The files attached inside the signed entity (never beside it): what an
    ``X-EMBARGO`` sends with the notice."""
    from seclistd.mail import extract

    if not signed.entity:
        return ()
    return tuple(compose.Attachment(a.name or "attachment.bin", a.content_type, a.data)
                 for a in extract.attachments(signed.entity))


def one_good(verification: Verification) -> Signature:
    sigs = verification.signatures
    if len(sigs) != 1:
        raise Refused(f"the mail carries {len(sigs)} signatures, a command needs exactly one")
    sig = sigs[0]
    if sig.result == "revoked-key" or "KEYREVOKED" in verification.key_problems:
        raise Refused("the signing key is revoked")
    if sig.result == "expired-key" or "KEYEXPIRED" in verification.key_problems:
        raise Refused("the signing key has expired")
    if sig.result != "good" or not sig.primary_fingerprint:
        reason = {"bad": "the signature does not match the signed text",
                  "expired-signature": "the signature has expired",
                  "error": "the signature cannot be checked (unknown key?)"}
        raise Refused(reason.get(sig.result, "the signature is not valid"))
    return sig


def signature_id(signed: Signed) -> str:
    """What makes a signature the same one when it comes again: gpg's SIG_ID, else a hash."""
    sig = signed.signature
    if sig.sig_id:
        return sig.sig_id
    return hashlib.sha256(sig.primary_fingerprint.encode() + b"\0"
                          + signed.raw_signature).hexdigest()


def is_spent(session: Session, sig_id: str) -> bool:
    return session.get(HonouredSignature, sig_id) is not None


def spend(session: Session, now: dt.datetime, sig_id: str, fingerprint: str,
          case_id: str | None, message: Message) -> None:
    """Record the signature as used; a second use fails on the primary key."""
    session.flush()  # the message's id
    session.add(HonouredSignature(sig_id=sig_id, fingerprint=fingerprint, case_id=case_id,
                                  message_id=message.id, at=now))


def authenticate(session: Session, settings: Settings, mail: ParsedMail,
                 signed: Signed) -> tuple[str, str]:
    """(member, signature id) when the signature is by the sender's key on record in
    ``[team]`` and was never used before; else Refused."""
    member = next((m for m in settings.team.members if m.email == mail.from_addr), None)
    if member is None or not member.fingerprint:
        raise Refused("the sender has no key on record in [team]")
    if signed.signature.primary_fingerprint != member.fingerprint:
        raise Refused("the signature is not by the key on record for the sender")
    sig_id = signature_id(signed)
    if is_spent(session, sig_id):
        raise Refused("this signature was already used once (carried out or refused); "
                      "sign a new mail")
    return member.email, sig_id


def check_time(sig: Signature, now: dt.datetime) -> None:
    """Refused unless the signature was made within the last 30 days and not in the future."""
    if sig.created is None or sig.created > now + SIGNATURE_MAX_SKEW:
        raise Refused("the signature's time is in the future")
    if sig.created < now - SIGNATURE_MAX_AGE:
        raise Refused("the signature is older than 30 days")


def authorize(session: Session, now: dt.datetime,
              signed: Signed) -> tuple[Case, list[tuple[str, str]], str]:
    """(target case, keywords, message text) of an authenticated command, or Refused."""
    check_time(signed.signature, now)
    keywords, text = parse_keywords(signed.text)
    targets = [arg.strip() for name, arg in keywords if name == "X-CASE"]
    if len(targets) != 1 or not targets[0]:
        raise Refused("the signed text must name its case once, as X-CASE: ID")
    case = session.get(Case, targets[0])
    if case is None:
        raise Refused(f"X-CASE names {targets[0]}, which is not a case")
    actions = [(name, arg) for name, arg in keywords if name != "X-CASE"]
    unknown = [name for name, _ in actions if name not in TEAM_KEYWORDS]
    if unknown:
        raise Refused(f"unknown keyword {unknown[0]}, expected one of X-CASE, "
                      + ", ".join(TEAM_KEYWORDS))
    return case, actions, text


def request(name: str, arg: str, text: str,
            attachments: tuple[compose.Attachment, ...] = ()) -> lifecycle.Request:
    action = TEAM_KEYWORDS[name]
    kwargs: dict[str, object] = {}
    if action == "assign":
        kwargs["email"] = arg
    elif action == "duplicate":
        kwargs["other"] = arg
    elif action == "confirm" and arg:
        kwargs["cvss"] = arg
    elif action == "embargo":
        try:
            until = dt.datetime.fromisoformat(arg)
        except ValueError as exc:
            raise lifecycle.ActionError(f"X-EMBARGO needs an ISO 8601 time with offset, got "
                                        f"{arg[:40]!r}") from exc
        kwargs["until"] = until
        kwargs["attachments"] = attachments
    return lifecycle.Request(action=action, text=text, **kwargs)  # type: ignore[arg-type]


def handle(session: Session, now: dt.datetime, settings: Settings, keyring: Keyring | None,
           message: Message, mail: ParsedMail, unwrapped: Unwrapped,
           fallback_case: str | None) -> str | None:
    """Carry out a command mail; returns the case it is recorded on (None: no case at all)."""
    sender = mail.from_addr or ""
    spent: tuple[str, str] | None = None  # (signature id, fingerprint) once authenticated
    try:
        signed = signed_content(unwrapped, keyring)
        member, sig_id = authenticate(session, settings, mail, signed)
        spent = (sig_id, signed.signature.primary_fingerprint)
        case, actions, text = authorize(session, now, signed)
        if not actions:
            raise Refused("the signed text has X-CASE but no action keyword")
        try:
            with session.begin_nested():
                _apply(session, now, settings, case, member, actions, text,
                       signed_attachments(signed))
        except lifecycle.ActionError as exc:
            raise Refused(f"nothing was done: {exc}") from exc
    except Refused as refusal:
        recorded_on = _refuse(session, now, settings, message, mail, str(refusal), fallback_case)
        if spent is not None:
            spend(session, now, *spent, recorded_on, message)
        return recorded_on
    spend(session, now, sig_id, signed.signature.primary_fingerprint, case.id, message)
    message.case_id = case.id
    message.signed_by = signed.signature.primary_fingerprint
    states.record(session, now, case, actor=sender, action="command",
                  detail="signed command carried out: "
                         + ", ".join(name for name, _ in actions))
    return case.id


def _apply(session: Session, now: dt.datetime, settings: Settings, case: Case, member: str,
           actions: list[tuple[str, str]], text: str,
           attachments: tuple[compose.Attachment, ...] = ()) -> None:
    # The message goes with the first action that mails the reporter, else with X-EMBARGO
    # (the team's words in the notice); otherwise it is an internal comment (DESIGN.md §4).
    # The signed entity's attachments go with X-EMBARGO (the notice's files).
    carrier = next((i for i, (name, _) in enumerate(actions)
                    if TEAM_KEYWORDS[name] in states.TO_REPORTER), None)
    if carrier is None:
        carrier = next((i for i, (name, _) in enumerate(actions)
                        if TEAM_KEYWORDS[name] == "embargo"), None)
    for i, (name, arg) in enumerate(actions):
        lifecycle.act(session, now, settings, case.id,
                      request(name, arg, text if i == carrier else "", attachments), member)
    if carrier is None and text.strip():
        lifecycle.act(session, now, settings, case.id,
                      lifecycle.Request(action="comment", text=text), member)


def _refuse(session: Session, now: dt.datetime, settings: Settings, message: Message,
            mail: ParsedMail, reason: str, fallback_case: str | None) -> str | None:
    named = named_case(mail.text or "", message.raw.decode("latin-1"))
    case = (session.get(Case, named) if named else None) or (
        session.get(Case, fallback_case) if fallback_case else None)
    sender = mail.from_addr or ""
    if case is not None:
        message.case_id = case.id
        states.record(session, now, case, actor=sender, action="command_refused",
                      detail=reason)
    limit = settings.autoreply.max_per_sender_per_day
    if automatic_answers_since(session, sender, now - dt.timedelta(days=1)) >= limit:
        return case.id if case else None  # recorded; a flood of forgeries gets no mail flood
    body = render("command_refused.txt.j2", settings.templates.dir, reason=reason,
                  case_id=case.id if case else None,
                  security_address=settings.project.security_address)
    subject = (compose.tagged_subject(case.id, "Command not carried out") if case
               else "Command not carried out")
    enqueue(session, now, settings, kind="command_refused", to=sender, subject=subject,
            body=body, case=case, in_reply_to=mail.message_id, auto=True,
            auto_submitted="auto-replied")
    return case.id if case else None
