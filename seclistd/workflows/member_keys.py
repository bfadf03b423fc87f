"""The daily check of members' keys: warn before expiry, suspend on expiry or revocation.

``sweep`` reads each current member's pinned key from the keyring (``Keyring.validity``:
the expiry of what can still be encrypted to, and what is revoked, judged against the
sweep's own ``now``, not gpg's clock) and, in that member's own savepoint:

- records a changed expiry (the member extended its key and sent it again) in
  ``key_expires``, which re-arms the warning;
- a key that expires within ``membership.key_expiry_warning_days``: the member and the team
  are warned once per expiry date (``key_warned_at``);
- an expired or revoked key, or one with nothing left to encrypt to: an active member is
  suspended (no embargoed mail), with a reason that says which, and the member (in
  plaintext: its key is the problem) and the team are told;
- a member this check suspended whose key is usable again (extended and re-imported) is
  resumed, and the member and the team are told. A suspension for any other reason (bounces,
  the team's own) is left to the team.

A member whose key is not in the keyring at all is only logged: that member gets no
encrypted mail anyway (the relay holds it), and the held-notice path tells the member.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import Keyring, KeyValidity, keyring
from seclistd.list_models import Member
from seclistd.workflows import member_states
from seclistd.workflows.member_notices import (
    SYSTEM,
    each_member,
    tell_member,
    tell_team,
    told,
    when,
)

log = logging.getLogger(__name__)

REASON = "the member's key"  # the start of every suspension reason written here


def problem(validity: KeyValidity, now: dt.datetime, settings: Settings) -> str | None:
    """Why mail can no longer be encrypted to this key (the end of a sentence), or None."""
    if validity.revoked == "the key":
        return "is revoked"
    if validity.revoked:
        return f"has {validity.revoked} revoked"
    if not validity.encryption:
        return "has no key that can encrypt"
    if validity.expires is not None and validity.expires <= now:
        return f"expired on {when(settings, validity.expires)}"
    return None


def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    """Check every current member's key once; returns the number of members checked."""
    members = session.scalars(
        select(Member).where(Member.state != member_states.REMOVED,
                             Member.fingerprint.is_not(None))
        .order_by(Member.id).with_for_update(skip_locked=True)).all()
    if not members:
        return 0  # no gpg run at all
    ring = keyring(settings.gnupg)
    if ring is None:
        log.warning("gpg is not installed: members' keys cannot be checked")
        return 0
    done = each_member(session, now, settings, members,
                       lambda member: check(session, now, settings, ring, member), sweep="key")
    if members:
        log.info("key check: %d members", len(members))
    return done


def check(session: Session, now: dt.datetime, settings: Settings, ring: Keyring,
          member: Member) -> None:
    """The key check of one member (see the module's docstring)."""
    assert member.fingerprint is not None
    validity = ring.validity(member.fingerprint)
    if validity is None:
        log.warning("member %s: key %s is not in the keyring", member.id, member.fingerprint)
        return
    if validity.expires != member.key_expires:
        if member.key_expires is not None or member.key_warned_at is not None:
            old = when(settings, member.key_expires) if member.key_expires else "never"
            new = when(settings, validity.expires) if validity.expires else "never"
            member_states.record(session, member, actor=SYSTEM, action="key_expiry_changed",
                                 now=now, detail=f"key {member.fingerprint} expires: {old} "
                                                 f"before, {new} now")
        member.key_expires = validity.expires
        member.key_warned_at = None
    wrong = problem(validity, now, settings)
    if wrong is not None:
        if member.state == member_states.ACTIVE:
            _suspend(session, now, settings, member, wrong)
        return
    if member.state == member_states.SUSPENDED and \
            (member.state_reason or "").startswith(REASON):
        _resume(session, now, settings, member)
    expires = validity.expires
    if expires is not None and member.key_warned_at is None and \
            expires - now <= dt.timedelta(days=settings.membership.key_expiry_warning_days):
        _warn(session, now, settings, member, expires)


def _warn(session: Session, now: dt.datetime, settings: Settings, member: Member,
          expires: dt.datetime) -> None:
    member.key_warned_at = now
    days = max(0, (expires - now).days)
    tell_member(session, now, settings, member, kind="member_key_expiring",
                subject=f"Your key for {member.list_name} expires on "
                        f"{expires.astimezone(settings.project.tz):%Y-%m-%d}",
                template="member_key_expiring.txt.j2", fingerprint=member.fingerprint,
                expires=when(settings, expires), days=days)
    sent = tell_team(session, now, settings, member, kind="member_key_expiring",
                     subject=f"Member key expires in {days} day(s): {member.email}",
                     template="team_member_key.txt.j2", what="expiring",
                     fingerprint=member.fingerprint, expires=when(settings, expires),
                     reason="")
    member_states.record(session, member, actor=SYSTEM, action="key_expiry_warning", now=now,
                         detail=f"key {member.fingerprint} expires {when(settings, expires)}"
                                f" (in {days} day(s)); member told; {told(sent)}")


def _suspend(session: Session, now: dt.datetime, settings: Settings, member: Member,
             wrong: str) -> None:
    reason = f"{REASON} {member.fingerprint} {wrong}"
    member_states.change_state(session, member, "suspend", actor=SYSTEM, now=now,
                               reason=reason)
    expires = when(settings, member.key_expires) if member.key_expires else "never"
    tell_member(session, now, settings, member, kind="member_suspended",
                subject=f"Your {member.list_name} membership is suspended: your key {wrong}",
                template="member_key_suspended.txt.j2", fingerprint=member.fingerprint,
                reason=wrong)
    sent = tell_team(session, now, settings, member, kind="member_suspended",
                     subject=f"Member suspended (key): {member.email}",
                     template="team_member_key.txt.j2", what="suspended",
                     fingerprint=member.fingerprint, expires=expires, reason=wrong)
    member_states.record(session, member, actor=SYSTEM, action="key_notice", now=now,
                         detail=f"member told; {told(sent)}")


def _resume(session: Session, now: dt.datetime, settings: Settings, member: Member) -> None:
    expires = when(settings, member.key_expires) if member.key_expires else "never"
    member_states.change_state(session, member, "resume", actor=SYSTEM, now=now,
                               reason=f"key {member.fingerprint} is usable again "
                                      f"(expires {expires})")
    tell_member(session, now, settings, member, kind="member_resumed",
                subject=f"Your {member.list_name} membership is active again",
                template="member_key_resumed.txt.j2", fingerprint=member.fingerprint,
                expires=expires)
    sent = tell_team(session, now, settings, member, kind="member_resumed",
                     subject=f"Member resumed (key usable again): {member.email}",
                     template="team_member_key.txt.j2", what="resumed",
                     fingerprint=member.fingerprint, expires=expires, reason="")
    member_states.record(session, member, actor=SYSTEM, action="key_notice", now=now,
                         detail=f"member told; {told(sent)}")
