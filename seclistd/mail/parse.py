"""Parsing: limits before parsing, then mail-parser for the body and stdlib for headers.

``check_limits`` looks only at the raw bytes (size, header block) so that a hostile message
is refused before any parser sees it. ``parse`` counts every MIME entity the stdlib parser
creates (the message itself, each part at any depth, whatever its headers look like:
folded, encoded or absent) and stops at ``max_parts``, before the rest is built.
``parse`` returns a ``ParsedMail``
whose strings are decoded but *not* trusted: nothing here may be copied into an outgoing
header without ``seclistd.mail.compose.clean``.

Addresses are read with ``email.policy.default`` and a From/Sender with defects, or that is
not exactly one address, is refused (CVE-2023-27043). Message-ID, In-Reply-To and References
also come from the stdlib parser (mail-parser returns them raw and folded).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from email import errors, policy
from email.message import Message
from email.parser import BytesFeedParser, BytesHeaderParser
from email.utils import decode_params, getaddresses
from typing import Any

import mailparser

from seclistd.config import LimitSettings
from seclistd.errors import describe
from seclistd.mail.addresses import address_problem

_MSGID = re.compile(r"<[^<>\s]{1,900}>")
_BRACKETED = re.compile(r"<([^<>\s]+)>")
_WORD = re.compile(r"\S+")
_LONG_DECIMAL_REF = re.compile(r"&#([0-9]{8,}+);?")
# A run of base64 lines, matched possessively so that scanning stays linear; runs of 64 KB
# or more are an encoded attachment, not text to read.
_BASE64_RUN = re.compile(rb"^(?:[A-Za-z0-9+/]{60,100}={0,2}\r?\n)++", re.M)
BULK_BYTES = 64 * 1024
# Longest header value the parsers read (the stored bytes and ParsedMail.headers keep all).
HEADER_CHARS = 4096
MIME_HEADERS = frozenset({"content-type", "content-disposition", "content-id",
                          "content-transfer-encoding"})
MIME_HEADER_CHARS = 1024


class Unprocessable(Exception):
    """The message cannot be processed; the text is the quarantine reason."""


class TooManyParts(Unprocessable):
    def __init__(self, limit: int):
        super().__init__(f"message has more than {limit} MIME parts, over the limit of {limit} "
                         "(limits.max_mime_parts)")


def split_params(value: str) -> list[str]:
    """``email.message._parseparam`` in one pass, with the same result.

    The stdlib's version splits a header at each ``;`` outside quotes by recounting the
    quotes from the start of what is left at every ``;``, and copies the rest after each
    parameter: a Content-Type of 80,000 ``; `` after an open quote took 40 s to read.
    """
    plist: list[str] = []
    start = 0
    quotes = 0  # '"' minus '\\"' since ``start``: odd means inside a quoted string
    i, n = 0, len(value)
    while i <= n:
        char = value[i] if i < n else ";"
        if char == '"':
            quotes += 1 if i == start or value[i - 1] != "\\" else 0
        elif char == ";" and (quotes % 2 == 0 or i in (n, start)):
            f = value[start:i]
            if "=" in f:
                name, _, rest = f.partition("=")
                f = name.strip().lower() + "=" + rest.strip()
            plist.append(f.strip())
            start, quotes = i + 1, 0
        i += 1
    return plist


class BoundedMessage(Message):
    """``email.message.Message`` whose header parameters (boundary, charset, filename…) are
    split by ``split_params``, linear in the header's length."""

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        value = self.get(header)
        if value is None:
            return failobj
        params = []
        for p in split_params(str(value)):
            name, equals, val = p.partition("=")
            params.append((name.strip(), val.strip()) if equals else (p.strip(), ""))
        return decode_params(params)


class _Factory:
    """The parser's message factory: BoundedMessage, counting each entity it creates and
    refusing one past ``limit``."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.count = 0

    def new(self, policy: Any = policy.compat32) -> Message:
        self.count += 1
        if self.limit is not None and self.count > self.limit:
            raise TooManyParts(self.limit)
        return BoundedMessage(policy=policy)


def message_from_bytes(data: bytes, max_parts: int | None = None) -> Message:
    """``email.message_from_bytes``, with BoundedMessage entities, stopped once it has made
    more than ``max_parts`` of them. Counting what the parser builds (not header lines in
    the raw bytes) counts parts however their headers are written, and bounds the objects
    built."""
    factory = _Factory(max_parts)
    parser = BytesFeedParser(_factory=factory.new)
    factory.count = 0  # the parser calls the factory once to learn its signature
    parser.feed(data)
    return parser.close()


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


def _raw_header(message: Message, name: str) -> str | None:
    """The first ``name`` header's value as stored by the parser (8-bit bytes as surrogate
    escapes), or None when absent. ``Message.get`` would wrap such a value in a ``Header``."""
    name = name.lower()
    for key, value in message.raw_items():
        if key.lower() == name:
            return value
    return None


def _utf8(value: str) -> str | None:
    """The value with its 8-bit bytes read as UTF-8 (RFC 6532); None when they are not UTF-8."""
    if value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return None


def header_text(value: Any) -> str:
    """A header value as text: UTF-8 when it is, bytes that are not shown as U+FFFD."""
    if not isinstance(value, str):  # a compat32 Header around undecodable bytes
        value = str(value)
    text = _utf8(value)
    if text is None:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _strict(message: Message, name: str) -> Any:
    """The header as ``email.policy.default`` reads it (with defects), or None when absent.

    Only the few headers whose meaning we rely on are read strictly: the registry behind
    policy.default builds a class per header read, far too slow for every header. Raw UTF-8
    (RFC 6532, SMTPUTF8 mail) is decoded first; other 8-bit bytes become U+FFFD, which no
    address may hold (``address_problem``) but a display name or a subject may.
    """
    value = _raw_header(message, name)
    if value is None:
        return None
    return policy.default.header_fetch_parse(name, header_text(value))


def _single_address(message: Message, name: str) -> tuple[str | None, str, str | None]:
    """(addr, display name, problem) for a header that must hold exactly one address.

    Strict (CVE-2023-27043): any defect refuses the header, except a non-ASCII local part,
    which RFC 6531/6532 allow (internationalised addresses).
    """
    try:
        header = _strict(message, name)
        if header is None:
            return None, "", f"no {name} header"
        addresses, defects = header.addresses, header.defects
    except Exception as exc:  # noqa: BLE001 - stdlib header parsing raises many kinds
        return None, "", f"{name} header cannot be read ({type(exc).__name__})"
    defects = [d for d in defects if not isinstance(d, errors.NonASCIILocalPartDefect)]
    if defects:
        return None, "", f"{name} header is malformed ({defects[0]})"
    if len(addresses) != 1:
        return None, "", f"{name} header holds {len(addresses)} addresses, expected exactly one"
    addr = addresses[0]
    if not addr.username or not addr.domain:
        return None, "", f"{name} header address {addr.addr_spec!r} has no domain"
    problem = address_problem(addr.addr_spec)
    if problem:
        return None, "", f"{name} header address {problem}"
    return addr.addr_spec.lower(), str(addr.display_name or ""), None


def _address_list(message: Message, name: str) -> list[str]:
    """Addresses for display only (To, Cc): the quick parser, never used to send mail."""
    values = _safe(lambda: [header_text(v) for k, v in message.raw_items()
                            if k.lower() == name.lower()], [])
    return _safe(lambda: [a.lower() for _, a in getaddresses(values) if "@" in a][:100], [])


def _return_path(msg: Message) -> str | None:
    """The envelope sender as the final MTA recorded it; "" for <>, None when absent or
    unreadable (an address that is not UTF-8 or not an address at all)."""
    raw = _safe(lambda: _raw_header(msg, "Return-Path"), None)
    value = _utf8(raw) if raw is not None else None
    if value is None:
        return None
    value = value.strip()
    if value in ("<>", ""):
        return ""
    # The first <…> holding an @ with something on both sides, else the bare value if it
    # is one such word. (Checked in Python: a pattern with two unbounded runs around "@"
    # tries every "@" of a long run of them.)
    candidates = [m.group(1) for m in _BRACKETED.finditer(value)]
    if not candidates and _WORD.fullmatch(value):
        candidates = [value]
    found = next((c for c in candidates if "@" in c[1:-1]), None)
    if not found or address_problem(found):
        return None
    return found.lower()


def elide_bulk(raw: bytes) -> bytes:
    """The message with long base64 runs cut out, for parsing only (the stored bytes keep them).

    The stdlib parser holds each payload line as its own string: a 20 MB attachment costs
    well over 100 MB to parse. The text the pipeline reads is never such a run.
    """
    return _BASE64_RUN.sub(lambda m: b"" if len(m[0]) >= BULK_BYTES else m[0], raw)


def trim_headers(message: Message, limit: int = HEADER_CHARS,
                 names: frozenset[str] | None = None) -> None:
    """Cut each header value (of ``names``, or all) longer than ``limit`` characters at its
    last blank before that, keeping the headers' order.

    The stdlib's structured header parsers (policy.default, ``decode_header``, which
    mail-parser calls on every header) take time quadratic in the number of encoded words:
    a 100 KB Subject or From of them cost 2 s. No header the pipeline reads means anything
    past a few kilobytes; this bounds each parse to ``limit``.
    """
    items = list(message.raw_items())

    def long(name: str, value: str) -> bool:
        return len(value) > limit and (names is None or name.lower() in names)

    if not any(long(name, value) for name, value in items):
        return
    for name in {name.lower() for name, _ in items}:
        del message[name]
    for name, value in items:
        if long(name, value):
            cut = max(value.rfind(" ", 0, limit), value.rfind("\t", 0, limit))
            value = value[:cut if cut > 0 else limit].rstrip()
        message.set_raw(name, value)


def strip_attachments(message: Message) -> list[str]:
    """Drop the payloads of non-text leaf parts (the raw bytes keep them); return their names.

    mail-parser decodes and re-encodes every attachment in memory; a 20 MB proof of concept
    would cost several copies. The text parts are all the pipeline reads.
    """
    names = []
    for part in message.walk():
        # mail-parser reads these through a plain Message of its own, whose parameter
        # splitter is quadratic in the header's length (a part's headers are not bounded
        # by limits.max_header_bytes): it gets at most MIME_HEADER_CHARS of each.
        trim_headers(part, MIME_HEADER_CHARS, MIME_HEADERS)
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


def strip_tags(markup: str) -> str:
    """HTML without its tags, in one pass: what ``<[^>]*>`` removes, without that pattern's
    rescan of the rest of the text from every ``<`` that is never closed (quadratic)."""
    kept = []
    pos = 0
    while (start := markup.find("<", pos)) >= 0:
        end = markup.find(">", start + 1)
        if end < 0:
            break  # no ">" after this "<": none after any later one either
        kept.append(markup[pos:start])
        pos = end + 1
    kept.append(markup[pos:])
    return "".join(kept)


def _short_charref(match: re.Match[str]) -> str:
    digits = match.group(1).lstrip("0") or "0"
    return f"&#{digits};" if len(digits) <= 7 else "\ufffd"  # > 0x10FFFF: what unescape gives


def unescape(text: str) -> str:
    """``html.unescape``, which raises ValueError on a decimal character reference of more
    than 4300 digits (Python's limit on converting long digit strings, itself there because
    the conversion is quadratic): such references are shortened first, same result."""
    return html.unescape(_LONG_DECIMAL_REF.sub(_short_charref, text))


def _text_of(mp: mailparser.MailParser) -> str:
    plain = [t for t in (mp.text_plain or []) if t and t.strip()]
    if plain:
        return "\n\n".join(plain)
    htmls = [t for t in (mp.text_html or []) if t and t.strip()]
    if htmls:
        return unescape(strip_tags("\n\n".join(htmls)))
    return ""


def parse(raw: bytes, max_parts: int | None = None) -> ParsedMail:
    """Parse raw bytes. Never raises for malformed mail except ``Unprocessable`` (among
    others when the message has more than ``max_parts`` MIME entities)."""
    try:
        message = message_from_bytes(elide_bulk(raw), max_parts)
    except Unprocessable:
        raise
    except RecursionError as exc:
        raise Unprocessable("MIME structure nested too deeply to parse") from exc
    except Exception as exc:  # noqa: BLE001 - the parser's failure becomes the reason
        raise Unprocessable(f"mail parser failed: {describe(exc)}") from exc
    headers: dict[str, list[str]] = {}
    for key, value in message.raw_items():
        headers.setdefault(key.lower(), []).append(" ".join(header_text(value).split()))
    trim_headers(message)  # before any structured header parsing, From's included

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
        raise Unprocessable(f"mail parser failed: {describe(exc)}") from exc

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
