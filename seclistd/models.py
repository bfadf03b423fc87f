"""SQLAlchemy 2.x typed tables: messages, cases, events, outbox, counters, daemon state.

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
    reply_to: Mapped[str | None] = mapped_column(String(998))  # return path for answers
    handler: Mapped[str | None] = mapped_column(String(998))
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
    # The key the reporter sent (attached or Autocrypt), pinned on first sight.
    reporter_key: Mapped[str | None] = mapped_column(String(40))

    messages: Mapped[list[Message]] = relationship(back_populates="case",
                                                   order_by="Message.id")
    events: Mapped[list[Event]] = relationship(back_populates="case", order_by="Event.id")


class Event(Base):
    """The audit trail: one row per action on a case, written with the action."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(998))
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")

    case: Mapped[Case] = relationship(back_populates="events")


class Outbox(Base):
    """One outgoing mail to one envelope recipient; written with the change that causes it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_auto_to", "auto", "to_addr", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)
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


class HonouredSignature(Base):
    """A signature that carried out a command: each is honoured once."""

    __tablename__ = "honoured_signatures"

    sig_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(40))
    case_id: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


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
