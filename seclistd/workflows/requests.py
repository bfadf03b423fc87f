"""The join request workflow (DESIGN.md §3 "Join request"): states as data, intake of a new
request, the applicant's later mails, the move to review, approval, denial and expiry.

``submitted`` → ``incomplete`` (criteria unanswered; the applicant is told exactly which) →
``verifying`` (waiting for ``membership.vouches_required`` signed vouches and, with
``membership.require_key_proof``, for the token mailed encrypted to the applicant's key) →
``pending_review`` (the team decides) → ``approved`` (member created, welcome sent) |
``denied``. A request waiting on the applicant or its vouchers (``submitted``,
``incomplete``, ``verifying``) ``expired`` after ``membership.request_expiry_days`` without
a word from them (``sweep``); one waiting on the team (``pending_review``) never expires.

Everything runs in the caller's transaction: the state change, its ``RequestEvent`` and the
mail it causes commit together. Decisions written down here:

- A From header proves nothing: only the applicant's address (the From of the first mail)
  may change the answers or answer the token, and a token counts only when it comes back
  from that address. Mail from anyone else on a request's thread is recorded and changes
  nothing.
- The key: the first key the applicant offers (attached, pasted or Autocrypt, never fetched)
  is pinned and a one-time token goes to it encrypted. A different key offered later does
  not unpin it: it waits in ``pending_fingerprint`` and a token goes encrypted to it; only
  when that token comes back (from the applicant's address) does the new key replace the
  pinned one, already proved. Until then nothing changes: the request keeps its key and its
  state, so a mail with a forged From and another key cannot send a request under review
  back to ``verifying``. The team sees both steps in the events.
- One open request per applicant and list: a second mail shaped like a join request, from
  the address of a request still open (not approved, denied or expired) for the same list,
  adds its answers to that request instead of opening another, and the applicant is told
  which request it went to.
- Mail to the applicant goes in plaintext until the key is proved (an unproved key may be
  wrong, and the applicant must read the instructions), encrypted to it afterwards; the
  token mail always goes only encrypted. Automatic answers to the applicant's mails obey the
  same loop rules and per-sender caps as a report's receipt.
- Approval needs ``pending_review``. The operator may approve a request still
  ``submitted``, ``incomplete`` or ``verifying`` with ``--force``; the event says what was
  missing, and a key that was never proved is then not pinned on the member (embargoed
  mail to it is held until a key is pinned). Team mail (``X-APPROVE``) has no force.
- The member's address is the applicant's, unless the answer to the contact criterion
  names exactly one address (the alias the applicant asks to subscribe, as in the policies'
  example): then that one. The welcome goes to the member (and a copy to the applicant when
  they differ).
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd import failures
from seclistd.config import ListSettings, Settings
from seclistd.crypto import keyring
from seclistd.list_models import JoinRequest, Member, RequestEvent
from seclistd.mail import compose, loops, request_syntax
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.models import Message
from seclistd.outbox import enqueue
from seclistd.workflows import criteria as crit
from seclistd.workflows import member_states, notices, report, tokens

log = logging.getLogger(__name__)

SYSTEM = "seclistd"
SUBMITTED, INCOMPLETE, VERIFYING = "submitted", "incomplete", "verifying"
PENDING_REVIEW, APPROVED, DENIED, EXPIRED = "pending_review", "approved", "denied", "expired"
STATES = (SUBMITTED, INCOMPLETE, VERIFYING, PENDING_REVIEW, APPROVED, DENIED, EXPIRED)
OPEN_STATES = (SUBMITTED, INCOMPLETE, VERIFYING, PENDING_REVIEW)
WAITING_ON_APPLICANT = (SUBMITTED, INCOMPLETE, VERIFYING)  # these expire after silence
FORCEABLE = WAITING_ON_APPLICANT

# (from_state, action) -> to_state
TRANSITIONS: dict[tuple[str, str], str] = {
    (SUBMITTED, "incomplete"): INCOMPLETE,
    (SUBMITTED, "verify"): VERIFYING,
    (INCOMPLETE, "verify"): VERIFYING,
    (VERIFYING, "review"): PENDING_REVIEW,
    (PENDING_REVIEW, "approve"): APPROVED,
    **{(state, "force_approve"): APPROVED for state in FORCEABLE},
    **{(state, "deny"): DENIED for state in OPEN_STATES},
    **{(state, "expire"): EXPIRED for state in WAITING_ON_APPLICANT},
}

MAX_TEXT = 64 * 1024  # of a mail's text, what the criteria matcher reads
ANSWER_CHARS = 4000  # kept per criterion
SUMMARY_CHARS = 600  # of each answer, in the mails to vouchers and the team
MAX_VOUCHERS_ASKED = 3
_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}")
_WORD = re.compile(r"[a-z0-9@._+-]+")
BATCH = 200


class RequestError(Exception):
    """An action the request's state (or the input) does not allow; the text says what would
    be right."""


# --- states and events ---------------------------------------------------------------------

def allowed_actions(state: str) -> list[str]:
    return sorted(action for (frm, action) in TRANSITIONS if frm == state)


def record(session: Session, now: dt.datetime, req: JoinRequest, *, actor: str, action: str,
           detail: str = "", from_state: str | None = None,
           to_state: str | None = None) -> RequestEvent:
    event = RequestEvent(request_id=req.id, at=now, actor=compose.clean(actor, 998),
                         action=action, from_state=from_state, to_state=to_state,
                         detail=detail[:4000])
    session.add(event)
    return event


def transition(session: Session, now: dt.datetime, req: JoinRequest, action: str, *,
               actor: str, detail: str = "") -> RequestEvent:
    to_state = TRANSITIONS.get((req.state, action))
    if to_state is None:
        raise RequestError(f"{req.id} is {req.state}; {action} is not possible "
                           f"(possible: {', '.join(allowed_actions(req.state)) or 'nothing'})")
    from_state, req.state = req.state, to_state
    return record(session, now, req, actor=actor, action=action, detail=detail,
                  from_state=from_state, to_state=to_state)


def load(session: Session, request_id: str) -> JoinRequest:
    req = session.get(JoinRequest, request_id)
    if req is None:
        raise RequestError(f"no join request {request_id}, expected an ID from "
                           "`seclistd requests list` (e.g. JOIN-2026-0001)")
    return req


# --- lists and criteria ----------------------------------------------------------------------

def list_named(lists: tuple[ListSettings, ...], subject: str,
               body: str) -> ListSettings | None:
    """The list whose address or name the subject (or the start of the body) names, else the
    first list; None when no list is configured."""
    if not lists:
        return None
    haystack = f"{subject or ''}\n{(body or '')[:8000]}".lower()
    for lst in lists:
        if lst.address.lower() in haystack:
            return lst
    words = set(_WORD.findall(haystack))
    for lst in lists:
        if lst.name.lower() in words:
            return lst
    return lists[0]


def list_settings(settings: Settings, name: str) -> ListSettings | None:
    return next((lst for lst in settings.lists if lst.name == name), None)


def criteria_of(settings: Settings, req: JoinRequest) -> list[crit.Criterion]:
    lst = list_settings(settings, req.list_name)
    return list(crit.criteria_for(lst)) if lst is not None else []


def looks_like_request(lists: tuple[ListSettings, ...], subject: str,
                       body: str) -> ListSettings | None:
    """The list a mail asks to join, when it has the shape of a join request."""
    lst = list_named(lists, subject, body)
    if lst is None:
        return None
    if crit.looks_like_join_request(subject or "", (body or "")[:MAX_TEXT],
                                    crit.criteria_for(lst)):
        return lst
    return None


def _answers(answers: crit.Answers) -> tuple[dict[str, str], list[str]]:
    return ({k: compose.short(v, ANSWER_CHARS) for k, v in answers.answers.items()},
            list(answers.missing))


# --- mail ----------------------------------------------------------------------------------

def _mail_applicant(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest,
                    *, kind: str, subject: str, body: str, auto: bool,
                    in_reply_to: str | None = None) -> None:
    """Mail the applicant: encrypted once the key is proved, plaintext before (nothing secret
    goes in these). ``auto``: an automatic answer to the applicant's own mail."""
    enqueue(session, now, settings, kind=kind, to=req.applicant, to_name=req.applicant_name,
            subject=compose.tagged_subject(req.id, subject), body=body,
            in_reply_to=in_reply_to or req.root_message_id, auto=auto,
            auto_submitted="auto-replied" if auto else "auto-generated", confidential=False,
            request_id=req.id, encrypt_to=req.fingerprint if req.key_proved_at else None)


def tell_team(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest, *,
              what: str, subject: str, extra: str = "") -> list[str]:
    """One notice about the request to every team member (or, past the hourly threshold, a
    line in the next digest); returns the addresses told now."""
    if notices.hold_request_notice(session, now, settings, req.id, req.applicant, subject):
        record(session, now, req, actor=SYSTEM, action="team_told",
               detail=f"{subject}: listed in the next team digest (flood threshold passed)")
        return []
    body = render("request_team.txt.j2", settings.templates.dir, what=what, extra=extra,
                  request=summary(settings, req), vouches_required=settings.membership
                  .vouches_required, security_address=settings.project.security_address)
    for member in settings.team.members:
        enqueue(session, now, settings, kind="request_team", to=member.email,
                to_name=member.name, subject=compose.tagged_subject(req.id, subject),
                body=body, request_id=req.id, in_reply_to=req.root_message_id)
    return [m.email for m in settings.team.members]


def summary(settings: Settings, req: JoinRequest) -> dict[str, object]:
    """What a voucher or the team reads about a request (answers shortened)."""
    criteria = criteria_of(settings, req)
    texts = {c.id: c.text for c in criteria}
    answers = [{"id": cid, "criterion": compose.short(texts.get(cid, cid), 200),
                "answer": compose.short(answer, SUMMARY_CHARS)}
               for cid, answer in req.answers.items()]
    return {"id": req.id, "list": req.list_name, "applicant": req.applicant,
            "applicant_name": req.applicant_name, "organization": req.organization or "-",
            "answers": answers, "voucher_named": compose.short(req.voucher_named, 200) or "-",
            "fingerprint": req.fingerprint or "-",
            "key_proved": req.key_proved_at is not None,
            "missing": crit.describe_missing(req.missing_criteria, criteria)
            if req.missing_criteria else [],
            "vouches": len(req.vouches)}


def status_mail(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest, *,
                notes: list[str], auto: bool, first: bool = False,
                in_reply_to: str | None = None) -> None:
    """Tell the applicant where the request stands and what, if anything, to do next."""
    criteria = criteria_of(settings, req)
    lst = list_settings(settings, req.list_name)
    need_key = settings.membership.require_key_proof
    body = render(
        "request_status.txt.j2", settings.templates.dir, request_id=req.id, first=first,
        project=settings.project.name, list_address=lst.address if lst else req.list_name,
        applicant_name=compose.short(req.applicant_name, 40), state=req.state,
        missing=crit.describe_missing(req.missing_criteria, criteria)
        if req.state in (SUBMITTED, INCOMPLETE) else [],
        key_needed=need_key and req.fingerprint is None and req.state in OPEN_STATES,
        token_sent=need_key and req.token_sha256 is not None and req.key_proved_at is None,
        key_proved=req.key_proved_at is not None, fingerprint=req.fingerprint or "",
        vouches=len(req.vouches), vouches_required=settings.membership.vouches_required,
        notes=notes, applicant=req.applicant,
        security_address=settings.project.security_address)
    subject = {SUBMITTED: "Your request to join", INCOMPLETE: "Your request to join: "
               "answers missing", VERIFYING: "Your request to join: next steps",
               PENDING_REVIEW: "Your request to join is under review"}.get(req.state,
                                                                         "Your request to join")
    _mail_applicant(session, now, settings, req, kind="request_status", subject=subject,
                    body=body, auto=auto, in_reply_to=in_reply_to)


def answer_withheld(session: Session, now: dt.datetime, settings: Settings,
                    mail: ParsedMail) -> str | None:
    """Why the applicant's mail must get no automatic answer (loop rules, per-sender and
    hourly caps: the receipt's rules), or None."""
    return report.no_receipt_reason(session, now, settings, mail,
                                    report.own_addresses(settings))


# --- the key -------------------------------------------------------------------------------

def offer_key(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest,
              fingerprint: str | None, actor: str) -> list[str]:
    """Pin the first offered key; a different one later waits for its own proof
    (``pending_fingerprint``) while the pinned one stays. Returns notes for the applicant."""
    if not fingerprint or fingerprint in (req.fingerprint, req.pending_fingerprint):
        return []
    if req.fingerprint is None:
        req.fingerprint, req.key_proved_at, req.token_sha256 = fingerprint, None, None
        record(session, now, req, actor=actor, action="key_pinned",
               detail=f"key {fingerprint} offered with the applicant's mail and pinned")
        return [f"We pinned the key {fingerprint} to your request."]
    earlier = req.pending_fingerprint
    req.pending_fingerprint, req.pending_token_sha256 = fingerprint, None
    record(session, now, req, actor=actor, action="key_offered",
           detail=f"another key {fingerprint} offered; {req.fingerprint} stays pinned until "
                  "the token mailed encrypted to the new key comes back"
                  + (f" (it takes the place of the earlier offer {earlier})" if earlier else ""))
    return [f"Your mail offered a different key, {fingerprint}. The key {req.fingerprint} "
            "stays on your request until you prove the new one: we send a token encrypted to "
            "it; reply with its Token line and the new key replaces the old."]


def send_token(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest,
               *, pending: bool = False) -> None:
    """Mail a one-time token encrypted to the pinned key (``pending``: to the key offered to
    replace it); only its SHA-256 is kept."""
    key = req.pending_fingerprint if pending else req.fingerprint
    assert key is not None
    token, hashed = tokens.new_token()
    if pending:
        req.pending_token_sha256 = hashed
    else:
        req.token_sha256 = hashed
    body = render("request_token.txt.j2", settings.templates.dir, request_id=req.id,
                  token=token, fingerprint=key, project=settings.project.name,
                  security_address=settings.project.security_address)
    enqueue(session, now, settings, kind="request_token", to=req.applicant,
            to_name=req.applicant_name,
            subject=compose.tagged_subject(req.id, "Proof of key: your token"), body=body,
            in_reply_to=req.root_message_id, auto=True, auto_submitted="auto-replied",
            request_id=req.id, encrypt_to=key)
    record(session, now, req, actor=SYSTEM, action="token_sent",
           detail=f"one-time token mailed encrypted to {key}"
                  + (" (the key offered to replace the pinned one)" if pending else ""))


def check_tokens(session: Session, now: dt.datetime, req: JoinRequest, text: str,
                 actor: str) -> list[str]:
    """Prove a key when the mail (from the applicant's address) carries its token: the pinned
    key's, or the one of a key offered to replace it (which then replaces it)."""
    notes: list[str] = []
    for token in tokens.offered(text):
        if req.pending_fingerprint and tokens.matches(token, req.pending_token_sha256):
            old, new = req.fingerprint, req.pending_fingerprint
            req.fingerprint, req.key_proved_at, req.token_sha256 = new, now, None
            req.pending_fingerprint = req.pending_token_sha256 = None
            record(session, now, req, actor=actor, action="key_replaced",
                   detail=f"the token mailed encrypted to {new} came back: it replaces {old}")
            notes.append(f"Your new key {new} is proved and replaces {old}.")
            return notes
        if tokens.matches(token, req.token_sha256):
            req.key_proved_at, req.token_sha256 = now, None
            record(session, now, req, actor=actor, action="key_proved",
                   detail=f"the token mailed encrypted to {req.fingerprint} came back")
            notes.append(f"Your key {req.fingerprint} is proved: thank you.")
            return notes
        waiting = req.token_sha256 is not None or req.pending_token_sha256 is not None
        why = "unknown or used token" if waiting or not req.key_proved_at \
            else "the key is already proved"
        record(session, now, req, actor=actor, action="token_refused", detail=why)
        if waiting:
            notes.append("A token in your mail was not accepted (it is not the one of the "
                         "latest token mail); please send the one from the most recent.")
    return notes


def key_expiry(settings: Settings, fingerprint: str | None) -> dt.datetime | None:
    if not fingerprint:
        return None
    ring = keyring(settings.gnupg)
    info = ring.key(fingerprint) if ring else None
    return info.expires if info else None


# --- vouchers ------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    """Lower-case words (an address is one word), without a sentence's final dot."""
    words = (w.rstrip(".") for w in _WORD.findall((text or "").lower()[:ANSWER_CHARS]))
    return [w for w in words if w]


def _contains(words: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    if not n or n > 8:
        return False
    return any(words[i:i + n] == phrase for i in range(len(words) - n + 1))


def match_vouchers(session: Session, req: JoinRequest) -> list[Member]:
    """Active members of the request's list the named voucher matches, by address, name or
    organisation (case-insensitive, whole words; the applicant's own organisation never
    counts, since applicants name it in the same sentence)."""
    named = req.voucher_named or ""
    if not named.strip():
        return []
    words = _words(named)
    own_org = _words(req.organization)
    found = []
    for member in session.scalars(select(Member).where(
            Member.list_name == req.list_name, Member.state == member_states.ACTIVE)
            .order_by(Member.id)):
        if member.email == req.applicant:
            continue
        org = _words(member.organization)
        if (member.email in words or _contains(words, _words(member.name))
                or (org and org != own_org and _contains(words, org))):
            found.append(member)
    return found[:MAX_VOUCHERS_ASKED]


def ask_vouchers(session: Session, now: dt.datetime, settings: Settings,
                 req: JoinRequest) -> None:
    """Mail the members the applicant named how to vouch; the team when none matches."""
    if settings.membership.vouches_required <= 0:
        return
    members = match_vouchers(session, req)
    lst = list_settings(settings, req.list_name)
    if not members:
        record(session, now, req, actor=SYSTEM, action="voucher_unknown",
               detail=f"no active member matches the voucher named "
                      f"({compose.short(req.voucher_named, 80) or 'none named'}); team asked")
        tell_team(session, now, settings, req, what="no_voucher",
                  subject="Join request: who can vouch?")
        return
    req.voucher_member_id = members[0].id
    for member in members:
        body = render("request_vouch_ask.txt.j2", settings.templates.dir,
                      request=summary(settings, req), member_name=member.name,
                      list_address=lst.address if lst else req.list_name,
                      security_address=settings.project.security_address)
        enqueue(session, now, settings, kind="request_vouch_ask", to=member.email,
                to_name=member.name, member=member, confidential=False, request_id=req.id,
                subject=compose.tagged_subject(req.id, f"Would you vouch for {req.applicant}?"),
                body=body)
    record(session, now, req, actor=SYSTEM, action="voucher_asked",
           detail="asked to vouch: " + ", ".join(m.email for m in members))


# --- moving on -------------------------------------------------------------------------------

def verified(settings: Settings, req: JoinRequest) -> bool:
    key_ok = not settings.membership.require_key_proof or req.key_proved_at is not None
    return key_ok and len(req.vouches) >= settings.membership.vouches_required


def still_needed(settings: Settings, req: JoinRequest) -> list[str]:
    """What the request still lacks for the review, in words for an operator."""
    needed = []
    if req.missing_criteria:
        needed.append("answers to " + ", ".join(req.missing_criteria))
    if settings.membership.require_key_proof and req.key_proved_at is None:
        needed.append("a key" if req.fingerprint is None else "the proof of key (token)")
    have, want = len(req.vouches), settings.membership.vouches_required
    if have < want:
        needed.append(f"{want - have} more vouch(es) ({have} of {want})")
    return needed


def advance(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest, *,
            actor: str, may_answer: bool = True) -> None:
    """Move the request as far as it can go; ``may_answer``: a token may be mailed now."""
    if (req.state in OPEN_STATES and req.pending_fingerprint
            and req.pending_token_sha256 is None and may_answer):
        send_token(session, now, settings, req, pending=True)
    if req.state in (SUBMITTED, INCOMPLETE):
        if req.missing_criteria:
            if req.state == SUBMITTED:
                transition(session, now, req, "incomplete", actor=actor,
                           detail="missing: " + ", ".join(req.missing_criteria))
            return
        transition(session, now, req, "verify", actor=actor, detail="every criterion answered")
        ask_vouchers(session, now, settings, req)
    if req.state not in (VERIFYING, PENDING_REVIEW):
        return
    if (settings.membership.require_key_proof and req.fingerprint and req.key_proved_at is None
            and req.token_sha256 is None and may_answer):
        send_token(session, now, settings, req)
    if req.state == VERIFYING and verified(settings, req):
        transition(session, now, req, "review", actor=actor,
                   detail=f"{len(req.vouches)} vouch(es)"
                          + ("; key proved" if req.key_proved_at else ""))
        told = tell_team(session, now, settings, req, what="review",
                         subject="Join request ready for review")
        if told:
            record(session, now, req, actor=SYSTEM, action="team_told",
                   detail="ready for review: " + ", ".join(told))


# --- intake -----------------------------------------------------------------------------------

def open_request(session: Session, now: dt.datetime, settings: Settings, message: Message,
                 mail: ParsedMail, lst: ListSettings, offered_key: str | None) -> JoinRequest:
    """A new join request from ``mail``: answers recorded, what is missing listed, the key
    pinned, the applicant answered once (within the loop rules and caps)."""
    assert mail.from_addr is not None
    criteria = list(crit.criteria_for(lst))
    body = (mail.text or "")[:MAX_TEXT]
    answers, missing = _answers(crit.match_answers(body, criteria))
    tz = settings.project.tz
    req = JoinRequest(
        id=report.next_id(session, "join", request_syntax.PREFIX, now.astimezone(tz).year),
        list_name=lst.name, state=SUBMITTED,
        applicant=loops.canonical_mailbox(mail.from_addr),
        applicant_name=compose.clean(mail.from_name, 200),
        organization=compose.clean(crit.organization_of(mail.subject or "", body), 200),
        answers=answers, missing_criteria=missing,
        voucher_named=compose.clean(crit.voucher_named(answers, criteria), 1000),
        root_message_id=mail.message_id, created_at=now, last_activity_at=now)
    session.add(req)
    session.flush()
    message.request_id = req.id
    actor = req.applicant
    record(session, now, req, actor=actor, action="submitted", to_state=SUBMITTED,
           detail=f"join request for {lst.name} received via {message.source}; "
                  f"{len(answers)} answer(s), missing: {', '.join(missing) or 'none'}")
    withheld = answer_withheld(session, now, settings, mail)
    notes = offer_key(session, now, settings, req, offered_key, actor)
    advance(session, now, settings, req, actor=actor, may_answer=withheld is None)
    if withheld:
        record(session, now, req, actor=SYSTEM, action="answer_withheld", detail=withheld)
    else:
        status_mail(session, now, settings, req, notes=notes, auto=True, first=True,
                    in_reply_to=mail.message_id)
    return req


def open_request_of(session: Session, list_name: str, address: str | None) -> JoinRequest | None:
    """The applicant's request still open (not approved, denied or expired) for that list."""
    if not address:
        return None
    return session.scalars(select(JoinRequest).where(
        JoinRequest.list_name == list_name,
        JoinRequest.applicant == loops.canonical_mailbox(address),
        JoinRequest.state.in_(OPEN_STATES)).order_by(JoinRequest.created_at)).first()


def on_mail(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest,
            message: Message, mail: ParsedMail, label: str, offered_key: str | None, *,
            again: bool = False) -> None:
    """A mail on a request's thread: the applicant's answers, key and token count; anyone
    else's mail (and bounces, automatic replies) is recorded and changes nothing.
    ``again``: a new request-shaped mail from the applicant of this open request (it adds
    its answers here, whatever the state, and the applicant is told where it went)."""
    message.request_id = req.id
    who = loops.canonical_mailbox(mail.from_addr) if mail.from_addr else "(unknown sender)"
    if label != "reply":
        record(session, now, req, actor=who, action=label,
               detail=f"{label.replace('_', ' ')} from {who}")
        return
    text = (mail.text or "")[:MAX_TEXT]
    if who != req.applicant:
        if request_syntax.tokens_in(text):
            record(session, now, req, actor=who, action="token_refused",
                   detail=f"a token came from {who}, not from the applicant's address "
                          f"{req.applicant}: it proves nothing")
        else:
            record(session, now, req, actor=who, action="message",
                   detail=f"message from {who} (not the applicant): nothing changed")
        return
    req.last_activity_at = now
    if req.state not in OPEN_STATES:
        record(session, now, req, actor=who, action="message",
               detail=f"message from the applicant after the request was {req.state}")
        return
    notes = check_tokens(session, now, req, text, who)
    if again:
        notes.insert(0, f"Your request to join {req.list_name} is already open as {req.id}: "
                        "we added this mail to it instead of opening a second one.")
        record(session, now, req, actor=who, action="request_again",
               detail="another request-shaped mail from the applicant for the same list, "
                      "added to this request")
    if req.state in (SUBMITTED, INCOMPLETE) or again:
        criteria = criteria_of(settings, req)
        answers, missing = _answers(crit.merge_answers(dict(req.answers), text, criteria))
        added = [k for k in answers if k not in req.answers or answers[k] != req.answers[k]]
        if req.state not in (SUBMITTED, INCOMPLETE):  # past the answers: nothing reopens
            missing = [m for m in missing if m in req.missing_criteria]
        req.answers, req.missing_criteria = answers, missing
        if not req.voucher_named:
            req.voucher_named = compose.clean(crit.voucher_named(answers, criteria), 1000)
        if not req.organization:
            req.organization = compose.clean(crit.organization_of(mail.subject or "", text),
                                             200)
        record(session, now, req, actor=who, action="answers",
               detail=f"answered: {', '.join(added) or 'nothing new'}; "
                      f"still missing: {', '.join(missing) or 'none'}")
    else:
        record(session, now, req, actor=who, action="message", detail="message from the "
               "applicant")
    notes += offer_key(session, now, settings, req, offered_key, who)
    withheld = answer_withheld(session, now, settings, mail)
    before = req.state
    advance(session, now, settings, req, actor=who, may_answer=withheld is None)
    if withheld:
        record(session, now, req, actor=SYSTEM, action="answer_withheld", detail=withheld)
    elif notes or req.state != before or req.state in (SUBMITTED, INCOMPLETE) or \
            (req.state == VERIFYING and not verified(settings, req)):
        status_mail(session, now, settings, req, notes=notes, auto=True,
                    in_reply_to=mail.message_id)


def vouch_recorded(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest,
                   member: Member) -> None:
    """After a vouch is stored: move on and tell the applicant where things stand."""
    req.last_activity_at = now
    before = req.state
    advance(session, now, settings, req, actor=member.email)
    note = (f"A member of the list ({member.organization or member.email}) vouched for you "
            f"({len(req.vouches)} of {settings.membership.vouches_required}).")
    if before in OPEN_STATES:
        status_mail(session, now, settings, req, notes=[note], auto=False)


# --- decisions ---------------------------------------------------------------------------------

def member_address(settings: Settings, req: JoinRequest) -> str:
    """The applicant's address, unless the contact answer names exactly one other address."""
    contact = [c.id for c in criteria_of(settings, req) if c.role == "contact"]
    found: set[str] = set()
    for cid in contact:
        for match in _ADDRESS.finditer(req.answers.get(cid, "")[:ANSWER_CHARS]):
            found.add(loops.canonical_mailbox(match.group(0).rstrip(".")))
    found -= report.own_addresses(settings)
    return found.pop() if len(found) == 1 else req.applicant


def approve(session: Session, now: dt.datetime, settings: Settings, request_id: str,
            actor: str, *, force: bool = False) -> RequestEvent:
    """Create the member and send the welcome. Needs ``pending_review`` (or ``force`` from
    ``submitted``, ``incomplete`` or ``verifying``); RequestError otherwise."""
    req = load(session, request_id)
    action = "approve"
    detail = ""
    if req.state != PENDING_REVIEW:
        if not (force and req.state in FORCEABLE):
            needed = "; it still needs " + ", ".join(still_needed(settings, req)) \
                if req.state in FORCEABLE else ""
            hint = " (or --force to approve it anyway)" if req.state in FORCEABLE else ""
            raise RequestError(f"{req.id} is {req.state}; only a request in pending_review "
                               f"can be approved{needed}{hint}")
        action = "force_approve"
        detail = "approved before review; it lacked " + (
            ", ".join(still_needed(settings, req)) or "nothing")
    lst = list_settings(settings, req.list_name)
    if lst is None:
        raise RequestError(f"{req.id} is for the list {req.list_name}, which is no longer in "
                           "the config ([[lists]]); add it back to approve")
    key_ok = req.key_proved_at is not None or not settings.membership.require_key_proof
    fingerprint = req.fingerprint if key_ok else None
    email = member_address(settings, req)
    try:
        member = member_states.add_member(
            session, list_name=req.list_name, email=email, organization=req.organization,
            actor=actor, now=now, name=req.applicant_name, fingerprint=fingerprint,
            key_expires=key_expiry(settings, fingerprint), request_id=req.id,
            detail=f"joined by {req.id}")
    except member_states.MemberStateError as exc:
        raise RequestError(f"{req.id} cannot be approved: {exc}") from exc
    session.flush()
    req.member_id, req.decided_at, req.decided_by = member.id, now, actor
    key_words = fingerprint or "(none: embargoed mail held until one is pinned)"
    event = transition(session, now, req, action, actor=actor,
                       detail=(detail + "; " if detail else "")
                       + f"member {member.email} created with key {key_words}")
    body = render("request_welcome.txt.j2", settings.templates.dir, request_id=req.id,
                  project=settings.project.name, list_address=lst.address,
                  member_email=member.email, fingerprint=fingerprint or "",
                  max_embargo_days=lst.max_embargo_days,
                  security_address=settings.project.security_address)
    subject = compose.tagged_subject(req.id, f"Welcome to {lst.address}")
    enqueue(session, now, settings, kind="request_welcome", to=member.email, member=member,
            confidential=False, request_id=req.id, subject=subject, body=body,
            in_reply_to=req.root_message_id, auto_submitted=None)
    if member.email != req.applicant:
        _mail_applicant(session, now, settings, req, kind="request_welcome", subject=subject,
                        body=body, auto=False)
        # The applicant proved its own mailbox, not this one: the address confirms first.
        from seclistd.workflows import member_rotation

        member_rotation.ask_address_confirmation(session, now, settings, member,
                                                 applicant=req.applicant, request_id=req.id)
    return event


def deny(session: Session, now: dt.datetime, settings: Settings, request_id: str, actor: str,
         text: str = "") -> RequestEvent:
    """Deny an open request and send the applicant a short notice (with ``text``, if any)."""
    req = load(session, request_id)
    if req.state not in OPEN_STATES:
        raise RequestError(f"{req.id} is {req.state}; only an open request "
                           f"({', '.join(OPEN_STATES)}) can be denied")
    req.decided_at, req.decided_by = now, actor
    event = transition(session, now, req, "deny", actor=actor,
                       detail=compose.short(text, 500) if text.strip() else "")
    lst = list_settings(settings, req.list_name)
    body = render("request_denied.txt.j2", settings.templates.dir, request_id=req.id,
                  project=settings.project.name,
                  list_address=lst.address if lst else req.list_name, text=text.strip(),
                  security_address=settings.project.security_address)
    _mail_applicant(session, now, settings, req, kind="request_denied",
                    subject="Your request to join was declined", body=body, auto=False)
    return event


# --- expiry ------------------------------------------------------------------------------------

def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    """Expire requests silent for ``membership.request_expiry_days``, each in its own
    savepoint: one that fails is logged (and recorded once on the request) and retried at
    the next run; the others go on. Claimed ``FOR UPDATE SKIP LOCKED``."""
    cutoff = now - dt.timedelta(days=settings.membership.request_expiry_days)
    due = session.scalars(
        select(JoinRequest).where(JoinRequest.state.in_(WAITING_ON_APPLICANT),
                                  JoinRequest.last_activity_at <= cutoff)
        .order_by(JoinRequest.last_activity_at).limit(BATCH)
        .with_for_update(skip_locked=True)).all()
    done = 0
    for req in due:
        try:
            with session.begin_nested():
                expire(session, now, settings, req)
                session.flush()
            done += 1
        except Exception as exc:  # noqa: BLE001 - one request must not stop the sweep
            error = failures.describe(exc)
            log.error("expiry of %s failed (retried at the next run): %s", req.id, error)
            last = session.scalar(select(RequestEvent.action).where(
                RequestEvent.request_id == req.id).order_by(RequestEvent.id.desc()).limit(1))
            if last != "sweep_failed":
                record(session, now, req, actor=SYSTEM, action="sweep_failed", detail=error)
    if due:
        log.info("request expiry sweep: %d of %d expired", done, len(due))
    return done


def expire(session: Session, now: dt.datetime, settings: Settings, req: JoinRequest) -> None:
    days = settings.membership.request_expiry_days
    transition(session, now, req, "expire", actor=SYSTEM,
               detail=f"no word for {days} days (membership.request_expiry_days)")
    req.decided_at, req.decided_by = now, SYSTEM
    lst = list_settings(settings, req.list_name)
    body = render("request_expired.txt.j2", settings.templates.dir, request_id=req.id,
                  days=days, project=settings.project.name,
                  list_address=lst.address if lst else req.list_name,
                  security_address=settings.project.security_address)
    _mail_applicant(session, now, settings, req, kind="request_expired",
                    subject="Your request to join has expired", body=body, auto=False)


# --- views -------------------------------------------------------------------------------------

def row(req: JoinRequest, tz: dt.tzinfo) -> dict[str, object]:
    """The contract fields of a request (DESIGN.md §4), with its list and times."""
    return {"id": req.id, "state": req.state, "applicant": req.applicant,
            "organization": req.organization, "missing_criteria": list(req.missing_criteria),
            "list": req.list_name, "created_at": _iso(req.created_at, tz),
            "last_activity_at": _iso(req.last_activity_at, tz)}


def _iso(when: dt.datetime | None, tz: dt.tzinfo) -> str | None:
    return when.astimezone(tz).isoformat() if when else None


def list_requests(session: Session, settings: Settings,
                  state: str | None = None) -> list[dict[str, object]]:
    query = select(JoinRequest).order_by(JoinRequest.created_at, JoinRequest.id)
    if state:
        query = query.where(JoinRequest.state == state)
    return [row(r, settings.project.tz) for r in session.scalars(query)]


def show_request(session: Session, settings: Settings,
                 request_id: str) -> dict[str, object] | None:
    req = session.get(JoinRequest, request_id)
    if req is None:
        return None
    tz = settings.project.tz
    criteria = criteria_of(settings, req)
    doc = row(req, tz)
    known = [c.id for c in criteria]
    doc["answers"] = [{"criterion": c.id, "text": c.text, "answer": req.answers.get(c.id)}
                      for c in criteria] + [
        {"criterion": k, "text": None, "answer": v} for k, v in req.answers.items()
        if k not in known]
    doc["missing"] = crit.describe_missing(req.missing_criteria, criteria) \
        if req.missing_criteria else []
    voucher = session.get(Member, req.voucher_member_id) if req.voucher_member_id else None
    members = {m.id: m for m in session.scalars(select(Member).where(
        Member.id.in_([v.member_id for v in req.vouches])))} if req.vouches else {}
    doc.update({
        "applicant_name": req.applicant_name, "voucher_named": req.voucher_named,
        "voucher": voucher.email if voucher else None,
        "vouches": [{"member": members[v.member_id].email if v.member_id in members else None,
                     "fingerprint": v.fingerprint, "at": _iso(v.at, tz)} for v in req.vouches],
        "vouches_required": settings.membership.vouches_required,
        "fingerprint": req.fingerprint, "key_proved_at": _iso(req.key_proved_at, tz),
        "token_pending": req.token_sha256 is not None,
        "pending_fingerprint": req.pending_fingerprint,
        "still_needed": still_needed(settings, req) if req.state in OPEN_STATES else [],
        "decided_at": _iso(req.decided_at, tz), "decided_by": req.decided_by,
        "member": session.get(Member, req.member_id).email if req.member_id else None,
        "events": [{"at": _iso(e.at, tz), "actor": e.actor, "action": e.action,
                    "from_state": e.from_state, "to_state": e.to_state, "detail": e.detail}
                   for e in req.events],
    })
    return doc
