"""Outgoing messages built only from sanitised strings.

Every value that may have come from a received message goes through ``clean`` (no CR, LF,
NUL or other control characters, bounded length) before it becomes a header, so a subject
carrying an encoded CR/LF (CVE-2024-6923) cannot add a header. Addresses go through
``email.headerregistry.Address``, which refuses anything that is not one address.
Internationalised addresses (``víctim@exämple.net``) are written as UTF-8 (RFC 6532); the
bytes are UTF-8 throughout, and the relay sends such a mail only with SMTPUTF8.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email import quoprimime
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr, make_msgid

from seclistd.errors import Explained
from seclistd.mail.addresses import address_problem

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")


def clean(value: str | None, limit: int = 200) -> str:
    """A single-line, printable, bounded version of ``value``."""
    text = _CONTROL.sub(" ", value or "")
    text = " ".join(text.split())
    return text[:limit].rstrip()


class BadAddress(Explained, ValueError):
    """An address no mail can be written to (the text says why, without the address)."""


def short(value: str | None, limit: int) -> str:
    """``clean(value)`` cut to at most ``limit`` characters, "..." marking the cut (ASCII,
    so a plain receipt stays 7bit): how much of a stranger's text an automatic mail may
    quote."""
    text = clean(value, limit + 1)
    return text if len(text) <= limit else text[:max(limit - 3, 0)].rstrip() + "..."


def address(addr: str, name: str = "") -> Address:
    """One recipient, ASCII or internationalised (RFC 6531); BadAddress when it is none."""
    addr = clean(addr, 320)
    problem = address_problem(addr)
    if problem:
        raise BadAddress(f"the recipient address {problem}")
    local, _, domain = addr.rpartition("@")
    return Address(display_name=clean(name, 100), username=local, domain=domain)


def new_message_id(domain: str) -> str:
    return make_msgid(idstring="seclistd", domain=clean(domain, 200))


def tagged_subject(tag: str, subject: str) -> str:
    """``[TAG] subject`` with the tag once, whatever the original subject carried."""
    original = clean(subject, 160)
    original = original.replace(f"[{tag}]", "").strip()
    return clean(f"[{tag}] {original}" if original else f"[{tag}]", 200)


def header(name: str, value: str) -> str:
    """One header line: cleaned; RFC 2047 encoded (and folded) when not ASCII."""
    value = clean(value, 998)
    if value.isascii():
        return f"{name}: {value}"
    return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def format_address(addr: Address) -> str:
    """The address for a header. An internationalised address is written as UTF-8 (RFC
    6532: such a mail needs SMTPUTF8, which the relay asks for); ``formataddr`` raises on
    it. The display name is quoted as needed and was cleaned of CR, LF and NUL."""
    if addr.addr_spec.isascii():
        return formataddr((addr.display_name, addr.addr_spec), charset="utf-8")
    return str(addr)


def body_part(body: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, CRLF body): 7bit when plain ASCII, else quoted-printable.
    A NUL never goes out (RFC 5322 forbids it): U+FFFD takes its place."""
    body = body.replace("\x00", "\ufffd")
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if body.isascii() and all(len(line) <= 998 for line in lines):
        return "7bit", "\r\n".join(lines)
    encoded = quoprimime.body_encode(body.encode("utf-8").decode("latin-1"), eol="\r\n")
    return "quoted-printable", encoded


@dataclass(frozen=True)
class Attachment:
    """A file that goes with an outgoing mail (a patch): its name, type and bytes."""

    filename: str
    content_type: str
    data: bytes


_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
_NAME_KEEP = re.compile(r"[^A-Za-z0-9._+-]")


def mime_type(value: str | None) -> str:
    """``value`` as a bare ``type/subtype`` when it is one, else application/octet-stream."""
    text = (value or "").strip().lower()
    return text if _MIME_TYPE.fullmatch(text) else "application/octet-stream"


def attachment_name(name: str | None, fallback: str = "attachment.bin") -> str:
    """A file name safe to write in a header: its last path component, ASCII letters,
    digits and ``._+-`` (anything else becomes ``_``), never a leading dot, at most 100."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _NAME_KEEP.sub("_", base).lstrip(".-")[:100]
    return base if base.strip("_") else fallback


def _attachment_part(att: Attachment) -> str:
    name = attachment_name(att.filename)
    encoded = base64.encodebytes(att.data).decode("ascii").replace("\n", "\r\n")
    return (f'Content-Type: {mime_type(att.content_type)}; name="{name}"\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + encoded)


def build(*, from_addr: Address, to_addr: Address, subject: str, body: str, message_id: str,
          now: dt.datetime, in_reply_to: str | None = None, references: list[str] | None = None,
          auto_submitted: str | None = None, loop_address: str | None = None,
          attachments: Sequence[Attachment] = ()) -> bytes:
    """The message as bytes with CRLF line ends; every header from a cleaned string.

    With ``attachments`` the message is multipart/mixed: the text first, then each file
    (base64, under a safe name). Encrypting the message (``pgpmime.encrypt_message``)
    puts the whole body, attachments included, inside the encryption.

    Built with the email package's own encoders (Header, formataddr, quoprimime) rather
    than EmailMessage: its header registry creates a class per header set, which cost
    about 2 ms per mail, more than everything else on the way out.
    """
    lines = [
        f"From: {format_address(from_addr)}",
        f"To: {format_address(to_addr)}",
        header("Subject", subject),
        f"Date: {format_datetime(now.astimezone(dt.UTC))}",
        f"Message-ID: {clean(message_id, 998)}",
    ]
    if in_reply_to:
        lines.append(f"In-Reply-To: {clean(in_reply_to, 998)}")
    refs = [clean(r, 998) for r in (references or []) if r][-20:]
    if refs:
        lines.append("References: " + "\r\n ".join(refs))
    if auto_submitted:
        lines.append(f"Auto-Submitted: {clean(auto_submitted, 100)}")
    if loop_address:
        lines.append(f"X-Loop: {clean(loop_address, 320)}")
    cte, encoded = body_part(body)
    if attachments:
        boundary = f"mixed-{secrets.token_hex(12)}"
        parts = [f'Content-Type: text/plain; charset="utf-8"\r\n'
                 f"Content-Transfer-Encoding: {cte}\r\n\r\n{encoded}"]
        parts += [_attachment_part(att) for att in attachments]
        multipart = "".join(f"--{boundary}\r\n" + part.rstrip("\r\n") + "\r\n"
                            for part in parts) + f"--{boundary}--"
        lines += ["MIME-Version: 1.0",
                  f'Content-Type: multipart/mixed; boundary="{boundary}"', "", multipart]
    else:
        lines += ["MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"',
                  f"Content-Transfer-Encoding: {cte}", "", encoded]
    text = "\r\n".join(lines)
    if not text.endswith("\r\n"):
        text += "\r\n"
    return text.encode("utf-8")
