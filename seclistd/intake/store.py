"""Store first: raw bytes, dedup, and the one transaction per message.

``accept`` is the single entry point of all three intakes. It stores the raw bytes and runs
the pipeline in one transaction; if anything unexpected fails, it stores the bytes again in
a fresh transaction as quarantined with the error as the reason, so nothing is lost. A
message already stored (same Message-ID and SHA-256 of the bytes, or the same IMAP folder,
UIDVALIDITY and UID) is reported as a duplicate and not processed again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from seclistd.config import Settings
from seclistd.db import transaction
from seclistd.mail.parse import quick_message_id
from seclistd.models import Message
from seclistd.pipeline import process, quarantine

log = logging.getLogger(__name__)

ATTEMPTS = 3


@dataclass(frozen=True)
class ImapLocation:
    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Outcome:
    id: int
    status: str  # processed | quarantined
    duplicate: bool
    case_id: str | None
    route: str | None
    reason: str | None

    @classmethod
    def of(cls, message: Message, duplicate: bool) -> Outcome:
        return cls(id=message.id, status=message.status, duplicate=duplicate,
                   case_id=message.case_id, route=message.route,
                   reason=message.quarantine_reason)


def dedup_key(raw: bytes) -> tuple[str | None, str, str]:
    sha = hashlib.sha256(raw).hexdigest()
    mid = quick_message_id(raw)
    return mid, sha, f"{sha}:{mid or ''}"


def find_stored(session: Session, key: str, imap: ImapLocation | None) -> Outcome | None:
    """The stored message with these bytes (or at this IMAP location), if any."""
    t = Message.__table__.c
    same = t.dedup_key == key
    if imap is not None:
        same = or_(same, and_(t.imap_folder == imap.folder, t.imap_uidvalidity == imap.uidvalidity,
                              t.imap_uid == imap.uid))
    row = session.connection().execute(
        select(t.id, t.status, t.case_id, t.route, t.quarantine_reason).where(same).limit(1)
    ).first()
    if row is None:
        return None
    return Outcome(id=row.id, status=row.status, duplicate=True, case_id=row.case_id,
                   route=row.route, reason=row.quarantine_reason)


def accept(factory: sessionmaker[Session], settings: Settings, raw: bytes, *, source: str,
           now: dt.datetime, envelope_from: str | None = None,
           envelope_to: list[str] | None = None, imap: ImapLocation | None = None) -> Outcome:
    mid, sha, key = dedup_key(raw)

    def new_row() -> Message:
        return Message(
            received_at=now, source=source, message_id=mid, sha256=sha, dedup_key=key,
            size=len(raw), raw=raw, envelope_from=envelope_from,
            envelope_to=", ".join(envelope_to) if envelope_to else None,
            imap_folder=imap.folder if imap else None,
            imap_uidvalidity=imap.uidvalidity if imap else None,
            imap_uid=imap.uid if imap else None, status="pending")

    outcome: Outcome | None = None
    failure: Exception | None = None
    for _attempt in range(ATTEMPTS):
        try:
            # Optimistic: the unique constraints on the dedup key and the IMAP location
            # catch a message stored before; the lookup runs only then (duplicates are rare).
            with transaction(factory) as session:
                message = new_row()
                session.add(message)
                # The pipeline's queries never need the rows it adds: flush once, at commit.
                with session.no_autoflush:
                    process(session, now, settings, message)
            outcome = Outcome.of(message, duplicate=False)
            break
        except IntegrityError as exc:
            with transaction(factory) as session:
                stored = find_stored(session, key, imap)
            if stored is not None:
                return stored
            failure = exc  # a concurrent writer (e.g. the year's first case number): again
        except Exception as exc:  # noqa: BLE001 - any failure quarantines, never loses
            failure = exc
            break
    if outcome is None:
        log.error("processing failed; keeping the message in quarantine", exc_info=failure)
        with transaction(factory) as session:
            stored = find_stored(session, key, imap)
            if stored is not None:
                return stored
            message = new_row()
            quarantine(message, "internal error while processing: "
                       f"{type(failure).__name__}: {failure}")
            session.add(message)
        outcome = Outcome.of(message, duplicate=False)
    log.info("message %s from %s: %s%s%s", outcome.id, source, outcome.status,
             f" case={outcome.case_id}" if outcome.case_id else "",
             f" reason={outcome.reason}" if outcome.reason else "")
    return outcome


class NotQuarantined(Exception):
    pass


def release(factory: sessionmaker[Session], settings: Settings, message_id: int,
            now: dt.datetime) -> Outcome:
    """Process a quarantined message again, without the size limits (the operator's call)."""
    with transaction(factory) as session:
        message = session.get(Message, message_id)
        if message is None or message.status != "quarantined":
            raise NotQuarantined(message_id)
        message.status = "pending"
        message.quarantine_reason = None
        try:
            with session.begin_nested():
                process(session, now, settings, message, enforce_limits=False)
        except Exception as exc:  # noqa: BLE001
            log.exception("release failed")
            quarantine(message, f"internal error while processing: {type(exc).__name__}: {exc}")
        session.flush()
        return Outcome.of(message, duplicate=False)
