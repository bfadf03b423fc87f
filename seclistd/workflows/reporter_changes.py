"""What a reporter's later mail may change on a case, and the proof each change needs.

A From header proves nothing: anyone can write the reporter's address there, with any
return path and the case tag in the subject. So (DESIGN.md §2, issue 8 item 5):

- The report's first mail may pin the key it carries: trust on first use, recorded as a
  ``key_pinned`` event (``report.open_case``). Its credit wish is the report's own.
- A later mail that offers another key, or a credit wish that differs from the one on record,
  changes the case at once only when it is signed by the pinned key: exactly one good
  signature, by the pinned key's primary fingerprint, not revoked or expired, made after the
  case was opened and not in the future, and never used before (it is then spent, like a
  team command's). Only what is inside the signed entity counts: a key in an unsigned header
  (Autocrypt) or part beside it is not covered by the signature.
- Otherwise nothing changes. The wish is kept as a ``PendingChange`` (only the SHA-256 of its
  token is stored), a ``change_unverified`` event records it, the team is told in the mail
  that forwards the reporter's message, and a one-time token goes to the case's answer
  address (encrypted to the pinned key when there is one; the mail carries nothing of the
  case, so it may go out in plaintext when no key is known). An answer on the case with the
  line ``Confirm: TOKEN`` (typed, not quoted: the mail shows the code on a line of its own,
  so quoting it whole confirms nothing) applies the change, within ``CONFIRM_WITHIN``, once.

What else a reporter's mail changes, and why it needs no proof:
- ``missing_information`` loses the items the new text supplies: that only stops us asking,
  and the text itself is on the case and forwarded for the team to judge;
- ``waiting_on`` becomes ``team``: it puts the team on turn, nothing more;
Nothing else (state, handler, addresses, embargo, severity, ``encrypted``) changes by a
reporter's mail. ``encrypted`` in particular stays as the report set it: an encrypted reply
with a forged From would otherwise hold every answer until a key is imported. Answers are
encrypted anyway once a key is pinned, which takes the proof above.
A confirmation code counts only from the address on record (From, Reply-To of the report):
the code was mailed there, and a code forwarded elsewhere proves nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring
from seclistd.mail import compose
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Case, Message, Outbox, PendingChange
from seclistd.outbox import automatic_answers_since, enqueue
from seclistd.workflows import commands, completeness, lifecycle, states

CONFIRM_WITHIN = dt.timedelta(days=7)
SIGNATURE_MAX_SKEW = dt.timedelta(hours=1)
_TOKEN = re.compile(r"confirm:[ \t]*([0-9a-f]{32})\b", re.I)
MAX_TOKENS_PER_MAIL = 5


@dataclass(frozen=True)
class Change:
    """A key to pin and/or a credit wish; None: that part stays as it is."""

    key: str | None = None
    credit: completeness.Credit | None = None

    def __bool__(self) -> bool:
        return self.key is not None or self.credit is not None

    def items(self) -> list[str]:
        """The change in words, for the event, the team and the reporter."""
        said = []
        if self.key:
            said.append(f"encrypt mail to you to the OpenPGP key {self.key}")
        if self.credit is not None:
            said.append(f"credit you as: {credit_words(self.credit.name, self.credit.github)}")
        return said


def credit_words(name: str | None, github: str | None) -> str:
    if not name and not github:
        return "(not named)"
    name = compose.clean(name, 200)
    if github:
        return f"{name} (GitHub @{github})" if name else f"GitHub @{github}"
    return name


@dataclass(frozen=True)
class Evidence:
    """What the pipeline learnt about a mail's OpenPGP, to judge what it may change."""

    unwrapped: Unwrapped = field(default_factory=Unwrapped)
    keyring: Callable[[], Keyring | None] = lambda: None
    offered: list[str] = field(default_factory=list)  # every key the mail offered
    offered_signed: list[str] = field(default_factory=list)  # those inside the signed entity


def pick_key(keyring: Keyring | None, offered: list[str], address: str | None) -> str | None:
    """The offered key meant: one with a user ID for the address, else the first one."""
    if not offered:
        return None
    from seclistd.crypto import uid_address

    for fingerprint in offered:
        info = keyring.key(fingerprint) if keyring else None
        if info and address and any(uid_address(uid) == address for uid in info.uids):
            return fingerprint
    return offered[0]


def asked(case: Case, text: str, key: str | None) -> Change:
    """What the mail asks to change, compared with what the case has."""
    wish = completeness.credit(text, case.reporter_name or "")
    if wish is not None and (wish.name, wish.github) == (case.credit, case.credit_github):
        wish = None
    return Change(key=key if key and key != case.reporter_key else None, credit=wish)


def on_reply(session: Session, now: dt.datetime, settings: Settings, case: Case,
             message: Message, text: str, evidence: Evidence) -> list[str]:
    """Judge what a reporter's mail asks to change; returns notes for the team."""
    keyring = evidence.keyring() if evidence.offered or _is_signed(evidence.unwrapped) else None
    change = asked(case, text, pick_key(keyring, evidence.offered, case.reporter))
    if not change:
        return []
    notes: list[str] = []
    signed, problem = _signed_by_pinned(session, now, case, evidence, keyring)
    if signed is not None:
        covered = asked(case, signed.text, pick_key(keyring, evidence.offered_signed,
                                                    case.reporter))
        covered = Change(key=covered.key if change.key else None,
                         credit=covered.credit if change.credit else None)
        if covered:
            commands.spend(session, now, commands.signature_id(signed),
                           signed.signature.primary_fingerprint, case.id, message)
            message.signed_by = signed.signature.primary_fingerprint
            apply(session, now, case, covered)
            states.record(session, now, case, actor=case.reporter, action="change_signed",
                          detail="signed by the pinned key " + str(case.reporter_key)
                                 + "; applied: " + "; ".join(covered.items()))
            notes.append("Applied (signed by the reporter's pinned key): "
                         + "; ".join(covered.items()))
        change = Change(key=change.key if change.key != covered.key else None,
                        credit=change.credit if covered.credit is None else None)
        problem = "not covered by the signature"
    if change:
        notes.append(_hold(session, now, settings, case, message, change, problem))
    return notes


def _is_signed(unwrapped: Unwrapped) -> bool:
    return unwrapped.signed is not None or bool(
        unwrapped.inner_verification and unwrapped.inner_verification.signatures)


def _signed_by_pinned(session: Session, now: dt.datetime, case: Case, evidence: Evidence,
                      keyring: Keyring | None) -> tuple[commands.Signed | None, str]:
    """(the signed content, "") when the mail is signed by the pinned key; else (None, why)."""
    if not case.reporter_key:
        return None, "no key is pinned on the case"
    if not _is_signed(evidence.unwrapped):
        return None, "not signed"
    try:
        signed = commands.signed_content(evidence.unwrapped, keyring)
    except commands.Refused as refusal:
        return None, str(refusal)
    sig = signed.signature
    if sig.primary_fingerprint != case.reporter_key:
        return None, "signed by another key than the pinned one"
    if sig.created is None or sig.created > now + SIGNATURE_MAX_SKEW:
        return None, "the signature's time is in the future"
    if sig.created < case.received_at - SIGNATURE_MAX_SKEW:
        return None, "the signature is older than the case"
    if commands.is_spent(session, commands.signature_id(signed)):
        return None, "the signature was used before"
    return signed, ""


def _hold(session: Session, now: dt.datetime, settings: Settings, case: Case, message: Message,
          change: Change, why: str) -> str:
    """Keep the change until the token comes back; mail the token; returns the team's note.

    The same change already waiting (an Autocrypt header repeats the key in every mail)
    gets no second code: the first one still works.
    """
    c = PendingChange.__table__.c
    waiting = session.connection().execute(select(c.requested_at).where(
        c.case_id == case.id, c.confirmed_at.is_(None), c.expires_at > now,
        c.key_fingerprint.is_(None) if change.key is None else c.key_fingerprint == change.key,
        c.credit.is_(None) if change.credit is None else c.credit == change.credit.name,
        c.credit_github.is_(None) if change.credit is None or change.credit.github is None
        else c.credit_github == change.credit.github).limit(1)).scalar()
    if waiting is not None:
        states.record(session, now, case, actor=case.reporter, action="change_unverified",
                      detail=f"asked again ({why}): " + "; ".join(change.items())
                             + "; nothing changed; the code mailed "
                             + lifecycle.local_time(settings, waiting) + " still works")
        return ("Asked again, still not applied (" + why + "): " + "; ".join(change.items())
                + ". The confirmation code mailed earlier still works.")
    token = secrets.token_hex(16)
    session.flush()  # the message's id
    session.add(PendingChange(
        case_id=case.id, token_sha256=hashlib.sha256(token.encode()).hexdigest(),
        key_fingerprint=change.key,
        credit=change.credit.name if change.credit else None,
        credit_github=change.credit.github if change.credit else None,
        message_id=message.id, requested_at=now, expires_at=now + CONFIRM_WITHIN))
    to = lifecycle.answer_address(case)
    limit = settings.autoreply.max_per_sender_per_day
    if automatic_answers_since(session, to, now - dt.timedelta(days=1)) >= limit:
        mailed = (f"no confirmation code was mailed: {to} already had {limit} automatic "
                  "answers in 24 hours")
    else:
        body = render("confirm_change.txt.j2", settings.templates.dir, case_id=case.id,
                      changes=change.items(), token=token,
                      expires=lifecycle.local_time(settings, now + CONFIRM_WITHIN),
                      project=settings.project.name,
                      security_address=settings.project.security_address)
        in_reply_to, references = lifecycle.thread_of(session, case)
        enqueue(session, now, settings, kind="confirm_change", to=to,
                to_name=case.reporter_name or "", case=case, body=body,
                subject=compose.tagged_subject(case.id, "Please confirm a change"),
                in_reply_to=in_reply_to, references=references, auto=True,
                confidential=False)
        mailed = f"a one-time confirmation code was mailed to {to}"
    states.record(session, now, case, actor=case.reporter, action="change_unverified",
                  detail=f"asked ({why}): " + "; ".join(change.items())
                         + f"; nothing changed; {mailed}")
    return ("Not applied, because a From header proves nothing (" + why + "): "
            + "; ".join(change.items()) + f". Nothing changed; {mailed}.")


def tokens_in(text: str) -> list[str]:
    """The codes on ``Confirm: CODE`` lines that are not quoted (linear: line by line)."""
    found: list[str] = []
    for line in (text or "").splitlines():
        stripped = line.lstrip(" \t")
        if stripped[:8].lower() != "confirm:":
            continue
        match = _TOKEN.match(stripped)
        if match and match.group(1).lower() not in found:
            found.append(match.group(1).lower())
            if len(found) >= MAX_TOKENS_PER_MAIL:
                break
    return found


def confirm(session: Session, now: dt.datetime, case: Case, message: Message,
            text: str) -> list[str]:
    """Apply the pending changes whose tokens this mail answers; returns notes for the team."""
    notes: list[str] = []
    who = message.from_addr or "(unknown sender)"
    for token in tokens_in(text):
        digest = hashlib.sha256(token.encode()).hexdigest()
        pending = session.scalar(select(PendingChange).where(
            PendingChange.token_sha256 == digest, PendingChange.case_id == case.id))
        if pending is None or pending.confirmed_at is not None or pending.expires_at <= now:
            why = ("unknown code" if pending is None else "code already used"
                   if pending.confirmed_at is not None else "code expired")
            states.record(session, now, case, actor=who, action="change_not_confirmed",
                          detail=why)
            notes.append(f"A confirmation code in this message was not accepted ({why}).")
            continue
        pending.confirmed_at = now
        change = Change(key=pending.key_fingerprint,
                        credit=completeness.Credit(name=pending.credit,
                                                   github=pending.credit_github)
                        if pending.credit is not None else None)
        apply(session, now, case, change)
        states.record(session, now, case, actor=who, action="change_confirmed",
                      detail="confirmed with the code mailed to "
                             f"{lifecycle.answer_address(case)}: " + "; ".join(change.items()))
        notes.append("Confirmed by the reporter with the code we mailed them: "
                     + "; ".join(change.items()))
    return notes


def apply(session: Session, now: dt.datetime, case: Case, change: Change) -> None:
    if change.credit is not None:
        case.credit, case.credit_github = change.credit.name, change.credit.github
    if change.key:
        case.reporter_key = change.key
        release_held(session, now, case)


def release_held(session: Session, now: dt.datetime, case: Case) -> None:
    """Mail to the reporter held for want of a key now goes out, encrypted to the new one."""
    t = Outbox.__table__.c
    addresses = [a for a in {case.reporter, case.reply_to, case.answer_to} if a]
    session.execute(update(Outbox.__table__).where(
        t.case_id == case.id, t.status == "held", t.must_encrypt.is_(True),
        t.encrypt_to.is_(None), t.to_addr.in_(addresses))
        .values(encrypt_to=case.reporter_key, status="pending", next_attempt_at=now))
