"""SQLAlchemy 2.x typed tables of the embargo: a case's embargoed notice to a list, its
attachments, each recipient's copy (delivery, acknowledgment, vendor status) and leak reports
(DESIGN.md §3 "Announcement"; issue 10).

A case has at most one announcement (``announcements.case_id`` is its key); rescheduling
updates it and counts ``revision``. Every copy of the notice is one ``AnnouncementRecipient``
with its own token, which is also in that copy's Message-ID and text, so that a reply or a
leaked copy traces to its recipient. ``seclistd.models`` imports this module at its end.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seclistd.models import Base, UTCDateTime


class Announcement(Base):
    """The embargoed notice of one case to one distributors list, and its terms."""

    __tablename__ = "announcements"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    list_name: Mapped[str] = mapped_column(String(255))
    until: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)  # the embargo's end
    text: Mapped[str] = mapped_column(Text, default="")  # the team's message
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(998))
    revision: Mapped[int] = mapped_column(Integer, default=0)  # reschedules so far
    # Set when the "now public" notices went out (the disclosure of the case).
    public_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    attachments: Mapped[list[AnnouncementAttachment]] = relationship(
        order_by="AnnouncementAttachment.id")
    recipients: Mapped[list[AnnouncementRecipient]] = relationship(
        order_by="AnnouncementRecipient.id")


class AnnouncementAttachment(Base):
    """A file that goes with the notice, inside each copy's encryption (a patch)."""

    __tablename__ = "announcement_attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("announcements.case_id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AnnouncementRecipient(Base):
    """One recipient's copy of a notice: a list member or a team member.

    ``status``: queued → sent → acknowledged, or held (no usable key, or the member is
    suspended). ``vendor_status`` is the distribution's own (affected, not-affected,
    unknown) with its ``statement``.
    """

    __tablename__ = "announcement_recipients"
    __table_args__ = (Index("ix_announcement_recipients_case_email", "case_id", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("announcements.case_id"), index=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    email: Mapped[str] = mapped_column(String(998))
    role: Mapped[str] = mapped_column(String(16))  # "member" | "team"
    token: Mapped[str] = mapped_column(String(64), unique=True)
    outbox_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the latest copy
    status: Mapped[str] = mapped_column(String(16))
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    vendor_status: Mapped[str | None] = mapped_column(String(16))
    statement: Mapped[str | None] = mapped_column(Text)
    status_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reminded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Leak(Base):
    """A leak of a case's embargoed details: reported by a member's signed ``X-LEAK`` or by
    anyone's mail naming the case; ``member_id`` is the member it is held against, if known
    (a leaked copy's token names its recipient)."""

    __tablename__ = "leaks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    reported_by: Mapped[str] = mapped_column(String(998))
    signed: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[int | None] = mapped_column(Integer)  # messages.id of the report
