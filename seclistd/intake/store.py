"""Store first: raw bytes, dedup, and the one transaction per message.

``accept`` is the single entry point of all three intakes. It stores the raw bytes and runs
the pipeline in one transaction; if anything unexpected fails, it stores the bytes again in
a fresh transaction as quarantined with the error as the reason, so nothing is lost (the
reason and the log name the error's type and place, never its text: that may quote the
message or the SQL parameters, see ``seclistd.errors``). A
message already stored (same Message-ID and SHA-256 of the bytes, or the same IMAP folder,
UIDVALIDITY and UID) is reported as a duplicate and not processed again.

Every quarantine row written here is told to the team in the same transaction
(``notices.quarantined``: a notice, or a line of the hourly digest). ``release`` processes
a quarantined message again (``as_report``: as a new report, with the sender the operator
gives); ``delete`` removes one and keeps a ``QuarantineDeletion`` record.
The processing time budget (``pipeline.Budget``) starts when ``accept`` takes the message
and spans its retries. ``quarantine_unfetched`` records a message too large to fetch (IMAP)
from its size and header alone.
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
from seclistd.errors import describe, trace
from seclistd.mail.parse import quick_message_id
from seclistd.models import Case, Message, QuarantineDeletion
from seclistd.pipeline import Budget, process, quarantine
from seclistd.workflows import notices, states

log = logging.getLogger(__name__)

ATTEMPTS = 3
OVERSIZED = "oversized"  # the route of a message recorded from its header alone


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
    request_id: str | None = None  # the join request it opened or joined

    @classmethod
    def of(cls, message: Message, duplicate: bool) -> Outcome:
        return cls(id=message.id, status=message.status, duplicate=duplicate,
                   case_id=message.case_id, route=message.route,
                   reason=message.quarantine_reason, request_id=message.request_id)


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


def _new_row(raw: bytes, keys: tuple[str | None, str, str], *, source: str, now: dt.datetime,
             envelope_from: str | None, envelope_to: list[str] | None,
             imap: ImapLocation | None) -> Message:
    mid, sha, key = keys
    return Message(
        received_at=now, source=source, message_id=mid, sha256=sha, dedup_key=key,
        size=len(raw), raw=raw, envelope_from=envelope_from,
        envelope_to=", ".join(envelope_to) if envelope_to else None,
        imap_folder=imap.folder if imap else None,
        imap_uidvalidity=imap.uidvalidity if imap else None,
        imap_uid=imap.uid if imap else None, status="pending")


def accept(factory: sessionmaker[Session], settings: Settings, raw: bytes, *, source: str,
           now: dt.datetime, envelope_from: str | None = None,
           envelope_to: list[str] | None = None, imap: ImapLocation | None = None) -> Outcome:
    budget = Budget.of(settings)
    keys = dedup_key(raw)
    key = keys[2]

    def new_row() -> Message:
        return _new_row(raw, keys, source=source, now=now, envelope_from=envelope_from,
                        envelope_to=envelope_to, imap=imap)

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
                    process(session, now, settings, message, budget=budget)
                if message.status == "quarantined":
                    notices.quarantined(session, now, settings, message)
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
        assert failure is not None
        log.error("processing failed; keeping the message in quarantine:\n%s", trace(failure))
        with transaction(factory) as session:
            stored = find_stored(session, key, imap)
            if stored is not None:
                return stored
            message = new_row()
            quarantine(message, f"internal error while processing: {describe(failure)}")
            session.add(message)
            notices.quarantined(session, now, settings, message)
        outcome = Outcome.of(message, duplicate=False)
    log.info("message %s from %s: %s%s%s", outcome.id, source, outcome.status,
             f" case={outcome.case_id}" if outcome.case_id else "",
             f" reason={outcome.reason}" if outcome.reason else "")
    return outcome


def quarantine_unfetched(factory: sessionmaker[Session], settings: Settings, header: bytes,
                         size: int, *, source: str, now: dt.datetime,
                         imap: ImapLocation) -> Outcome:
    """Record a message too large to fetch, from its header and size, as quarantined."""
    keys = dedup_key(header)
    with transaction(factory) as session:
        stored = find_stored(session, keys[2], imap)
        if stored is not None:
            return stored
        message = _new_row(header, keys, source=source, now=now, envelope_from=None,
                           envelope_to=None, imap=imap)
        message.size = size
        quarantine(message, f"message is {size} bytes, over the limit of "
                   f"{settings.limits.max_message_bytes} (limits.max_message_bytes); only its "
                   f"header was fetched and is kept here, the message itself is in the IMAP "
                   f"folder {settings.imap.quarantine_folder}", OVERSIZED)
        session.add(message)
    log.info("message %s from %s: quarantined without fetching (%d bytes)", message.id,
             source, size)
    return Outcome.of(message, duplicate=False)


class NotQuarantined(Exception):
    pass


def release(factory: sessionmaker[Session], settings: Settings, message_id: int,
            now: dt.datetime, *, as_report: bool = False, sender: str | None = None,
            actor: str = "seclistd") -> Outcome:
    """Process a quarantined message again, without the size limits (the operator's call).

    ``as_report``: open a case from it whatever it looks like, with ``sender`` (checked by
    the caller) as the reporter when given; the case's events record who did it and why.
    """
    with transaction(factory) as session:
        message = session.get(Message, message_id)
        if message is None or message.status != "quarantined":
            raise NotQuarantined(message_id)
        if message.route == OVERSIZED:
            return Outcome.of(message, duplicate=False)  # only its header is here: see reason
        was = message.quarantine_reason
        message.status = "pending"
        message.quarantine_reason = None
        try:
            with session.begin_nested():
                process(session, now, settings, message, enforce_limits=False,
                        as_report=as_report, sender=sender)
        except Exception as exc:  # noqa: BLE001
            log.error("release failed:\n%s", trace(exc))
            quarantine(message, f"internal error while processing: {describe(exc)}")
        session.flush()
        case = session.get(Case, message.case_id) if as_report and message.case_id else None
        if case is not None:
            given = f"sender given as {sender}" if sender else f"sender read as {message.from_addr}"
            states.record(session, now, case, actor=actor, action="released_as_report",
                          detail=f"message {message.id} released from quarantine as a report; "
                                 f"{given}; it was quarantined because: {was or '(no reason)'}")
        return Outcome.of(message, duplicate=False)


@dataclass(frozen=True)
class Deleted:
    message: int
    sha256: str
    size: int
    at: dt.datetime
    actor: str


def delete(factory: sessionmaker[Session], message_id: int, now: dt.datetime, *, actor: str,
           reason: str = "") -> Deleted:
    """Remove a quarantined message, bytes and all, keeping who deleted it, when, why, and
    what it was (SHA-256, size, sender, the quarantine reason) in ``quarantine_deletions``."""
    with transaction(factory) as session:
        message = session.get(Message, message_id, with_for_update=True)
        if message is None or message.status != "quarantined":
            raise NotQuarantined(message_id)
        record = QuarantineDeletion(
            message_id=message.id, deleted_at=now, actor=actor, reason=reason,
            sha256=message.sha256, size=message.size, received_at=message.received_at,
            header_message_id=message.message_id, from_addr=message.from_addr,
            envelope_from=message.envelope_from, quarantine_reason=message.quarantine_reason)
        session.add(record)
        session.delete(message)
        return Deleted(message=message_id, sha256=record.sha256, size=record.size, at=now,
                       actor=actor)

