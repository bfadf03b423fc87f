"""SQLAlchemy 2.x typed tables of the distributors list: members, join requests, vouches and
their audit trails (DESIGN.md §3 "Join request" and "Member").

Kept apart from the report side's tables (``seclistd.models``) on purpose: the list is its
own product area with its own workflows (``seclistd.workflows.membership`` and friends).
The tables share the one ``Base`` so that the Alembic migrations and
``tests/test_migrations.py`` see them; ``seclistd.models`` imports this module at its end.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seclistd.models import AuditColumns, Base, UTCDateTime


class Member(Base):
    """One subscriber of one distributors list (``state``: active, suspended, removed).

    ``email`` is stored as given on the way in, lower-cased; ``bounce_token`` is the secret
    part of the member's own return path (``security+bounce-TOKEN@…``) so that a DSN names
    its member without trusting anything the bounce says about itself.
    """

    __tablename__ = "members"
    __table_args__ = (
        UniqueConstraint("list_name", "email", name="uq_members_list_email"),
        Index("ix_members_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(998))
    name: Mapped[str] = mapped_column(Text, default="")
    organization: Mapped[str] = mapped_column(Text, default="")
    fingerprint: Mapped[str | None] = mapped_column(String(40))
    key_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str | None] = mapped_column(Text)
    joined_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    request_id: Mapped[str | None] = mapped_column(String(32))  # the JOIN that made it
    bounce_token: Mapped[str] = mapped_column(String(64), unique=True)
    # Bounce bookkeeping (at most one score step per day; warnings while suspended).
    bounce_score: Mapped[float] = mapped_column(Float, default=0)
    last_bounce_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bounce_warnings: Mapped[int] = mapped_column(Integer, default=0)
    next_bounce_warning_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Key expiry: when the member and the team were last warned.
    key_warned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Key rotation: the new key a mail signed by the old one offered, pinned once the token
    # sent encrypted to it comes back (only the token's SHA-256 is kept).
    pending_fingerprint: Mapped[str | None] = mapped_column(String(40))
    pending_token_sha256: Mapped[str | None] = mapped_column(String(64))

    events: Mapped[list[MemberEvent]] = relationship(back_populates="member",
                                                     order_by="MemberEvent.id")


class MemberEvent(AuditColumns, Base):
    """The audit trail of a member: one row per change, written with the change."""

    __tablename__ = "member_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)

    member: Mapped[Member] = relationship(back_populates="events")


class JoinRequest(Base):
    """A request to join a distributors list (``JOIN-2026-0001``) and where it stands.

    ``answers`` maps each criterion id to the applicant's answer text; ``missing_criteria``
    lists the ids still unanswered. ``token_sha256`` is the hash of the proof-of-key token
    mailed encrypted to ``fingerprint``; the token itself is never stored. A later, different
    key waits in ``pending_fingerprint`` (its token's hash in ``pending_token_sha256``) and
    replaces ``fingerprint`` only when that token comes back.
    """

    __tablename__ = "join_requests"
    __table_args__ = (Index("ix_join_requests_state_activity", "state", "last_activity_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    list_name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    applicant: Mapped[str] = mapped_column(String(998), index=True)
    applicant_name: Mapped[str] = mapped_column(Text, default="")
    organization: Mapped[str] = mapped_column(Text, default="")
    answers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    missing_criteria: Mapped[list[str]] = mapped_column(JSON, default=list)
    voucher_named: Mapped[str] = mapped_column(Text, default="")
    voucher_member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    fingerprint: Mapped[str | None] = mapped_column(String(40))
    token_sha256: Mapped[str | None] = mapped_column(String(64))
    key_proved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # A different key offered later waits here until the token mailed encrypted to it comes
    # back; the pinned one above stays until then (a forged From cannot unpin it).
    pending_fingerprint: Mapped[str | None] = mapped_column(String(40))
    pending_token_sha256: Mapped[str | None] = mapped_column(String(64))
    root_message_id: Mapped[str | None] = mapped_column(String(998))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(998))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))

    events: Mapped[list[RequestEvent]] = relationship(back_populates="request",
                                                      order_by="RequestEvent.id")
    vouches: Mapped[list[Vouch]] = relationship(back_populates="request", order_by="Vouch.id")


class RequestEvent(AuditColumns, Base):
    """The audit trail of a join request, as ``events`` is for cases."""

    __tablename__ = "request_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("join_requests.id"), index=True)

    request: Mapped[JoinRequest] = relationship(back_populates="events")


class Vouch(Base):
    """A current member's signed ``X-VOUCH`` for a request; one per member and request."""

    __tablename__ = "vouches"
    __table_args__ = (UniqueConstraint("request_id", "member_id",
                                       name="uq_vouches_request_member"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("join_requests.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    fingerprint: Mapped[str] = mapped_column(String(40))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[int | None] = mapped_column(Integer)

    request: Mapped[JoinRequest] = relationship(back_populates="vouches")
