"""Operator-level member operations: add (with a key pinned from a file), remove, suspend,
resume (issue 9 item 7, and "a team removal tells the member why").

Each operation goes through ``workflows.member_states`` (which writes the ``MemberEvent``)
and, in the same transaction, mails the member what happened (``outbox.enqueue`` with
``member=``: the member's own return path, encrypted when a key is pinned, else in plaintext
since these notes carry nothing of any case). Removals and suspensions are also told to the
team. Also here: which ``[[lists]]`` entry a command means, the address check every way in
(command line, imported tables) shares, and the inspection of a key file the operator gives.

A key file is judged as the report side judges offered keys (``seclistd.packets``: one public
key, public packets only, nothing compressed, capped in size; then gpg's own look without
importing, see ``Keyring.import_offered``) and lands in the offered-keys keyring, beside the
keys members and applicants send by mail: the pinned fingerprint on the member is the trust
decision, whichever keyring holds the key. A key with no user ID for the member's address is
pinned with a warning, not refused: a distribution's list alias is often served by a key
made for a person or for the team behind it. Revoked or expired keys are refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from email.headerregistry import Address

from sqlalchemy.orm import Session

from seclistd import packets
from seclistd.config import ListSettings, Settings
from seclistd.list_models import Member
from seclistd.mail import compose
from seclistd.mail.loops import canonical_mailbox
from seclistd.mail.render import render
from seclistd.outbox import enqueue
from seclistd.workflows import member_states
from seclistd.workflows.member_states import MemberStateError

MAX_KEY_FILE_BYTES = 64 * 1024  # as ``mail.secure.MAX_KEY_BYTES``: one key, as sent
MAX_ORGANIZATION = 200
MAX_REASON = 2000


class MemberError(Exception):
    """A refused member operation; the text is one line saying what is wrong and what would
    be right."""


class ListChoiceError(MemberError):
    """No ``[[lists]]`` configured, or an unknown list named: a configuration/usage error."""


# --- which list ---------------------------------------------------------------------------

def pick_list(settings: Settings, name: str | None) -> ListSettings:
    """The list ``name`` names, else the first ``[[lists]]`` block."""
    if not settings.lists:
        raise ListChoiceError(f"no distributors list is configured in {settings.path}: add a "
                              "[[lists]] block with name and address")
    if name is None:
        return settings.lists[0]
    for entry in settings.lists:
        if entry.name == name:
            return entry
    known = ", ".join(entry.name for entry in settings.lists)
    raise ListChoiceError(f"no list {name!r} in {settings.path}, expected one of: {known}")


# --- addresses and organisations ----------------------------------------------------------

def address_problem(text: str) -> str | None:
    """Why ``text`` is not one plain mail address (local@domain.tld), or None."""
    if not text:
        return "no address"
    if len(text) > 254:
        return "longer than 254 characters"
    if any(c.isspace() or not c.isprintable() or c in "<>,;()[]\\\"|" for c in text):
        return "holds characters no plain address holds"
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return "has no local part and domain"
    if "@" in local:
        return "holds more than one @"
    if "." not in domain.strip(".") or domain.startswith(".") or ".." in domain:
        return "its domain is not a full domain name"
    try:
        Address(addr_spec=text)
    except Exception:  # noqa: BLE001 - the header parser raises several kinds
        return "is not a valid addr-spec"
    return None


def clean_organization(text: str) -> str:
    """One line of printable text: no controls, no bidirectional overrides or other
    invisible formatting (the name is published in the exported table)."""
    text = "".join(c if c.isprintable() else " " for c in text or "")
    return compose.clean(text, MAX_ORGANIZATION)


# --- keys ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PinnedKey:
    fingerprint: str
    expires: dt.datetime | None
    uids: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


def single_public_key(data: bytes) -> bytes:
    """The one binary public key in a key file (armored or binary); MemberError otherwise.

    Judged by ``seclistd.packets`` before gpg sees it: at most ``MAX_KEY_FILE_BYTES``, public
    key packets only (no secret key material, no compressed packets), exactly one key.
    """
    if len(data) > MAX_KEY_FILE_BYTES:
        raise MemberError(f"the key file is {len(data)} bytes, over the limit of "
                          f"{MAX_KEY_FILE_BYTES}; expected one exported public key "
                          "(gpg --export --armor FPR)")
    try:
        blocks = packets.armored_blocks(data, 2)
        if len(blocks) > 1:
            raise packets.NotAPublicKey("it holds more than one armored key block")
        if blocks:
            binary = packets.dearmor(blocks[0])
        elif b"-----BEGIN PGP" in data:
            raise packets.NotAPublicKey("it holds no complete armored public key block")
        else:
            binary = data
        keys = packets.split_keys(binary)
    except packets.NotAPublicKey as exc:
        raise MemberError(f"the key file was refused: {exc}; expected one public key "
                          "(gpg --export --armor FPR)") from exc
    if len(keys) != 1:
        raise MemberError(f"the key file holds {len(keys)} keys, expected exactly one: export "
                          "only the member's key (gpg --export --armor FPR)")
    return keys[0]


def import_key(settings: Settings, data: bytes, email: str, now: dt.datetime) -> PinnedKey:
    """Inspect and import the key file ``data`` for the member ``email``; what to pin."""
    from seclistd.crypto import CryptoError, keyring, uid_address

    key = single_public_key(data)
    ring = keyring(settings.gnupg)
    if ring is None:
        raise MemberError("gpg is not installed, so no key can be pinned: apt-get install "
                          "gnupg, or add the member without --key")
    try:
        result = ring.import_offered([key])
    except CryptoError as exc:
        raise MemberError(f"the key could not be imported: {exc}") from exc
    if not result.fingerprints:
        why = "; ".join(result.refused) or "gpg would not import it"
        raise MemberError(f"the key file was refused: {why}")
    fingerprint = result.fingerprints[0]
    info = ring.key(fingerprint)
    if info is None:
        raise MemberError(f"key {fingerprint} was imported but gpg cannot list it; check "
                          f"the GnuPG home {settings.gnupg.home}")
    if info.revoked:
        raise MemberError(f"key {fingerprint} is revoked; ask the member for its current key")
    if info.expires is not None and info.expires <= now:
        raise MemberError(f"key {fingerprint} expired on {info.expires.date().isoformat()}; "
                          "ask the member for a current key (or to extend this one)")
    warnings = []
    addresses = {uid_address(uid) for uid in info.uids}
    if email not in addresses:
        shown = ", ".join(sorted(addresses)[:5]) or "none"
        warnings.append(f"key {fingerprint} has no user ID for {email} (its addresses: "
                        f"{shown}); pinned anyway, as a list alias often uses another key")
    return PinnedKey(fingerprint=fingerprint, expires=info.expires, uids=info.uids,
                     warnings=tuple(warnings))


# --- the operations -----------------------------------------------------------------------

def find(session: Session, list_name: str, email: str) -> Member:
    member = member_states.find_member(session, list_name, canonical_mailbox(email))
    if member is None:
        raise MemberError(f"{email} is not a member of {list_name}; `seclistd members list` "
                          "shows the members")
    return member


def own_address(settings: Settings, email: str) -> str | None:
    """The project's or a list's own address that ``email`` (canonical) is, sub-addresses
    (``security+bounce-…@``) included, or None. Such a member would mail embargoed notices
    to ourselves (a loop) or to the list's own address."""
    local, _, domain = email.rpartition("@")
    base = f"{local.split('+', 1)[0]}@{domain}"
    own = {settings.project.security_address.lower(),
           *(other.address.lower() for other in settings.lists)}
    return next((a for a in sorted(own) if a in (email, base)), None)


def add(session: Session, now: dt.datetime, settings: Settings, *, lst: ListSettings,
        email: str, organization: str, actor: str, key: PinnedKey | None = None,
        name: str = "", tell: bool = True, detail: str = "") -> Member:
    """Add ``email`` to ``lst`` (or make a removed member active again); with ``tell``, mail
    the member that it was added and what that means."""
    email = canonical_mailbox(email)
    problem = address_problem(email)
    if problem:
        raise MemberError(f"{email!r} is not a mail address ({problem}), expected "
                          "local@domain, e.g. security@distro.example")
    own = own_address(settings, email)
    if own is not None:
        raise MemberError(f"{email} is our own address ({own}), not a member's: mail to it "
                          "would come back to us; give the member's own address")
    organization = clean_organization(organization)
    if not organization:
        raise MemberError("the organization is empty; give the distribution or company the "
                          "address belongs to, e.g. --organization 'Example Linux'")
    notes = [detail] if detail else []
    if key is not None:
        expiry = key.expires.date().isoformat() if key.expires else "never"
        notes.append(f"key {key.fingerprint} pinned (expires {expiry})")
        notes += key.warnings
    else:
        notes.append("no key: embargoed mail is held until one is pinned")
    try:
        member = member_states.add_member(
            session, list_name=lst.name, email=email, organization=organization, actor=actor,
            now=now, name=compose.clean(name, 200),
            fingerprint=key.fingerprint if key else None,
            key_expires=key.expires if key else None, detail="; ".join(notes))
    except MemberStateError as exc:
        raise MemberError(f"{exc}; `seclistd members show {email}` shows it") from exc
    if tell:
        body = render("member_added.txt.j2", settings.templates.dir,
                      project=settings.project.name, list_name=lst.name,
                      list_address=lst.address, email=member.email,
                      organization=member.organization, fingerprint=member.fingerprint,
                      security_address=settings.project.security_address)
        _tell_member(session, now, settings, lst, member, "member_added",
                     "you are on the list", body)
    return member


def remove(session: Session, now: dt.datetime, settings: Settings, *, lst: ListSettings,
           member: Member, actor: str, reason: str = "") -> Member:
    """Remove ``member`` (active or suspended); the member is told why, the team is told."""
    reason = _reason(reason)
    _change(session, now, member, "remove", actor, reason)
    body = render("member_removed.txt.j2", settings.templates.dir,
                  project=settings.project.name, list_name=lst.name, email=member.email,
                  reason=reason, security_address=settings.project.security_address)
    _tell_member(session, now, settings, lst, member, "member_removed",
                 "you were removed from the list", body)
    _tell_team(session, now, settings, lst, member, actor, "removed", reason)
    return member


def suspend(session: Session, now: dt.datetime, settings: Settings, *, lst: ListSettings,
            member: Member, actor: str, reason: str, remedy: str = "") -> Member:
    """Suspend ``member``: no embargoed mail until it is resumed. ``remedy`` says what the
    member can do about it (a general line when empty). The member and the team are told."""
    reason = _reason(reason)
    if not reason:
        raise MemberError("a suspension needs a reason the member will read, e.g. --reason "
                          "'mail to this address bounces'")
    _change(session, now, member, "suspend", actor, reason)
    body = render("member_suspended.txt.j2", settings.templates.dir,
                  project=settings.project.name, list_name=lst.name, email=member.email,
                  reason=reason, remedy=remedy.strip(),
                  security_address=settings.project.security_address)
    _tell_member(session, now, settings, lst, member, "member_suspended",
                 "your membership is suspended", body)
    _tell_team(session, now, settings, lst, member, actor, "suspended", reason)
    return member


def resume(session: Session, now: dt.datetime, settings: Settings, *, lst: ListSettings,
           member: Member, actor: str, reason: str = "") -> Member:
    """Make a suspended ``member`` active again and tell it so."""
    reason = _reason(reason)
    _change(session, now, member, "resume", actor, reason)
    body = render("member_resumed.txt.j2", settings.templates.dir,
                  project=settings.project.name, list_name=lst.name, email=member.email,
                  fingerprint=member.fingerprint,
                  security_address=settings.project.security_address)
    _tell_member(session, now, settings, lst, member, "member_resumed",
                 "your membership is active again", body)
    return member


def _reason(reason: str) -> str:
    return (reason or "").replace("\r\n", "\n").strip()[:MAX_REASON]


def _change(session: Session, now: dt.datetime, member: Member, action: str, actor: str,
            reason: str) -> None:
    try:
        member_states.change_state(session, member, action, actor=actor, now=now,
                                   reason=reason)
    except MemberStateError as exc:
        raise MemberError(str(exc)) from exc


def _tell_member(session: Session, now: dt.datetime, settings: Settings, lst: ListSettings,
                 member: Member, kind: str, subject: str, body: str) -> None:
    # Content-free notes: encrypted to the pinned key when there is one, else plaintext.
    enqueue(session, now, settings, kind=kind, to=member.email, to_name=member.name,
            subject=compose.clean(f"{lst.name}: {subject}", 200), body=body,
            member=member, confidential=False)


def _tell_team(session: Session, now: dt.datetime, settings: Settings, lst: ListSettings,
               member: Member, actor: str, what: str, reason: str) -> None:
    body = render("team_member_changed.txt.j2", settings.templates.dir,
                  list_name=lst.name, email=member.email, organization=member.organization,
                  what=what, actor=actor, reason=reason, state=member.state)
    subject = compose.clean(f"{lst.name}: member {member.email} {what}", 200)
    for person in settings.team.members:
        enqueue(session, now, settings, kind=f"team_member_{what}", to=person.email,
                to_name=person.name, subject=subject, body=body)

