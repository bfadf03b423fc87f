"""Getting what a stored message carries out into files: its attachments, under safe names.

``attachments`` walks the MIME tree of a message's bytes (for an encrypted message, of its
decrypted content) and returns every attached part: each leaf that is not the message's
own text (it has a file name, ``Content-Disposition: attachment``, or a type other than
text), and each attached message (``message/*``) whole. The OpenPGP envelope parts
(``application/pgp-encrypted`` and the signature of a ``multipart/signed``) are not
attachments.

A file name in a message is a stranger's choice. ``safe_name`` keeps only its last path
component, letters, digits and a few punctuation marks, never a leading dot or dash, and a
bounded length; ``write_new`` creates the file with ``O_EXCL`` (never overwriting, never
following a planted symlink), mode 0600, adding ``-1``, ``-2``, ... before the extension
when the name is taken.
"""

from __future__ import annotations

import contextlib
import email
import mimetypes
import os
import unicodedata
from dataclasses import dataclass
from email import policy
from email.message import Message
from pathlib import Path

MAX_DEPTH = 100
MAX_NAME = 120
_KEEP = frozenset("._-+()[] ")


@dataclass(frozen=True)
class Attachment:
    name: str  # as the message gives it ("" when it gives none)
    content_type: str
    data: bytes


def attachments(raw: bytes) -> list[Attachment]:
    """The attached parts of the message ``raw``, in the order they appear."""
    found: list[Attachment] = []
    with contextlib.suppress(RecursionError):  # deeper than the stack: what was found so far
        _walk(email.message_from_bytes(raw, policy=policy.compat32), "", 0, found)
    return found


def _filename(part: Message) -> str:
    try:
        return str(part.get_filename() or "")
    except Exception:  # noqa: BLE001 - a malformed RFC 2231 name is just no name
        return ""


def _walk(part: Message, parent_type: str, depth: int, found: list[Attachment]) -> None:
    if depth > MAX_DEPTH:
        return
    ctype = part.get_content_type()
    if depth > 0 and part.get_content_maintype() == "message":
        payload = part.get_payload()
        if isinstance(payload, list):
            data = b"".join(p.as_bytes(policy=policy.compat32) for p in payload
                            if isinstance(p, Message))
        else:
            data = part.get_payload(decode=True) or b""
        found.append(Attachment(_filename(part), ctype, data))
        return
    if part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                _walk(child, ctype, depth + 1, found)
        return
    if ctype == "application/pgp-encrypted" or (
            ctype == "application/pgp-signature" and parent_type == "multipart/signed"):
        return
    name = _filename(part)
    disposition = (part.get_content_disposition() or "").lower()
    if part.get_content_maintype() == "text" and disposition != "attachment" and not name:
        return  # the message's own text
    data = part.get_payload(decode=True)
    found.append(Attachment(name, ctype, data if isinstance(data, bytes) else b""))


def safe_name(name: str, fallback: str) -> str:
    """A file name that stays in its directory and means nothing to a shell or a terminal."""
    text = unicodedata.normalize("NFKC", name or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c if c.isalnum() or c in _KEEP else "_" for c in text)
    text = " ".join(text.split()).strip(" .-")
    if not text:
        text = fallback
    if len(text) > MAX_NAME:
        stem, dot, ext = text.rpartition(".")
        ext = dot + ext if dot and 0 < len(ext) <= 16 else ""
        text = (stem if ext else text)[:MAX_NAME - len(ext)].rstrip(" .") + ext
    return text


def fallback_name(message_id: int, index: int, content_type: str) -> str:
    if content_type.startswith("message/"):
        ext = ".eml"
    else:
        ext = mimetypes.guess_extension(content_type, strict=False) or ".bin"
    return f"message{message_id}-part{index}{ext}"


def write_new(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a new file named ``name`` (or ``name-N``) in ``directory``."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    else:
        ext = "." + ext
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for n in range(100_000):
        path = directory / (name if n == 0 else f"{stem}-{n}{ext}")
        if path.parent != directory or path.name in ("", ".", ".."):
            raise ValueError(f"unsafe file name {name!r}")
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return path
    raise FileExistsError(f"no free name for {name!r} in {directory}")
