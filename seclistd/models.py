"""SQLAlchemy 2.x typed tables: messages, cases, events, outbox, counters, daemon state,
team digest entries and the record of quarantined messages deleted.

Times are stored in UTC and always come back timezone-aware (``UTCDateTime``), on SQLite
as on PostgreSQL. The schema is created only by the Alembic migrations in ``migrations/``;
``tests/test_migrations.py`` proves the migrations produce exactly these models.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware datetimes in, aware UTC datetimes out; naive input is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware one")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Message(Base):
    """One received message, raw bytes included; quarantined ones too."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("dedup_key", name="uq_messages_dedup_key"),
        UniqueConstraint("imap_folder", "imap_uidvalidity", "imap_uid",
                         name="uq_messages_imap_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    source: Mapped[str] = mapped_column(String(16))  # imap | smtp | lmtp | ingest
    # Message-ID header (as received, stripped) and SHA-256 of the raw bytes; dedup_key
    # is both joined, so a resend with the same bytes is one message.
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    dedup_key: Mapped[str] = mapped_column(String(1100))
    size: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_from: Mapped[str | None] = mapped_column(String(998))
    envelope_to: Mapped[str | None] = mapped_column(Text)
    imap_folder: Mapped[str | None] = mapped_column(String(255))
    imap_uidvalidity: Mapped[int | None] = mapped_column(Integer)
    imap_uid: Mapped[int | None] = mapped_column(Integer)
    # pending -> processed | quarantined
    status: Mapped[str] = mapped_column(String(16), index=True)
    route: Mapped[str | None] = mapped_column(String(32))
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    from_addr: Mapped[str | None] = mapped_column(String(998))
    to_addrs: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    # OpenPGP: whether it came encrypted (text is then the decrypted text), and the primary
    # fingerprint of a valid signature, if it had one.
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    signed_by: Mapped[str | None] = mapped_column(String(40))
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)

    # A mail about a join request (the request's own, a reply, a vouch) names it here.
    request_id: Mapped[str | None] = mapped_column(String(32), index=True)

    case: Mapped[Case | None] = relationship(back_populates="messages")


class Case(Base):
    """A vulnerability report and its life (DESIGN.md §3)."""

    __tablename__ = "cases"
    __table_args__ = (Index("ix_cases_state_received", "state", "received_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    resolution: Mapped[str | None] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    reporter: Mapped[str] = mapped_column(String(998), index=True)
    reporter_name: Mapped[str | None] = mapped_column(String(998))
    reply_to: Mapped[str | None] = mapped_column(String(998))  # return path: automatic answers
    # Where human answers go: the report's Reply-To, else None (then its From, ``reporter``).
    answer_to: Mapped[str | None] = mapped_column(String(998))
    handler: Mapped[str | None] = mapped_column(String(998))
    # The key the handler's mail is encrypted to when the handler is not in [team] (looked
    # up in the keyring when assigned; None: their mail is held until one is imported).
    handler_key: Mapped[str | None] = mapped_column(String(40))
    waiting_on: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ack_due: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    embargo_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    missing_information: Mapped[list[str]] = mapped_column(JSON, default=list)
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    root_message_id: Mapped[str | None] = mapped_column(String(998))
    # Recorded by `confirm`: affected versions, the CVSS vector as given and its base score.
    affected_versions: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str | None] = mapped_column(String(255))
    cvss_score: Mapped[float | None] = mapped_column(Float)
    duplicate_of: Mapped[str | None] = mapped_column(String(32))
    # How the reporter wants to be credited ("" = no credit wanted), and a GitHub ID.
    credit: Mapped[str | None] = mapped_column(Text)
    credit_github: Mapped[str | None] = mapped_column(String(39))
    # SLA bookkeeping: the next moment a sweep must look at this case, how many of the
    # acknowledgment reminders (and the deadline step) are done, when the reporter last
    # heard from us, and how many update reminders went out since.
    next_sla_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    ack_stage: Mapped[int] = mapped_column(Integer, default=0)
    last_reporter_contact_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    update_reminders: Mapped[int] = mapped_column(Integer, default=0)
    # The key the reporter's first mail sent (attached or Autocrypt), pinned on first use;
    # a later key only with the pinned key's signature or a confirmed token (PendingChange).
    reporter_key: Mapped[str | None] = mapped_column(String(40))
    # A failed SLA sweep of this case: the error (None once a sweep succeeds) and how many
    # sweeps failed in a row; the retry time, with backoff, is next_sla_at.
    sweep_error: Mapped[str | None] = mapped_column(Text)
    sweep_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The fixing release (`cases released`, X-RELEASED) and a workaround for the advisory;
    # when the advisory went public (the disclosure).
    fixed_version: Mapped[str | None] = mapped_column(String(255))
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    workaround: Mapped[str | None] = mapped_column(Text)
    disclosed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    messages: Mapped[list[Message]] = relationship(back_populates="case",
                                                   order_by="Message.id")
    events: Mapped[list[Event]] = relationship(back_populates="case", order_by="Event.id")


class AuditColumns:
    """The columns of an audit trail's row (cases, members, join requests): when, who, what,
    the state before and after (None when the state did not change), and why."""

    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(998))
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class Event(AuditColumns, Base):
    """The audit trail: one row per action on a case, written with the action."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)

    case: Mapped[Case] = relationship(back_populates="events")


class Outbox(Base):
    """One outgoing mail to one envelope recipient; written with the change that causes it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_auto_to", "auto", "to_addr", "created_at"),
        Index("ix_outbox_auto_created", "auto", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)
    # Mail about a join request, and mail to a list member (bounces are traced to it).
    request_id: Mapped[str | None] = mapped_column(String(32), index=True)
    member_id: Mapped[int | None] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    auto: Mapped[bool] = mapped_column(Boolean, default=False)
    to_addr: Mapped[str] = mapped_column(String(998))
    envelope_from: Mapped[str] = mapped_column(String(998))
    subject: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # pending -> sent | failed; held when it may not go out (later: no key to encrypt to)
    status: Mapped[str] = mapped_column(String(16))
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Encrypt to this fingerprint alone when sending; must_encrypt without a key holds it.
    encrypt_to: Mapped[str | None] = mapped_column(String(40))
    must_encrypt: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class DigestEntry(Base):
    """A team notice held back during a flood, to be listed in the next hourly digest.

    ``kind`` is ``case`` (a new report; ``ref`` its case ID) or ``quarantine`` (``ref`` the
    message ID); ``line`` is the digest line, written when the notice was held (it quotes no
    message content). ``digested_at`` is set by the digest sweep that listed it.
    """

    __tablename__ = "digest_entries"
    __table_args__ = (Index("ix_digest_entries_pending", "kind", "digested_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(64))
    line: Mapped[str] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    digested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class QuarantineDeletion(Base):
    """The audit record of a quarantined message an operator deleted (its bytes are gone)."""

    __tablename__ = "quarantine_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(Integer, index=True)  # the deleted messages.id
    deleted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(998))
    reason: Mapped[str] = mapped_column(Text, default="")  # the operator's, may be empty
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    header_message_id: Mapped[str | None] = mapped_column(String(998))
    from_addr: Mapped[str | None] = mapped_column(String(998))
    envelope_from: Mapped[str | None] = mapped_column(String(998))
    quarantine_reason: Mapped[str | None] = mapped_column(Text)


class HonouredSignature(Base):
    """A verified signature, spent once: its command was carried out or refused, and a
    reporter's signed change was applied. The primary key makes a second use fail."""

    __tablename__ = "honoured_signatures"

    sig_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(40))
    case_id: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PendingChange(Base):
    """A change to a case that a later, unauthenticated mail asked for (a key to pin, a credit
    wish): applied only when the one-time token mailed to the case's address comes back.
    Only the token's SHA-256 is stored."""

    __tablename__ = "pending_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    key_fingerprint: Mapped[str | None] = mapped_column(String(40))
    # None: the credit stays as it is; "" the reporter asks not to be named.
    credit: Mapped[str | None] = mapped_column(Text)
    credit_github: Mapped[str | None] = mapped_column(String(39))
    message_id: Mapped[int | None] = mapped_column(Integer)  # the mail that asked
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Counter(Base):
    """Per-year sequence numbers for IDs such as SEC-2026-0001."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class DaemonState(Base):
    """Small facts the daemon reports in `status` (last IMAP pass, UIDVALIDITY seen)."""

    __tablename__ = "daemon_state"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# The distributors list's tables live in their own module; importing it here registers them
# on Base.metadata for the migrations and for every session.
from seclistd import embargo_models as _embargo_models  # noqa: E402,F401
from seclistd import list_models as _list_models  # noqa: E402,F401
