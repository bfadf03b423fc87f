"""OpenPGP on the way in: decrypt a message, find what is signed, find the keys it offers.

``unwrap`` decrypts PGP/MIME or inline PGP (bounded by ``limits.max_decrypted_bytes``) and
finds the top-level multipart/signed entity, of the message or of what it decrypted to
(signed, then encrypted). ``offered_keys`` collects public keys the sender attached
(application/pgp-keys), pasted (an armored block) or announced (Autocrypt ``keydata``).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from typing import TypeVar

from seclistd.config import LimitSettings
from seclistd.crypto import Keyring, Verification
from seclistd.mail import pgpmime
from seclistd.mail.parse import header_end

log = logging.getLogger(__name__)
PGP_MIME_TYPES = ("multipart/encrypted", "multipart/signed")
INLINE_MARKER = b"-----BEGIN PGP MESSAGE-----"
T = TypeVar("T")
_AUTOCRYPT_KEYDATA = re.compile(r"keydata=([A-Za-z0-9+/=\s]+)", re.I)


@dataclass(frozen=True)
class Unwrapped:
    encrypted: bool = False
    decrypted: bytes | None = None  # the inner MIME entity, or the plaintext for inline PGP
    inline: bool = False
    problem: str | None = None  # why it could not be decrypted
    too_big: bool = False
    inner_verification: Verification | None = None  # a signature made with the encryption
    signed: pgpmime.SignedParts | None = None  # top-level multipart/signed, outer or inner


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
    result = keyring.decrypt(data, limits.max_decrypted_bytes)
    if not result.ok:
        return Unwrapped(encrypted=True, inline=not is_mime, problem=result.problem,
                         too_big=result.too_big)
    inner = result.data
    signed = _safely(pgpmime.signed_parts, inner) if is_mime else None
    return Unwrapped(encrypted=True, decrypted=inner, inline=not is_mime,
                     inner_verification=result.verification, signed=signed)


def _safely(analyse: Callable[[bytes], T], data: bytes) -> T | None:
    try:
        return analyse(data)
    except Exception:  # noqa: BLE001 - hostile structure: neither signed nor encrypted
        log.warning("could not analyse the OpenPGP structure of a message", exc_info=True)
        return None


def offered_keys(raw: bytes, decrypted: bytes | None) -> list[bytes]:
    """Public keys the message offers, each as bytes gpg can import."""
    keys: list[bytes] = []
    for source in (raw, decrypted or b""):
        if not source:
            continue
        keys += [m.group(0) for m in pgpmime.ARMORED_KEY.finditer(source)]
        try:
            message = message_from_bytes(source)
        except Exception:  # noqa: BLE001 - a part we cannot parse offers nothing
            continue
        for part in message.walk():
            if part.get_content_type() == "application/pgp-keys":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes) and payload not in keys:
                    keys.append(payload)
    head = message_from_bytes(raw[:header_end(raw) + 4])
    for value in head.get_all("Autocrypt", []):
        match = _AUTOCRYPT_KEYDATA.search(str(value))
        if match:
            try:
                keys.append(base64.b64decode("".join(match.group(1).split()), validate=True))
            except ValueError:
                continue
    return list(dict.fromkeys(keys))
