"""Delivery status notifications: is this bounce a hard failure, and for whom (RFC 3464).

``read`` looks at a ``multipart/report; report-type=delivery-status`` message with the
stdlib parser: each per-recipient block of its ``message/delivery-status`` part gives a
recipient (``Final-Recipient``), an ``Action`` and a ``Status``. A block is a *hard*
failure when the reporting MTA gave up (``Action: failed``, whatever the status: Postfix
gives up on a 4.x.x after its queue lifetime, and the mail was still not delivered) or,
without an Action, when its Status is permanent (5.x.x). ``Action: delayed`` and 4.x.x
statuses are soft: the MTA is still trying, so they are recorded and never counted.

Mail that is not an RFC 3464 report is recognised loosely, and only when it costs nothing:
a mail from ``MAILER-DAEMON`` or ``postmaster`` whose subject says the mail could not be
delivered (the wording of qmail, Exchange, Gmail and old Sendmail) is a hard failure with
no recipient known. Anything else is not a bounce (an automatic reply, say).

The recipients are informational only: the member a bounce is about is named by the
return path it came back to (``mail.verp``), never by what the bounce says.

Bounded: at most ``MAX_BYTES`` of the message are parsed, with at most ``MAX_PARTS``
entities (the parser stops there), and at most ``MAX_BLOCKS`` recipient blocks are read.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from seclistd.mail.parse import Unprocessable, message_from_bytes

MAX_BYTES = 512 * 1024
MAX_PARTS = 60
MAX_BLOCKS = 50
MAX_STATUS_TEXT = 64 * 1024  # of an encoded delivery-status part, when it must be decoded
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_DAEMONS = ("mailer-daemon", "postmaster")
_FAILURE_SUBJECTS = (
    "undeliver",  # Undeliverable: … / Undelivered Mail Returned to Sender
    "delivery status notification (failure)",
    "delivery failure", "delivery has failed", "failure notice", "returned mail",
    "mail delivery failed", "could not be delivered", "delivery failed",
)

HARD, SOFT, NONE = "hard", "soft", "none"


@dataclass(frozen=True)
class Recipient:
    """One per-recipient block of a report."""

    address: str  # Final-Recipient (else Original-Recipient), lower case; "" if absent
    action: str  # failed, delayed, delivered, relayed, expanded, or ""
    status: str  # e.g. "5.1.1", or ""
    verdict: str  # hard | soft | none

    def describe(self) -> str:
        what = " ".join(x for x in (self.action, self.status) if x) or "no action or status"
        return f"{self.address or 'unnamed recipient'}: {what}"


@dataclass(frozen=True)
class Report:
    """What a bounce says: ``kind`` is ``rfc3464``, ``loose`` (a daemon's mail recognised
    by its subject) or ``none`` (not a bounce at all)."""

    kind: str
    verdict: str  # hard | soft | none
    recipients: tuple[Recipient, ...] = ()

    @property
    def hard(self) -> bool:
        return self.verdict == HARD

    def summary(self) -> str:
        """One line for the audit trail (addresses and status codes only, no free text)."""
        if self.kind == "none":
            return "not a delivery status notification"
        if self.kind == "loose":
            return "delivery failure reported by a mailer daemon (not an RFC 3464 report)"
        listed = "; ".join(r.describe() for r in self.recipients[:5])
        more = f" and {len(self.recipients) - 5} more" if len(self.recipients) > 5 else ""
        return f"{self.verdict} ({listed or 'no recipient listed'}{more})"


def verdict_of(action: str, status: str) -> str:
    """Hard, soft or none for one recipient block (see the module's docstring)."""
    if action == "failed":
        return HARD
    if action == "delayed":
        return SOFT
    if action in ("delivered", "relayed", "expanded"):
        return NONE
    if status.startswith("5"):
        return HARD
    if status.startswith("4"):
        return SOFT
    return NONE


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split())[:400] if value is not None else ""


def _recipient(block: Message) -> Recipient | None:
    address = _field(block, "Final-Recipient") or _field(block, "Original-Recipient")
    action = _field(block, "Action").lower().partition(" ")[0]
    status_field = _field(block, "Status")
    if not (address or action or status_field):
        return None  # the per-message block, or an empty one
    match = _STATUS.match(status_field)
    status = match.group(0) if match else ""
    # "rfc822; user@example.org": the address type comes first.
    address = address.rpartition(";")[2].strip().strip("<>").lower()[:320]
    return Recipient(address=address, action=action, status=status,
                     verdict=verdict_of(action, status))


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` part. The parser splits a plain
    one itself; an encoded one (base64, quoted-printable: the parser took its text for
    header blocks) is put together again, decoded and split here."""
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding not in ("base64", "quoted-printable"):
        if isinstance(payload, list):
            return [b for b in payload[:MAX_BLOCKS + 1] if isinstance(b, Message)]
        text = str(payload)[:MAX_STATUS_TEXT]
    else:
        if isinstance(payload, list):
            pieces = [b.get_payload() for b in payload[:MAX_BLOCKS + 1]
                      if isinstance(b, Message)]
            encoded = "\n".join(p for p in pieces if isinstance(p, str))
        else:
            encoded = str(payload)
        encoded = encoded[:MAX_STATUS_TEXT * 2]
        try:
            data = (base64.b64decode("".join(encoded.split()))
                    if encoding == "base64" else quopri.decodestring(encoded.encode()))
        except (binascii.Error, ValueError):
            return []
        text = data[:MAX_STATUS_TEXT].decode("utf-8", "replace")
    text = text.replace("\r\n", "\n")
    chunks = [c for c in text.split("\n\n") if c.strip()][:MAX_BLOCKS + 1]
    return [HeaderParser().parsestr(chunk + "\n\n") for chunk in chunks]


def _verdict(recipients: list[Recipient]) -> str:
    verdicts = {r.verdict for r in recipients}
    return HARD if HARD in verdicts else SOFT if SOFT in verdicts else NONE


def read(raw: bytes, *, from_addr: str | None = None, subject: str = "") -> Report:
    """What the bounce in ``raw`` reports. ``from_addr`` and ``subject`` (as the pipeline
    read them) serve only the loose recognition of mail that is not an RFC 3464 report."""
    try:
        message = message_from_bytes(raw[:MAX_BYTES], MAX_PARTS)
    except Unprocessable:
        message = None
    except Exception:  # noqa: BLE001 - a parser failure: only the loose rules remain
        message = None
    if message is not None and message.get_content_type() == "multipart/report":
        recipients: list[Recipient] = []
        for part in message.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            for block in _blocks(part):
                found = _recipient(block)
                if found is not None and len(recipients) < MAX_BLOCKS:
                    recipients.append(found)
            break  # one report per message
        else:
            return _loose(from_addr, subject)
        return Report(kind="rfc3464", verdict=_verdict(recipients),
                      recipients=tuple(recipients))
    return _loose(from_addr, subject)


def _loose(from_addr: str | None, subject: str) -> Report:
    local = (from_addr or "").partition("@")[0].lower()
    said = " ".join(subject[:300].lower().split())
    if local in _DAEMONS and any(words in said for words in _FAILURE_SUBJECTS):
        return Report(kind="loose", verdict=HARD)
    return Report(kind="none", verdict=NONE)
