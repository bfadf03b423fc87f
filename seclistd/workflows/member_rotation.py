"""A list member's new key: the request (a mail from the member that offers it) and the proof
(the token mailed encrypted to the new key, answered from the member's address).

No keyword: a mail from a current member's address that offers a key other than the one
pinned is a rotation request (a mail that offers only the pinned key, as Autocrypt does on
every mail, is no request and goes on as ordinary mail). It changes something only when:

- it is signed by the key pinned on that member, with every rule of a member's command
  (``workflows.member_commands.signer``: one good signature, by the pinned key of the From
  address, at most 30 days old and not from the future, spent once), and the new key is
  inside the signed entity (an Autocrypt header, or a part beside the signature, is not
  covered by it); the key is judged like every offered key (``seclistd.packets`` public-only
  rules, size caps) and must be neither revoked nor expired;
- or the member has no key pinned at all (never sent one; its embargoed mail is held): then
  there is nothing to sign with, and the token answered from the address on record is the
  proof, as for an applicant.

Then the new key waits in ``Member.pending_fingerprint`` (on every membership of that
address under the signing key), a one-time token goes encrypted to the new key (only its
SHA-256 is kept, in ``pending_token_sha256``), and the old key stays in use. A reply from
the member's address with the ``Token:`` line pins the new key (fingerprint, expiry),
clears the pending fields, writes a ``MemberEvent``, releases the mail held for want of a key
(``member_mail.release_held``), and resumes a member the key check suspended (reason
starting with ``member_keys.REASON``); the member and the team are told.

Anything else (unsigned, signed by another key, a replayed or stale signature) changes
nothing: a ``key_unverified`` event records it on the member and the member is told how to
rotate properly, within the per-sender cap on automatic answers. A token from another
address, or one that is not the member's own, proves nothing and is recorded as refused.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring
from seclistd.list_models import Member
from seclistd.mail.classify import MEMBER_TOKEN_KIND
from seclistd.mail.parse import ParsedMail
from seclistd.mail.render import render
from seclistd.mail.secure import Unwrapped
from seclistd.models import Message
from seclistd.outbox import automatic_answers_since, enqueue
from seclistd.workflows import member_keys, member_mail, member_notices, member_states, tokens
from seclistd.workflows.commands import Refused, check_time, signed_content, spend
from seclistd.workflows.member_commands import current, sender_of, signer


def is_signed(unwrapped: Unwrapped) -> bool:
    return unwrapped.signed is not None or bool(
        unwrapped.decrypted is not None and unwrapped.inner_verification is not None
        and unwrapped.inner_verification.signatures)


def on_key_mail(session: Session, now: dt.datetime, settings: Settings,
                keyring: Keyring | None, message: Message, mail: ParsedMail,
                unwrapped: Unwrapped, offered: list[str], offered_signed: list[str]) -> bool:
    """Handle a member's mail that offers a key. False: it offers no key other than the
    pinned one(s), so it is no rotation (the caller treats it as ordinary mail)."""
    sender = sender_of(mail)
    named = current(session, email=sender) if sender else []
    pinned = {m.fingerprint for m in named}
    new = [f for f in offered if f not in pinned]
    if not named or not new:
        return False
    spent: tuple[str, str] | None = None
    try:
        keyless = [m for m in named if m.fingerprint is None]
        if keyless and not is_signed(unwrapped):
            targets, candidates = keyless, new
        elif not is_signed(unwrapped):
            raise Refused("the mail is not signed with your current key")
        else:
            signed = signed_content(unwrapped, keyring)
            targets, sig_id = signer(session, mail, signed)
            spent = (sig_id, signed.signature.primary_fingerprint)
            check_time(signed.signature, now)
            candidates = [f for f in offered_signed if f not in pinned]
            if not candidates:
                raise Refused("the new key is not inside the signed part of the mail (an "
                              "Autocrypt header or a part beside the signature is not covered "
                              "by it)")
        fingerprint, expires = _usable(keyring, candidates, now)
    except Refused as refusal:
        _unverified(session, now, settings, message, mail, named, new[0], str(refusal))
        if spent is not None:
            spend(session, now, *spent, None, message)
        return True
    if spent is not None:
        spend(session, now, *spent, None, message)
        message.signed_by = spent[1]
    _request(session, now, settings, targets, fingerprint, expires, sender)
    return True


def _usable(keyring: Keyring | None, candidates: list[str],
            now: dt.datetime) -> tuple[str, dt.datetime | None]:
    if len(candidates) != 1:
        raise Refused(f"the mail offers {len(candidates)} new keys; send exactly one")
    fingerprint = candidates[0]
    info = keyring.key(fingerprint) if keyring is not None else None
    if info is None:
        raise Refused(f"the new key {fingerprint} could not be read")
    if info.revoked:
        raise Refused(f"the new key {fingerprint} is revoked")
    if info.expires is not None and info.expires <= now:
        raise Refused(f"the new key {fingerprint} has expired")
    return fingerprint, info.expires


def _request(session: Session, now: dt.datetime, settings: Settings, targets: list[Member],
             fingerprint: str, expires: dt.datetime | None, sender: str) -> None:
    """Keep the new key pending on ``targets`` and mail its token encrypted to it."""
    token, hashed = tokens.new_token()
    for member in targets:
        earlier = member.pending_fingerprint
        member.pending_fingerprint, member.pending_token_sha256 = fingerprint, hashed
        member_states.record(
            session, member, actor=sender, action="key_rotation_requested", now=now,
            detail=f"new key {fingerprint} offered (expires "
                   f"{expires.isoformat() if expires else 'never'}); "
                   f"{member.fingerprint or 'no key'} stays pinned until the token mailed "
                   "encrypted to the new key comes back"
                   + (f"; it takes the place of the earlier offer {earlier}" if earlier else ""))
    first = targets[0]
    lists = ", ".join(m.list_name for m in targets)
    body = render("member_key_token.txt.j2", settings.templates.dir, email=first.email,
                  list_name=lists, fingerprint=fingerprint, token=token,
                  project=settings.project.name,
                  security_address=settings.project.security_address)
    row = enqueue(session, now, settings, kind=MEMBER_TOKEN_KIND, to=first.email,
                  to_name=first.name, subject=f"{lists}: confirm your new key", body=body,
                  auto=True, auto_submitted="auto-replied", encrypt_to=fingerprint)
    session.flush()
    row.member_id = first.id  # threads the answer to the member (classify.member_by_thread)


def _unverified(session: Session, now: dt.datetime, settings: Settings, message: Message,
                mail: ParsedMail, named: list[Member], fingerprint: str, reason: str) -> None:
    sender = sender_of(mail)
    for member in named:
        member_states.record(session, member, actor=sender, action="key_unverified", now=now,
                             detail=f"key {fingerprint} offered, nothing changed: {reason} "
                                    f"(message {message.message_id or message.id})")
    limit = settings.autoreply.max_per_sender_per_day
    if automatic_answers_since(session, sender, now - dt.timedelta(days=1)) >= limit:
        return
    first = named[0]
    body = render("member_key_unverified.txt.j2", settings.templates.dir, email=first.email,
                  list_name=", ".join(m.list_name for m in named), reason=reason,
                  fingerprint=first.fingerprint or "(none)", project=settings.project.name,
                  security_address=settings.project.security_address)
    enqueue(session, now, settings, kind="member_key_unverified", to=first.email,
            to_name=first.name, subject=f"{first.list_name}: your key was not changed",
            body=body, member=first, confidential=False, auto=True,
            auto_submitted="auto-replied", in_reply_to=mail.message_id)


def on_token(session: Session, now: dt.datetime, settings: Settings, keyring: Keyring | None,
             message: Message, mail: ParsedMail, member_id: int) -> None:
    """A mail answering a rotation token: from the member's address with its token, the new
    key is pinned; anything else is recorded on the member and changes nothing."""
    target = session.get(Member, member_id)
    assert target is not None
    sender = sender_of(mail)
    offered = tokens.offered(mail.text or "")
    if not offered:
        member_states.record(session, target, actor=sender or "(unknown sender)",
                             action="message", now=now,
                             detail="a reply to the key token mail with no Token line: "
                                    "nothing changed")
        return
    if sender != target.email:
        member_states.record(session, target, actor=sender or "(unknown sender)",
                             action="token_refused", now=now,
                             detail=f"a token came from {sender or 'an unreadable From'}, not "
                                    f"from the member's address {target.email}: it proves "
                                    "nothing")
        return
    pending = [m for m in current(session, email=sender) if m.pending_token_sha256]
    matched = [m for m in pending
               if any(tokens.matches(t, m.pending_token_sha256) for t in offered)]
    if not matched:
        for member in pending or [target]:
            member_states.record(session, member, actor=sender, action="token_refused",
                                 now=now, detail="unknown or used token: nothing changed")
        return
    unconfirmed = [m for m in matched if m.state == member_states.SUSPENDED
                   and (m.state_reason or "").startswith(ADDRESS_REASON)]
    for member in unconfirmed:
        _confirmed(session, now, member)
    rotating = [m for m in matched if m not in unconfirmed]
    if not rotating:
        return
    fingerprint = rotating[0].pending_fingerprint
    assert fingerprint is not None
    info = keyring.key(fingerprint) if keyring is not None else None
    for member in rotating:
        _pin(session, now, settings, member, fingerprint, info.expires if info else None)


# The start of the suspension reason of a member whose address was named by an applicant
# and has not confirmed yet (``ask_address_confirmation``).
ADDRESS_REASON = "the address has not confirmed that it receives the list's mail"


def ask_address_confirmation(session: Session, now: dt.datetime, settings: Settings,
                             member: Member, *, applicant: str, request_id: str) -> None:
    """A member created at an address the applicant named (a team alias) but never proved:
    it stays suspended (nothing embargoed goes there) until the token mailed to the address,
    encrypted to the member's key when it has one, comes back from it."""
    member_states.change_state(
        session, member, "suspend", actor=member_notices.SYSTEM, now=now,
        reason=f"{ADDRESS_REASON} (named by {applicant} in {request_id}); a token was "
               "mailed to it")
    token, hashed = tokens.new_token()
    member.pending_fingerprint, member.pending_token_sha256 = member.fingerprint, hashed
    body = render("member_confirm_address.txt.j2", settings.templates.dir, email=member.email,
                  applicant=applicant, request_id=request_id, list_name=member.list_name,
                  token=token, project=settings.project.name,
                  security_address=settings.project.security_address)
    row = enqueue(session, now, settings, kind=MEMBER_TOKEN_KIND, to=member.email,
                  to_name=member.name, subject=f"{member.list_name}: confirm this address",
                  body=body, auto_submitted="auto-generated", encrypt_to=member.fingerprint,
                  confidential=False)
    session.flush()
    row.member_id = member.id  # threads the answer to the member (classify.member_by_thread)


def _confirmed(session: Session, now: dt.datetime, member: Member) -> None:
    """The address a member was created at confirmed it receives the list's mail."""
    member.pending_fingerprint = member.pending_token_sha256 = None
    member_states.record(session, member, actor=member.email, action="address_confirmed",
                         now=now, detail="the token mailed to the address came back from it")
    if member.state == member_states.SUSPENDED and \
            (member.state_reason or "").startswith(ADDRESS_REASON):
        member_states.change_state(session, member, "resume", actor=member.email, now=now,
                                   reason="the address confirmed it receives the list's mail")


def _pin(session: Session, now: dt.datetime, settings: Settings, member: Member,
         fingerprint: str, expires: dt.datetime | None) -> None:
    old = member.fingerprint
    member.fingerprint, member.key_expires, member.key_warned_at = fingerprint, expires, None
    member.pending_fingerprint = member.pending_token_sha256 = None
    released = member_mail.release_held(session, now, member)
    member_states.record(session, member, actor=member.email, action="key_rotated", now=now,
                         detail=f"the token mailed encrypted to {fingerprint} came back from "
                                f"{member.email}: it replaces {old or 'no key'}; "
                                f"{released} held mail(s) released")
    if member.state == member_states.SUSPENDED and \
            (member.state_reason or "").startswith(member_keys.REASON):
        member_states.change_state(session, member, "resume", actor=member.email, now=now,
                                   reason=f"new key {fingerprint} pinned by the member")
    member_notices.tell_member(session, now, settings, member, kind="member_key_rotated",
                               subject=f"{member.list_name}: your new key is in use",
                               template="member_key_rotated.txt.j2", email=member.email,
                               list_name=member.list_name, fingerprint=fingerprint)
    sent = member_notices.tell_team(
        session, now, settings, member, kind="team_member_key",
        subject=f"{member.list_name}: member {member.email} changed its key",
        template="team_member_key.txt.j2", what="rotated", fingerprint=fingerprint,
        expires=member_notices.when(settings, expires) if expires else "never",
        reason=f"it replaces {old or 'no key'}")
    member_states.record(session, member, actor=member_notices.SYSTEM, action="key_notice",
                         now=now, detail=f"member told; {member_notices.told(sent)}")
