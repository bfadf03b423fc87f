"""OpenPGP on the way in: decrypt a message, find what is signed, find the keys it offers.

``unwrap`` decrypts PGP/MIME or inline PGP (bounded by ``limits.max_decrypted_bytes``) and
finds the top-level multipart/signed entity, of the message or of what it decrypted to
(signed, then encrypted). ``offered_keys`` collects public keys the sender attached
(application/pgp-keys), pasted (an armored block) or announced (Autocrypt ``keydata``), and
judges them with ``seclistd.packets`` before gpg sees any: a few per message, each capped in
size, public key packets only.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from seclistd import packets
from seclistd.config import LimitSettings
from seclistd.crypto import Keyring, Verification
from seclistd.errors import describe
from seclistd.mail import pgpmime
from seclistd.mail.parse import header_end, message_from_bytes

log = logging.getLogger(__name__)
PGP_MIME_TYPES = ("multipart/encrypted", "multipart/signed")
INLINE_MARKER = pgpmime.MESSAGE[0]
T = TypeVar("T")
_AUTOCRYPT_KEYDATA = re.compile(r"keydata=([A-Za-z0-9+/=\s]+)", re.I)
MAX_RECIPIENTS = 32  # session-key packets an encrypted message may lead with
DECRYPT_RATIO, DECRYPT_FLOOR = 100, 8 * 1024 * 1024
MAX_OFFERED_KEYS = 3  # keys looked at per message; each costs two gpg runs
MAX_KEY_BYTES = 64 * 1024  # per key blob as sent (armored or binary)


@dataclass(frozen=True)
class Unwrapped:
    encrypted: bool = False
    decrypted: bytes | None = None  # the inner MIME entity, or the plaintext for inline PGP
    inline: bool = False
    problem: str | None = None  # why it could not be decrypted
    too_big: bool = False
    inner_verification: Verification | None = None  # a signature made with the encryption
    signed: pgpmime.SignedParts | None = None  # top-level multipart/signed, outer or inner


@dataclass(frozen=True)
class OfferedKeys:
    keys: tuple[bytes, ...] = ()  # binary public keys, each one primary key, for gpg to inspect
    refused: tuple[str, ...] = ()  # why each refused key was refused (never its content)


def unwrap(raw: bytes, content_type: str, keyring_of: Callable[[], Keyring | None],
           limits: LimitSettings) -> Unwrapped:
    """Decrypt if encrypted (the keyring is only built when needed); find what is signed.

    A structure that cannot be analysed counts as neither encrypted nor signed: that fails
    closed (a command in it is refused) and the raw message is kept either way. Plain mail
    (most of it) is let through on its already parsed type and one substring test.
    """
    if content_type not in PGP_MIME_TYPES and INLINE_MARKER not in raw:
        return Unwrapped()
    found = _safely(pgpmime.encrypted_payload, raw)
    if found is None:
        return Unwrapped(signed=_safely(pgpmime.signed_parts, raw))
    data, is_mime = found
    keyring = keyring_of()
    if keyring is None:
        return Unwrapped(encrypted=True, inline=not is_mime,
                         problem="cannot decrypt: no GnuPG home configured")
    recipients = packets.session_keys(data, MAX_RECIPIENTS)
    if recipients > MAX_RECIPIENTS:
        return Unwrapped(encrypted=True, inline=not is_mime,
                         problem=f"cannot decrypt: it is encrypted to more than "
                                 f"{MAX_RECIPIENTS} recipients, which no report needs")
    cap = decrypted_cap(len(data), limits.max_decrypted_bytes)
    result = keyring.decrypt(data, cap)
    if result.too_big:
        return Unwrapped(encrypted=True, inline=not is_mime, too_big=True,
                         problem=f"decrypted content exceeds {cap} bytes, the most "
                                 f"{len(data)} encrypted bytes may decrypt to "
                                 f"(limits.max_decrypted_bytes, and {DECRYPT_RATIO} times the "
                                 f"encrypted size above {DECRYPT_FLOOR} bytes)")
    if not result.ok:
        return Unwrapped(encrypted=True, inline=not is_mime, problem=result.problem)
    inner = result.data
    signed = _safely(pgpmime.signed_parts, inner) if is_mime else None
    return Unwrapped(encrypted=True, decrypted=inner, inline=not is_mime,
                     inner_verification=result.verification, signed=signed)


def decrypted_cap(encrypted_bytes: int, max_decrypted_bytes: int) -> int:
    """The most a message may decrypt to: ``limits.max_decrypted_bytes``, and no more than
    ``DECRYPT_RATIO`` times its encrypted size above ``DECRYPT_FLOOR``. Text and logs
    compress 5-20 times; 6.5 KB of compressed zeros expand to 31 MB, stored whole."""
    return min(max_decrypted_bytes, max(DECRYPT_FLOOR, DECRYPT_RATIO * encrypted_bytes))


def _safely(analyse: Callable[[bytes], T], data: bytes) -> T | None:
    try:
        return analyse(data)
    except Exception as exc:  # noqa: BLE001 - hostile structure: neither signed nor encrypted
        log.warning("could not analyse the OpenPGP structure of a message: %s", describe(exc))
        return None


def offered_keys(raw: bytes, decrypted: bytes | None, max_keys: int = MAX_OFFERED_KEYS,
                 max_bytes: int = MAX_KEY_BYTES) -> OfferedKeys:
    """The public keys the message offers, judged before gpg sees any of them.

    At most ``max_keys`` are looked at (each key in a blob counts, and so does each refused
    blob); a blob over ``max_bytes`` as sent, or holding anything but public key packets
    (secret keys, compressed data), is refused with the reason and none of its content.
    """
    keys: list[bytes] = []
    refused: list[str] = []
    more = False
    for source, blob in _candidates(raw, decrypted, max_keys):
        if len(keys) + len(refused) >= max_keys:
            more = True
            break
        try:
            if blob is None:
                raise packets.NotAPublicKey("its key data is not valid base64")
            if len(blob) > max_bytes:
                raise packets.NotAPublicKey(f"it is {len(blob)} bytes, over the limit of "
                                            f"{max_bytes}")
            found = packets.split_keys(packets.dearmor(blob) if packets.is_armored(blob)
                                       else blob)
        except packets.NotAPublicKey as exc:
            refused.append(f"a key in {source} was refused: {exc}")
            continue
        for key in found:
            if key not in keys:
                if len(keys) + len(refused) >= max_keys:
                    more = True
                    break
                keys.append(key)
    if more:
        refused.append(f"more than {max_keys} keys were offered in one message; only "
                       f"{max_keys} were looked at")
    return OfferedKeys(keys=tuple(keys), refused=tuple(refused))


def _candidates(raw: bytes, decrypted: bytes | None,
                max_keys: int) -> Iterator[tuple[str, bytes | None]]:
    """(where it came from, the blob as sent) for each key block the message carries."""
    seen: set[bytes] = set()

    def new(blob: bytes) -> bool:
        normal = b"".join(blob.split())  # an armored attachment is also found as text
        if normal in seen:
            return False
        seen.add(normal)
        return True

    for source in (raw, decrypted or b""):
        if not source:
            continue
        try:
            parts = list(message_from_bytes(source).walk())
        except Exception:  # noqa: BLE001 - a structure we cannot parse offers no attachment
            parts = []
        for part in parts:
            if part.get_content_type() == "application/pgp-keys":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes) and new(payload):
                    yield "an application/pgp-keys attachment", payload
        # Enough blocks to fill the quota even when each was also an attachment.
        for block in packets.armored_blocks(source, 2 * max_keys + 1):
            if new(block):
                yield "an armored key block", block
    head = message_from_bytes(raw[:header_end(raw) + 4])
    for value in head.get_all("Autocrypt", []):
        match = _AUTOCRYPT_KEYDATA.search(str(value))
        if match:
            try:
                data = base64.b64decode("".join(match.group(1).split()), validate=True)
            except ValueError:
                yield "an Autocrypt header", None
                continue
            if new(data):
                yield "an Autocrypt header", data
