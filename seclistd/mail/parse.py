"""Parsing: limits before parsing, then mail-parser for the body and stdlib for headers.

``check_limits`` looks only at the raw bytes (size, header block, multipart count) so that
a hostile message is refused before any parser sees it. ``parse`` returns a ``ParsedMail``
whose strings are decoded but *not* trusted: nothing here may be copied into an outgoing
header without ``seclistd.mail.compose.clean``.

Addresses are read with ``email.policy.default`` and a From/Sender with defects, or that is
not exactly one address, is refused (CVE-2023-27043). Message-ID, In-Reply-To and References
also come from the stdlib parser (mail-parser returns them raw and folded).
"""

from __future__ import annotations

import email
import html
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Any

import mailparser

from seclistd.config import LimitSettings

_MULTIPART = re.compile(rb"^content-type:[ \t]*multipart/", re.I | re.M)
_MSGID = re.compile(r"<[^<>\s]{1,900}>")
_TAG = re.compile(r"<[^>]*>")
# A run of base64 lines, matched possessively so that scanning stays linear; runs of 64 KB
# or more are an encoded attachment, not text to read.
_BASE64_RUN = re.compile(rb"^(?:[A-Za-z0-9+/]{60,100}={0,2}\r?\n)++", re.M)
BULK_BYTES = 64 * 1024


class Unprocessable(Exception):
    """The message cannot be processed; the text is the quarantine reason."""


def header_end(raw: bytes) -> int:
    """Offset of the blank line that ends the header block (or len(raw) when none)."""
    positions = [p for p in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if p >= 0]
    return min(positions) if positions else len(raw)


def check_limits(raw: bytes, limits: LimitSettings) -> None:
    """Raise Unprocessable when the raw message exceeds a limit (checked before parsing)."""
    if len(raw) > limits.max_message_bytes:
        raise Unprocessable(f"message is {len(raw)} bytes, over the limit of "
                            f"{limits.max_message_bytes} (limits.max_message_bytes)")
    end = header_end(raw)
    if end > limits.max_header_bytes:
        raise Unprocessable(f"header block is {end} bytes, over the limit of "
                            f"{limits.max_header_bytes} (limits.max_header_bytes)")
    parts = len(_MULTIPART.findall(raw))
    if parts > limits.max_mime_parts:
        raise Unprocessable(f"message has {parts} multipart MIME entities, over the limit of "
                            f"{limits.max_mime_parts} (limits.max_mime_parts)")


def quick_message_id(raw: bytes) -> str | None:
    """The Message-ID for dedup, read from the header block only, without a full parse."""
    try:
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[:header_end(raw)])
        value = headers.get("Message-ID")
    except Exception:  # noqa: BLE001 - a header we cannot read is just absent
        return None
    if not value:
        return None
    match = _MSGID.search(str(value))
    return match.group(0) if match else None


@dataclass
class ParsedMail:
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    subject: str
    from_addr: str | None
    from_name: str
    from_problem: str | None
    return_path: str | None  # "" for the null return path <>
    to_addrs: list[str]
    text: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    content_type: str = "text/plain"
    report_type: str = ""
    received_count: int = 0
    defects: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - stdlib header parsing raises many kinds
        return default


def _msgids(value: str) -> list[str]:
    return _MSGID.findall(value or "")[:100]


def _strict(message: Message, name: str) -> Any:
    """The header as ``email.policy.default`` reads it (with defects), or None when absent.

    Only the few headers whose meaning we rely on are read strictly: the registry behind
    policy.default builds a class per header read, far too slow for every header.
    """
    value = message.get(name)
    if value is None:
        return None
    return policy.default.header_fetch_parse(name, value)


def _single_address(message: Message, name: str) -> tuple[str | None, str, str | None]:
    """(addr, display name, problem) for a header that must hold exactly one address."""
    try:
        header = _strict(message, name)
        if header is None:
            return None, "", f"no {name} header"
        addresses, defects = header.addresses, header.defects
    except Exception as exc:  # noqa: BLE001 - stdlib header parsing raises many kinds
        return None, "", f"{name} header cannot be read ({type(exc).__name__})"
    if defects:
        return None, "", f"{name} header is malformed ({defects[0]})"
    if len(addresses) != 1:
        return None, "", f"{name} header holds {len(addresses)} addresses, expected exactly one"
    addr = addresses[0]
    if not addr.username or not addr.domain:
        return None, "", f"{name} header address {addr.addr_spec!r} has no domain"
    return addr.addr_spec.lower(), str(addr.display_name or ""), None


def _address_list(message: Message, name: str) -> list[str]:
    """Addresses for display only (To, Cc): the quick parser, never used to send mail."""
    values = _safe(lambda: [str(v) for v in message.get_all(name, [])], [])
    return _safe(lambda: [a.lower() for _, a in getaddresses(values) if "@" in a][:100], [])


def _return_path(msg: Message) -> str | None:
    value = _safe(lambda: msg.get("Return-Path"), None)
    if value is None:
        return None
    value = str(value).strip()
    if value in ("<>", ""):
        return ""
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>", value) or re.fullmatch(r"(\S+@\S+)", value)
    return match.group(1).lower() if match else None


def elide_bulk(raw: bytes) -> bytes:
    """The message with long base64 runs cut out, for parsing only (the stored bytes keep them).

    The stdlib parser holds each payload line as its own string: a 20 MB attachment costs
    well over 100 MB to parse. The text the pipeline reads is never such a run.
    """
    return _BASE64_RUN.sub(lambda m: b"" if len(m[0]) >= BULK_BYTES else m[0], raw)


def strip_attachments(message: Message) -> list[str]:
    """Drop the payloads of non-text leaf parts (the raw bytes keep them); return their names.

    mail-parser decodes and re-encodes every attachment in memory; a 20 MB proof of concept
    would cost several copies. The text parts are all the pipeline reads.
    """
    names = []
    for part in message.walk():
        if part.is_multipart():
            continue
        maintype = part.get_content_maintype()
        disposition = (part.get_content_disposition() or "").lower()
        filename = part.get_filename()
        if maintype == "text" and disposition != "attachment" and not filename:
            continue
        if maintype == "message":
            continue
        names.append(filename or part.get_content_type())
        part.set_payload("")
    return names


def _text_of(mp: mailparser.MailParser) -> str:
    plain = [t for t in (mp.text_plain or []) if t and t.strip()]
    if plain:
        return "\n\n".join(plain)
    htmls = [t for t in (mp.text_html or []) if t and t.strip()]
    if htmls:
        return html.unescape(_TAG.sub("", "\n\n".join(htmls)))
    return ""


def parse(raw: bytes) -> ParsedMail:
    """Parse raw bytes. Never raises for malformed mail except ``Unprocessable``."""
    try:
        message = email.message_from_bytes(elide_bulk(raw))
    except RecursionError as exc:
        raise Unprocessable("MIME structure nested too deeply to parse") from exc
    except Exception as exc:  # noqa: BLE001 - the parser's failure becomes the reason
        raise Unprocessable(f"mail parser failed: {type(exc).__name__}: {exc}"[:500]) from exc
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key.lower(), []).append(" ".join(str(value).split()))

    from_addr, from_name, from_problem = _single_address(message, "From")
    if from_addr and "sender" in headers:
        _, _, sender_problem = _single_address(message, "Sender")
        if sender_problem:
            from_addr, from_problem = None, sender_problem

    try:
        attachments = strip_attachments(message)
        mp = mailparser.MailParser(message)
    except RecursionError as exc:
        raise Unprocessable("MIME structure nested too deeply to parse") from exc
    except Exception as exc:  # noqa: BLE001 - the parser's failure becomes the reason
        raise Unprocessable(f"mail parser failed: {type(exc).__name__}: {exc}"[:500]) from exc

    try:
        text = _text_of(mp)
    except RecursionError as exc:
        raise Unprocessable("MIME structure nested too deeply to parse") from exc
    content_type = _safe(lambda: message.get_content_type(), "text/plain")
    report_type = _safe(lambda: message.get_param("report-type", "") or "", "")
    defects = _safe(lambda: [str(d) for d in mp.defects][:50], [])
    subject = _safe(lambda: str(_strict(message, "Subject") or ""), headers.get("subject", [""])[0])
    return ParsedMail(
        message_id=(_msgids(headers.get("message-id", [""])[0]) or [None])[0],
        in_reply_to=_msgids(" ".join(headers.get("in-reply-to", []))),
        references=_msgids(" ".join(headers.get("references", []))),
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        from_problem=from_problem,
        return_path=_return_path(message),
        to_addrs=_address_list(message, "To") + _address_list(message, "Cc"),
        text=text,
        headers=headers,
        content_type=content_type,
        report_type=str(report_type).lower(),
        received_count=len(headers.get("received", [])),
        defects=defects,
        attachments=attachments,
    )
