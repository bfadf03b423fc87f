"""OpenPGP framing without cryptography: find armored key blocks, dearmor them, walk packets.

Keys offered by mail are judged here before gpg sees them (issue 8). The walk reads packet
headers only (RFC 9580 §4.2, old and new formats), so it is linear in its input and never
decompresses anything. A transferable public key is made of public-key, public-subkey,
user-ID, user-attribute and signature packets (trust and padding packets are tolerated);
anything else refuses the whole blob: secret key material (tags 5 and 7), a compressed data
packet (tag 8: 2.5 KB of bzip2 expand to 1 GB inside gpg), encrypted or literal data, or a
partial body length, which no key packet may use.

Written here rather than taken from PyPI: ``pgpdump`` is unmaintained since 2014, and
``pgpy`` parses (and decompresses) everything with full cryptography, which is the work this
check exists to avoid.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

PUBLIC_KEY, USER_ID, PUBLIC_SUBKEY, USER_ATTRIBUTE = 6, 13, 14, 17
MAX_USER_IDS = 32  # per key, user attributes (photos) included
MAX_SUBKEYS = 16
_ALLOWED = frozenset({2, 6, 12, 13, 14, 17, 21})  # sig, pubkey, trust, uid, subkey, uattr, pad
_REFUSED = {5: "it holds secret key material", 7: "it holds secret key material",
            8: "it holds a compressed data packet"}
_BEGIN = b"-----BEGIN PGP "
_LABELS = (b"PUBLIC KEY BLOCK", b"PRIVATE KEY BLOCK")


class NotAPublicKey(ValueError):
    """Why a blob is not a public key; the text never quotes the blob."""


@dataclass(frozen=True)
class Packet:
    tag: int
    start: int
    end: int


def packets(data: bytes) -> Iterator[Packet]:
    """Each packet's tag and extent; raises NotAPublicKey at the first packet no key has."""
    pos, size = 0, len(data)
    while pos < size:
        first = data[pos]
        if not first & 0x80:
            raise NotAPublicKey("it is not OpenPGP data (no packet header)")
        new_format = bool(first & 0x40)
        tag = first & 0x3F if new_format else (first >> 2) & 0x0F
        if tag in _REFUSED:
            raise NotAPublicKey(_REFUSED[tag])
        if tag not in _ALLOWED:
            raise NotAPublicKey(f"it holds a packet of type {tag}, which is not part of a key")
        if new_format:
            length, head = _new_length(data, pos + 1)
        else:
            length_type = first & 0x03
            if length_type == 3:
                raise NotAPublicKey("it holds a packet of indeterminate length")
            octets = (1, 2, 4)[length_type]
            if pos + 1 + octets > size:
                raise NotAPublicKey("it is truncated")
            length, head = int.from_bytes(data[pos + 1:pos + 1 + octets], "big"), 1 + octets
        end = pos + head + length
        if end > size:
            raise NotAPublicKey("it is truncated")
        yield Packet(tag, pos, end)
        pos = end


PKESK, SKESK = 1, 3  # public-key and symmetric-key encrypted session keys


def session_keys(data: bytes, limit: int) -> int:
    """How many session-key packets (one per recipient, or per passphrase) lead the
    encrypted message ``data`` (armored or binary), counting no further than ``limit + 1``.

    gpg tries the project key on every one of them (through gpg-agent: about 25 s per MB
    of such packets), so a message made of thousands is refused before gpg sees it. The
    walk stops at the first other packet; anything it cannot frame counts as none (gpg
    then judges the message as it would)."""
    if data.lstrip()[:len(_BEGIN)] == _BEGIN:
        try:
            data = _armor_body(data)
        except NotAPublicKey:
            return 0
    count, pos = 0, 0
    try:
        while pos < len(data) and count <= limit:
            first = data[pos]
            if not first & 0x80:
                break
            new_format = bool(first & 0x40)
            tag = first & 0x3F if new_format else (first >> 2) & 0x0F
            if tag not in (PKESK, SKESK):
                break
            if new_format:
                length, head = _new_length(data, pos + 1)
            else:
                length_type = first & 0x03
                if length_type == 3:
                    break
                octets = (1, 2, 4)[length_type]
                length = int.from_bytes(data[pos + 1:pos + 1 + octets], "big")
                head = 1 + octets
            count += 1
            pos += head + length
    except NotAPublicKey:  # a partial length or a truncated header: no session key packet
        pass
    return count


def recipient_key_ids(data: bytes, limit: int = 16) -> list[str] | None:
    """The key IDs (16 upper-case hex digits) that the session-key packets leading the
    encrypted message ``data`` (armored or binary) are addressed to, in order; None when
    the message cannot be framed, when more than ``limit`` lead it, or when one is not a
    version 3 public-key packet naming its key (a passphrase, a hidden recipient, a format
    this walk does not know): the caller then cannot tell whom it is for.

    Reads our own ciphertext to check its recipients without another gpg process."""
    if data.lstrip()[:len(_BEGIN)] == _BEGIN:
        try:
            data = _armor_body(data)
        except NotAPublicKey:
            return None
    found: list[str] = []
    pos = 0
    try:
        while pos < len(data):
            first = data[pos]
            if not first & 0x80:
                return None
            new_format = bool(first & 0x40)
            tag = first & 0x3F if new_format else (first >> 2) & 0x0F
            if tag == SKESK:
                return None  # a passphrase could open it too
            if tag != PKESK:
                break  # the encrypted data itself (or anything else) ends the list
            if new_format:
                length, head = _new_length(data, pos + 1)
            else:
                length_type = first & 0x03
                if length_type == 3:
                    return None
                octets = (1, 2, 4)[length_type]
                length = int.from_bytes(data[pos + 1:pos + 1 + octets], "big")
                head = 1 + octets
            body = data[pos + head:pos + head + length]
            key_id = body[1:9]
            if len(body) < 10 or body[0] != 3 or key_id == bytes(8) or len(found) >= limit:
                return None
            found.append(key_id.hex().upper())
            pos += head + length
    except NotAPublicKey:  # a session-key packet with a partial length, or truncated
        return None
    return found or None


def _new_length(data: bytes, at: int) -> tuple[int, int]:
    """(body length, header length) of a new-format packet whose length starts at ``at``."""
    if at >= len(data):
        raise NotAPublicKey("it is truncated")
    octet = data[at]
    if octet < 192:
        return octet, 2
    if octet < 224:
        if at + 1 >= len(data):
            raise NotAPublicKey("it is truncated")
        return ((octet - 192) << 8) + data[at + 1] + 192, 3
    if octet == 255:
        if at + 5 > len(data):
            raise NotAPublicKey("it is truncated")
        return int.from_bytes(data[at + 1:at + 5], "big"), 6
    raise NotAPublicKey("it uses a partial body length, which no key packet may")


def split_keys(data: bytes) -> list[bytes]:
    """The binary public keys in ``data``, one per public-key packet.

    gpg checks every self-signature on import (about 2 ms each here, under load): a key
    with more than ``MAX_USER_IDS`` user IDs or ``MAX_SUBKEYS`` subkeys is refused, which no
    reporter's own key comes near.
    """
    starts = []
    user_ids = subkeys = 0
    for number, packet in enumerate(packets(data)):
        if number == 0 and packet.tag != PUBLIC_KEY:
            raise NotAPublicKey("it does not start with a public key")
        if packet.tag == PUBLIC_KEY:
            starts.append(packet.start)
            user_ids = subkeys = 0
        user_ids += packet.tag in (USER_ID, USER_ATTRIBUTE)
        subkeys += packet.tag == PUBLIC_SUBKEY
        if user_ids > MAX_USER_IDS:
            raise NotAPublicKey(f"it has more than {MAX_USER_IDS} user IDs")
        if subkeys > MAX_SUBKEYS:
            raise NotAPublicKey(f"it has more than {MAX_SUBKEYS} subkeys")
    if not starts:
        raise NotAPublicKey("it is empty")
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def is_armored(data: bytes) -> bool:
    return data.lstrip()[:len(_BEGIN)] == _BEGIN


def armored_blocks(text: bytes, limit: int) -> list[bytes]:
    """Up to ``limit`` armored public or private key blocks in ``text``, in order.

    Linear: each BEGIN line is looked at once, and a label whose END marker is missing is
    not searched for again (8,000 unterminated BEGIN lines cost one pass, not 8,000).
    """
    found: list[bytes] = []
    unterminated: set[bytes] = set()
    pos = 0
    while len(found) < limit:
        start = text.find(_BEGIN, pos)
        if start < 0:
            break
        label_at = start + len(_BEGIN)
        label_end = text.find(b"-----", label_at, label_at + 40)
        label = text[label_at:label_end] if label_end > 0 else b""
        if label not in _LABELS or label in unterminated:
            pos = label_at
            continue
        marker = b"-----END PGP " + label + b"-----"
        end = text.find(marker, label_end)
        if end < 0:
            unterminated.add(label)
            pos = label_at
            continue
        found.append(text[start:end + len(marker)])
        pos = end + len(marker)
    return found


def dearmor(block: bytes) -> bytes:
    """The binary content of one armored key block (the checksum is left to gpg)."""
    lines = block.strip().splitlines()
    label = lines[0].strip()[len(_BEGIN):].rstrip(b"-") if lines else b""
    if label == b"PRIVATE KEY BLOCK":
        raise NotAPublicKey("it holds secret key material")
    if label != b"PUBLIC KEY BLOCK":
        raise NotAPublicKey("it is not an armored public key block")
    return _armor_body(block)


def _armor_body(block: bytes) -> bytes:
    """The base64 content of an armored block of any label, decoded (linear)."""
    lines = block.strip().splitlines()
    body: list[bytes] = []
    in_headers = True
    for line in lines[1:]:
        line = line.strip()
        if line.startswith(b"-----END PGP "):
            break
        if in_headers:
            if not line or b":" in line:  # armor headers, then the blank line
                in_headers = bool(line)
                continue
            in_headers = False
        if line and not line.startswith(b"="):  # "=XXXX" is the CRC-24 line
            body.append(line)
    try:
        return base64.b64decode(b"".join(body), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NotAPublicKey("its armor is not valid base64") from exc
