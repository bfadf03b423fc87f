"""The pipeline for one stored message: limits, parse, classify, and hand to a workflow.

``process`` runs in the transaction that stored the message, so the message row, the case
it opens or joins, the audit events and the outgoing mail commit together. A message that
cannot be processed is marked quarantined with its reason, in that same transaction.

Bounded work. A message's cost is kept linear in its size by construction: limits checked
on the raw bytes before parsing, a parser that stops at ``limits.max_mime_parts`` entities,
patterns over message text that do bounded work per character (or read a capped prefix),
decryption capped by ``limits.max_decrypted_bytes``. On top of that, each message has a
time budget, ``limits.processing_seconds``, measured on the monotonic clock from the moment
``store.accept`` takes it. The budget is cooperative: it is checked between stages (after
parsing, after the OpenPGP analysis and decryption, after the offered keys, after the
classification), never by interrupting one. Interrupting is not available where this runs:
signals reach only the main thread, and the intakes process in worker threads (listener,
IMAP); killing a thread is not possible in Python. A stage that overruns is therefore
bounded by its own linear cost, and gpg runs in a subprocess, outside the GIL, so a slow
gpg does not starve the other threads (the systemd watchdog's included). Once the budget is
spent, no further stage starts: the message is quarantined with the reason, before any
case or mail is made, and the intake treats it like any other quarantined message (the
listener answers 250, IMAP moves it to the quarantine folder), so it is never retried.
``quarantine release`` (the operator's call) lifts the limits and the budget.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import keyring
from seclistd.list_models import JoinRequest
from seclistd.mail import compose, secure
from seclistd.mail.classify import Context, Route, classify
from seclistd.mail.parse import ParsedMail, Unprocessable, check_limits, parse
from seclistd.models import Case, Message
from seclistd.workflows import (
    bounces,
    commands,
    discussion,
    leaks,
    member_commands,
    member_rotation,
    report,
    reporter_changes,
    request_commands,
    requests,
    states,
)

log = logging.getLogger(__name__)
_KEY_MARKERS = (b"PGP PUBLIC KEY", b"PGP PRIVATE KEY", b"pgp-keys", b"utocrypt")


class OverBudget(Unprocessable):
    """The message's processing time budget is spent; the text is the quarantine reason."""


@dataclass
class Budget:
    """The time one message may take (None: no limit), from the monotonic clock."""

    seconds: float | None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        return cls(settings.limits.processing_seconds)

    def check(self, next_stage: str) -> None:
        """Raise OverBudget when the budget is spent, so that ``next_stage`` never starts."""
        if self.seconds is None:
            return
        spent = time.monotonic() - self.started
        if spent >= self.seconds:
            raise OverBudget(f"processing took longer than the {self.seconds:g} s budget "
                             f"(limits.processing_seconds): {spent:.1f} s spent before "
                             f"{next_stage}")


def quarantine(message: Message, reason: str, label: str | None = None) -> None:
    message.status = "quarantined"
    message.quarantine_reason = reason[:2000]
    message.route = label or "quarantine"


def process(session: Session, now: dt.datetime, settings: Settings, message: Message, *,
            enforce_limits: bool = True, as_report: bool = False, sender: str | None = None,
            budget: Budget | None = None) -> None:
    """Limits, parse, classify, workflow. ``as_report`` (the operator's call, from
    ``quarantine release --as-report``) skips classification and opens a case; ``sender``
    then replaces a From that could not be read (and the return path). ``budget`` defaults to
    the configured one (none at all when the limits are not enforced)."""
    if budget is None:
        budget = Budget.of(settings) if enforce_limits else Budget(None)
    raw = message.raw
    max_parts = settings.limits.max_mime_parts if enforce_limits else None
    try:
        if enforce_limits:
            check_limits(raw, settings.limits)
        mail = parse(raw, max_parts)
        budget.check("the OpenPGP analysis")
        unwrapped = secure.unwrap(raw, mail.content_type, lambda: keyring(settings.gnupg),
                                  settings.limits)
        if unwrapped.too_big:
            quarantine(message, unwrapped.problem or "decrypted content too large")
            return
        if unwrapped.encrypted:
            message.encrypted = True
            budget.check("parsing the decrypted content")
            reveal(mail, unwrapped, max_parts)
        budget.check("classifying it")
        if sender:
            mail.from_addr, mail.from_name, mail.return_path = sender, "", None
        message.from_addr = mail.from_addr
        message.to_addrs = ", ".join(mail.to_addrs)[:5000]
        message.subject = compose.clean(mail.subject, 998)
        # A NUL (a decrypted report may hold one) would be refused by PostgreSQL and is not
        # allowed in outgoing mail: the text keeps U+FFFD in its place, the raw bytes keep it.
        mail.text = mail.text.replace("\x00", "\ufffd")
        message.text = mail.text
        if as_report and not mail.from_addr:
            quarantine(message, f"cannot open a case: {mail.from_problem}; give the reporter's "
                       "address with --from ADDRESS", "bad_sender")
            return
        route = Route("new_report", "new_report") if as_report else classify(Context(
            session=session, mail=mail, raw=raw, own_addresses=report.own_addresses(settings),
            case_prefix=settings.project.case_prefix, max_received=settings.limits.max_received,
            team=frozenset(m.email for m in settings.team.members),
            security_address=settings.project.security_address,
            envelope_to=envelope_recipients(message), lists=settings.lists,
            decrypted=unwrapped.decrypted or b""))
        budget.check(f"handling it as {route.label}")
    except Unprocessable as exc:
        quarantine(message, str(exc))
        return
    dispatch(session, now, settings, message, mail, unwrapped, route)


def envelope_recipients(message: Message) -> tuple[str, ...]:
    """The envelope recipients the intake recorded (the listener's RCPT TO), if any."""
    return tuple(a.strip() for a in (message.envelope_to or "").split(",") if a.strip())[:50]


def dispatch(session: Session, now: dt.datetime, settings: Settings, message: Message,
             mail: ParsedMail, unwrapped: secure.Unwrapped, route: Route) -> None:
    """Hand the classified message to its workflow (or quarantine it, as its route says).
    The keys it offers are imported only for a report, a reply, a join request or a member's
    key rotation (bounded: import_offered)."""
    message.route = route.label
    if route.kind == "quarantine":
        quarantine(message, route.reason or route.label, route.label)
        return
    message.status = "processed"
    if route.kind == "member_bounce":
        assert route.member_id is not None
        bounces.handle(session, now, settings, message, mail, route.member_id)
        return
    if route.kind == "command" and route.label == "member_command":
        problem = member_commands.handle(session, now, settings, keyring(settings.gnupg),
                                         message, mail, unwrapped)
        if problem is not None:
            quarantine(message, problem, route.label)
        return
    if route.kind == "command" and route.label == "leak_command":
        problem = leaks.on_command(session, now, settings, keyring(settings.gnupg), message,
                                   mail, unwrapped)
        if problem is not None:
            quarantine(message, problem, route.label)
        return
    if route.kind == "notice_reply":
        assert route.case_id is not None and route.copy_id is not None
        discussion.on_reply(session, now, settings, keyring(settings.gnupg), message, mail,
                            unwrapped, discussion.Located(route.case_id, route.copy_id,
                                                          route.own_copy_id))
        return
    if route.kind == "leak":
        assert route.case_id is not None
        leaks.on_report(session, now, settings, message, mail, route.case_id, route.copy_id)
        return
    if route.kind == "member_token":
        assert route.member_id is not None
        member_rotation.on_token(session, now, settings, keyring(settings.gnupg), message,
                                 mail, route.member_id)
        return
    if route.kind == "command" and route.label == "join_command":
        request_id = request_commands.handle(session, now, settings, keyring(settings.gnupg),
                                             message, mail, unwrapped, route.request_id)
        if request_id is None:
            quarantine(message, "command refused and no join request to record it on",
                       route.label)
        return
    if route.kind == "command":
        case_id = commands.handle(session, now, settings, keyring(settings.gnupg), message, mail,
                                  unwrapped, route.case_id)
        if case_id is None:
            quarantine(message, "command refused and no case to record it on", route.label)
        return
    if route.kind in ("join_request", "request_reply"):
        join_request(session, now, settings, message, mail, unwrapped, route)
        return
    offered, refused = import_offered(settings, message.raw, unwrapped)
    if route.kind == "member_key":
        if member_rotation.on_key_mail(
                session, now, settings, keyring(settings.gnupg), message, mail, unwrapped,
                offered, signed_offered(settings, unwrapped) if offered else []):
            return
        # Only the key already pinned: no rotation, ordinary mail from a member.
        route = Route("new_report", "new_report")
        message.route = route.label
    if route.kind == "reply":
        case = session.get(Case, route.case_id)
        assert case is not None
        evidence = reporter_changes.Evidence(
            unwrapped=unwrapped, keyring=lambda: keyring(settings.gnupg), offered=offered,
            offered_signed=signed_offered(settings, unwrapped) if offered else [])
        report.attach_reply(session, now, settings, case, message, mail, route.label, evidence)
    else:
        case = report.open_case(session, now, settings, message, mail, offered)
    for reason in refused:
        states.record(session, now, case, actor=report.SYSTEM, action="key_refused",
                      detail=reason)


def join_request(session: Session, now: dt.datetime, settings: Settings, message: Message,
                 mail: ParsedMail, unwrapped: secure.Unwrapped, route: Route) -> None:
    """A new join request, or a mail on one; the key it offers is pinned (the applicant's
    own mail only: ``requests.on_mail`` decides)."""
    offered, refused = ([], []) if route.label in ("bounce", "auto_reply") else \
        import_offered(settings, message.raw, unwrapped)
    key = report.pick_key(settings, offered, mail.from_addr)
    if route.kind == "join_request":
        lst = requests.list_settings(settings, route.list_name or "")
        assert lst is not None
        existing = requests.open_request_of(session, lst.name, mail.from_addr)
        if existing is not None:  # one open request per applicant and list
            req = existing
            requests.on_mail(session, now, settings, req, message, mail, "reply", key,
                             again=True)
        else:
            req = requests.open_request(session, now, settings, message, mail, lst, key)
    else:
        found = session.get(JoinRequest, route.request_id)
        assert found is not None
        req = found
        requests.on_mail(session, now, settings, req, message, mail, route.label, key)
    for reason in refused:
        requests.record(session, now, req, actor=requests.SYSTEM, action="key_refused",
                        detail=reason)


def reveal(mail: ParsedMail, unwrapped: secure.Unwrapped, max_parts: int | None = None) -> None:
    """Put the decrypted text (or why there is none) in place of the ciphertext."""
    if unwrapped.decrypted is None:
        mail.text = (f"[This message came encrypted; {unwrapped.problem}. It is kept as "
                     "received. The project key to encrypt to is `seclistd keys export`.]")
        return
    if unwrapped.inline:
        mail.text = unwrapped.decrypted.decode("utf-8", "replace")
        return
    inner = parse(unwrapped.decrypted, max_parts)
    mail.text, mail.attachments = inner.text, inner.attachments


def signed_offered(settings: Settings, unwrapped: secure.Unwrapped) -> list[str]:
    """The offered keys that are inside the signed entity (the signature covers them)."""
    if unwrapped.signed is not None:
        entity = unwrapped.signed.signed
    elif unwrapped.decrypted is not None and unwrapped.inner_verification is not None and \
            unwrapped.inner_verification.signatures:
        entity = unwrapped.decrypted
    else:
        return []
    return import_offered(settings, entity, secure.Unwrapped())[0]


def import_offered(settings: Settings, raw: bytes,
                   unwrapped: secure.Unwrapped) -> tuple[list[str], list[str]]:
    """Import the public keys the message offers into the offered-keys keyring.

    Returns their fingerprints and, for each key refused, why (never its content). The
    refusals are judged before gpg sees anything (``secure.offered_keys``); the gpg work is
    bounded in count, size and time (``Keyring.import_offered``).
    """
    sources = raw + (unwrapped.decrypted or b"")
    if not any(marker in sources for marker in _KEY_MARKERS):
        return [], []
    offers = secure.offered_keys(raw, unwrapped.decrypted)
    if not offers.keys:
        return [], list(offers.refused)
    ring = keyring(settings.gnupg)
    if ring is None:
        return [], [*offers.refused, "offered keys were not imported: gpg is not installed"]
    imported = ring.import_offered(offers.keys)
    return list(imported.fingerprints), [*offers.refused, *imported.refused]
