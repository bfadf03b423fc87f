"""PGP/MIME (RFC 3156) structure: find what is signed or encrypted, build encrypted mail
and signed plaintext mail.

``signed_parts`` takes the signed entity from the raw bytes as received, never from a
re-serialised part (re-serialising refolds headers and breaks valid signatures): everything
after the first ``--boundary`` line up to the CRLF before the next one, with line ends made
CRLF as RFC 3156 §5 requires. Only a message whose *top-level* type is multipart/signed
counts as signed: a signed part somewhere inside proves nothing about the rest.

``encrypt_message`` turns one of our outgoing messages into multipart/encrypted. The body
and the real Subject travel inside (protected headers); outside, the Subject shows only the
case tag. ``sign_message`` turns one into multipart/signed, plaintext (a public advisory).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value

from seclistd.mail.compose import header
from seclistd.mail.parse import header_end, message_from_bytes

MESSAGE = (b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----")
_TAG = re.compile(r"^(\[[A-Z0-9]+-\d{4}-\d{4,6}\])")


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def armored_blocks(data: bytes, markers: tuple[bytes, bytes], start: int = 0) -> Iterator[bytes]:
    """Each armored block, from a BEGIN line to the first END after it (what the lazy
    ``BEGIN.*?END`` finds), in one pass: that pattern rescans the rest of the text from
    every BEGIN that has no END, quadratic in a message of unterminated BEGIN lines."""
    begin, end = markers
    pos = start
    while (first := data.find(begin, pos)) >= 0:
        last = data.find(end, first + len(begin))
        if last < 0:
            return  # no END after this BEGIN, so none after any later BEGIN
        pos = last + len(end)
        yield data[first:pos]


@dataclass(frozen=True)
class SignedParts:
    signed: bytes  # the signed entity, CRLF, exactly as received
    signature: bytes


def param(message: Message, name: str) -> str:
    """A Content-Type parameter as a string (RFC 2231 values come back as tuples)."""
    value = message.get_param(name)
    return collapse_rfc2231_value(value) if value else ""


def top_type(raw: bytes) -> tuple[str, Message]:
    head = message_from_bytes(raw[:header_end(raw) + 4])
    return head.get_content_type(), head


def _body_parts(raw: bytes, boundary: str) -> list[bytes] | None:
    """The parts between the boundaries of a multipart body, bytes as received."""
    body = crlf(raw[header_end(raw):])
    delimiter = b"--" + boundary.encode("ascii", "replace")
    # A delimiter line starts at a line start; the first may follow the header's blank line.
    pattern = re.compile(rb"(?:^|\r\n)" + re.escape(delimiter) + rb"(--)?[ \t]*(?=\r\n|$)")
    marks = list(pattern.finditer(body))
    if len(marks) < 2:
        return None
    parts = []
    for this, following in zip(marks, marks[1:], strict=False):
        if this.group(1):  # the closing delimiter: nothing after it counts
            break
        start = this.end() + 2  # skip the CRLF ending the delimiter line
        parts.append(body[start:following.start()])
    return parts


def signed_parts(raw: bytes) -> SignedParts | None:
    """The signed entity and its signature, when the whole message is multipart/signed."""
    ctype, head = top_type(raw)
    if ctype != "multipart/signed":
        return None
    if param(head, "protocol").lower() != "application/pgp-signature":
        return None
    boundary = head.get_boundary()
    if not boundary:
        return None
    parts = _body_parts(raw, boundary)
    if parts is None or len(parts) != 2:
        return None
    signature_part = message_from_bytes(parts[1], max_parts=1)  # one leaf, never a tree
    if signature_part.get_content_type() != "application/pgp-signature":
        return None
    signature = signature_part.get_payload(decode=True)
    if not isinstance(signature, bytes):
        return None
    return SignedParts(signed=parts[0], signature=signature)


def encrypted_payload(raw: bytes) -> tuple[bytes, bool] | None:
    """(OpenPGP message, is PGP/MIME) when the message is encrypted, else None.

    PGP/MIME: the top-level type is multipart/encrypted and the second part holds the data.
    Inline: an armored PGP MESSAGE block in the body.
    """
    ctype, head = top_type(raw)
    if ctype == "multipart/encrypted":
        boundary = head.get_boundary()
        parts = _body_parts(raw, boundary) if boundary else None
        if parts and len(parts) >= 2:
            data = message_from_bytes(parts[1], max_parts=1).get_payload(decode=True)
            if isinstance(data, bytes) and data.strip():
                return data, True
    block = next(armored_blocks(raw, MESSAGE, header_end(raw)), None)
    if block is not None:
        return crlf(block), False
    return None


def split_message(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(outer header lines, the body entity) of one of our single-part messages."""
    end = header_end(raw)
    head, body = raw[:end].decode("utf-8"), raw[end:].lstrip(b"\r\n")
    lines: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and lines:
            name, value = lines[-1]
            lines[-1] = (name, value + "\r\n" + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            lines.append((name, value.strip()))
    return lines, body


CONTENT_HEADERS = ("content-type", "content-transfer-encoding", "mime-version")


def encrypt_message(raw: bytes, encrypt: Callable[[bytes], bytes], boundary: str) -> bytes:
    """Our outgoing message as PGP/MIME; ``encrypt`` turns the inner entity into armor."""
    headers, body = split_message(raw)
    subject = next((v for n, v in headers if n.lower() == "subject"), "")
    inner_head = [f"{n}: {v}" for n, v in headers if n.lower() in CONTENT_HEADERS
                  and n.lower() != "mime-version"]
    inner_head[0] = inner_head[0] + '; protected-headers="v1"' if inner_head else ""
    inner_head.append(f"Subject: {subject}")
    inner = ("\r\n".join(inner_head) + "\r\n\r\n").encode("utf-8") + body
    armored = encrypt(inner)
    tag = _TAG.match(_decoded_subject(subject))
    outer = [f"{n}: {v}" for n, v in headers
             if n.lower() not in CONTENT_HEADERS and n.lower() != "subject"]
    outer.append(header("Subject", f"{tag.group(1)} ..." if tag else "..."))
    outer += ["MIME-Version: 1.0",
              f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
              f' boundary="{boundary}"']
    parts = (f"This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"
             f"--{boundary}\r\nContent-Type: application/pgp-encrypted\r\n"
             f"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n"
             f"--{boundary}\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
             f"Content-Description: OpenPGP encrypted message\r\n"
             f"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n")
    closing = f"\r\n--{boundary}--\r\n"
    return ("\r\n".join(outer) + "\r\n\r\n" + parts).encode("utf-8") + crlf(armored).rstrip(
        b"\r\n") + closing.encode("ascii")


def _decoded_subject(value: str) -> str:
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


def sign_message(raw: bytes, sign: Callable[[bytes], bytes], boundary: str) -> bytes:
    """Our outgoing message as PGP/MIME multipart/signed (RFC 3156 §5), still plaintext.

    The signed entity is the message's content headers and body, with CRLF line ends,
    exactly as they go out; ``sign`` returns the armored detached signature of those bytes.
    ``compose.build`` writes bodies 7bit or quoted-printable, so no hop needs to re-encode
    (and so break) the signed part.
    """
    headers, body = split_message(raw)
    content = [f"{n}: {v}" for n, v in headers if n.lower() in CONTENT_HEADERS
               and n.lower() != "mime-version"]
    signed = ("\r\n".join(content) + "\r\n\r\n").encode("utf-8") + crlf(body)
    if not signed.endswith(b"\r\n"):
        signed += b"\r\n"
    # The CRLF before the next boundary belongs to the boundary, not to the signed data.
    signed = signed[:-2]
    signature = crlf(sign(signed)).rstrip(b"\r\n")
    outer = [f"{n}: {v}" for n, v in headers if n.lower() not in CONTENT_HEADERS]
    outer += ["MIME-Version: 1.0",
              'Content-Type: multipart/signed; micalg=pgp-sha256;\r\n'
              f' protocol="application/pgp-signature"; boundary="{boundary}"']
    return (("\r\n".join(outer) + "\r\n\r\n"
             "This is an OpenPGP/MIME signed message (RFC 3156).\r\n"
             f"--{boundary}\r\n").encode("utf-8") + signed
            + (f"\r\n--{boundary}\r\n"
               'Content-Type: application/pgp-signature; name="signature.asc"\r\n'
               "Content-Description: OpenPGP digital signature\r\n"
               'Content-Disposition: attachment; filename="signature.asc"\r\n\r\n').encode(
                "ascii")
            + signature + f"\r\n--{boundary}--\r\n".encode("ascii"))
