"""The pipeline for one stored message: limits, parse, classify, and hand to a workflow.

``process`` runs in the transaction that stored the message, so the message row, the case
it opens or joins, the audit events and the outgoing mail commit together. A message that
cannot be processed is marked quarantined with its reason, in that same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.crypto import keyring
from seclistd.mail import compose, secure
from seclistd.mail.classify import Context, classify
from seclistd.mail.parse import ParsedMail, Unprocessable, check_limits, parse
from seclistd.models import Case, Message
from seclistd.workflows import commands, report

log = logging.getLogger(__name__)


def quarantine(message: Message, reason: str, label: str | None = None) -> None:
    message.status = "quarantined"
    message.quarantine_reason = reason[:2000]
    message.route = label or "quarantine"


def process(session: Session, now: dt.datetime, settings: Settings, message: Message, *,
            enforce_limits: bool = True) -> None:
    raw = message.raw
    try:
        if enforce_limits:
            check_limits(raw, settings.limits)
        mail = parse(raw)
        unwrapped = secure.unwrap(raw, mail.content_type, lambda: keyring(settings.gnupg),
                                  settings.limits)
        if unwrapped.too_big:
            quarantine(message, unwrapped.problem or "decrypted content too large")
            return
        if unwrapped.encrypted:
            message.encrypted = True
            reveal(mail, unwrapped)
    except Unprocessable as exc:
        quarantine(message, str(exc))
        return
    offered = import_offered(settings, raw, unwrapped)
    message.from_addr = mail.from_addr
    message.to_addrs = ", ".join(mail.to_addrs)[:5000]
    message.subject = compose.clean(mail.subject, 998)
    message.text = mail.text
    route = classify(Context(session=session, mail=mail, raw=raw,
                             own_addresses=report.own_addresses(settings),
                             case_prefix=settings.project.case_prefix,
                             max_received=settings.limits.max_received,
                             team=frozenset(m.email for m in settings.team.members)))
    message.route = route.label
    if route.kind == "quarantine":
        quarantine(message, route.reason or route.label, route.label)
        return
    message.status = "processed"
    if route.kind == "command":
        case_id = commands.handle(session, now, settings, keyring(settings.gnupg), message, mail,
                                  unwrapped, route.case_id)
        if case_id is None:
            quarantine(message, "command refused and no case to record it on", route.label)
        return
    if route.kind == "reply":
        case = session.get(Case, route.case_id)
        assert case is not None
        report.attach_reply(session, now, settings, case, message, mail, route.label, offered)
    else:
        report.open_case(session, now, settings, message, mail, offered)


def reveal(mail: ParsedMail, unwrapped: secure.Unwrapped) -> None:
    """Put the decrypted text (or why there is none) in place of the ciphertext."""
    if unwrapped.decrypted is None:
        mail.text = (f"[This message came encrypted; {unwrapped.problem}. It is kept as "
                     "received. The project key to encrypt to is `seclistd keys export`.]")
        return
    if unwrapped.inline:
        mail.text = unwrapped.decrypted.decode("utf-8", "replace")
        return
    inner = parse(unwrapped.decrypted)
    mail.text, mail.attachments = inner.text, inner.attachments


def import_offered(settings: Settings, raw: bytes, unwrapped: secure.Unwrapped) -> list[str]:
    """Import the public keys the message offers; their fingerprints."""
    sources = raw + (unwrapped.decrypted or b"")
    if not any(marker in sources for marker in (b"PGP PUBLIC KEY", b"pgp-keys", b"utocrypt")):
        return []
    ring = keyring(settings.gnupg)
    if ring is None:
        return []
    fingerprints: list[str] = []
    for key in secure.offered_keys(raw, unwrapped.decrypted):
        try:
            fingerprints += [f for f in ring.import_keys(key) if f not in fingerprints]
        except Exception:  # noqa: BLE001 - a key gpg will not take is just not imported
            log.warning("could not import a key offered by a message", exc_info=True)
    return fingerprints
