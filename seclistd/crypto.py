"""OpenPGP: the only importer of python-gnupg. Decrypt, verify, encrypt, sign, the keyring.

The library's obvious usage is wrong in several ways (NOTES.md), so:
- ``verify`` reads gpg's status lines itself: the number of signatures, each one's result,
  VALIDSIG's *primary-key* fingerprint, key expiry and revocation. ``.valid`` alone is true
  for any good signature by any key.
- ``decrypt`` passes ``--max-output``: a 1.3 KB message can expand to 1 GB. python-gnupg still
  reports such a run as "decryption ok" with the output cut short, so the cut is detected
  from gpg's own message and the output length.
- ``encrypt`` takes a fingerprint, never an address (an address matches any key whose user
  ID contains it), and checks the ciphertext's recipients before returning it.
- Keyring writes (generate, import) are serialised: a thread lock and a file lock on the
  home, since concurrent imports on one home lose keys. ``--no-random-seed-file`` keeps
  parallel gpg processes from sleeping on the seed file's lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import gnupg

from seclistd.config import GnupgSettings

GPG_OPTIONS = ["--no-random-seed-file", "--no-auto-key-retrieve", "--no-auto-key-locate"]


class CryptoError(Exception):
    pass


@dataclass(frozen=True)
class Signature:
    """One signature as gpg judged it."""

    result: str  # good | bad | expired-signature | expired-key | revoked-key | error
    key_id: str = ""
    primary_fingerprint: str = ""  # from VALIDSIG: the primary key, not the signing subkey
    sig_id: str = ""
    created: dt.datetime | None = None


@dataclass(frozen=True)
class Verification:
    signatures: tuple[Signature, ...] = ()
    key_problems: tuple[str, ...] = ()  # KEYEXPIRED, KEYREVOKED, ...


@dataclass(frozen=True)
class Decrypted:
    ok: bool
    data: bytes = b""
    problem: str = ""
    too_big: bool = False
    verification: Verification = field(default_factory=Verification)
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    uids: tuple[str, ...]
    secret: bool
    expires: dt.datetime | None
    revoked: bool
    expired: bool
    subkey_ids: tuple[str, ...]  # long key IDs of the primary key and its subkeys

    def as_dict(self) -> dict[str, object]:
        return {"fingerprint": self.fingerprint, "uids": list(self.uids), "secret": self.secret,
                "expires": self.expires.isoformat() if self.expires else None,
                "revoked": self.revoked, "expired": self.expired}


_RESULTS = {"GOODSIG": "good", "BADSIG": "bad", "EXPSIG": "expired-signature",
            "EXPKEYSIG": "expired-key", "REVKEYSIG": "revoked-key", "ERRSIG": "error"}


def parse_status(stderr: str) -> Verification:
    """Signatures and key problems from gpg's ``[GNUPG:]`` status lines."""
    sigs: list[dict[str, object]] = []
    problems: list[str] = []
    for line in stderr.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        parts = line[9:].split()
        if not parts:
            continue
        keyword, args = parts[0], parts[1:]
        if keyword == "NEWSIG":
            sigs.append({})
        elif keyword in _RESULTS:
            if not sigs or "result" in sigs[-1]:
                sigs.append({})
            sigs[-1]["result"] = _RESULTS[keyword]
            sigs[-1]["key_id"] = args[0] if args else ""
        elif keyword == "VALIDSIG" and sigs:
            sigs[-1]["primary"] = args[9] if len(args) >= 10 else (args[0] if args else "")
            with contextlib.suppress(ValueError, IndexError):
                sigs[-1]["created"] = dt.datetime.fromtimestamp(int(args[2]), dt.UTC)
        elif keyword == "SIG_ID" and sigs:
            sigs[-1]["sig_id"] = args[0] if args else ""
        elif keyword in ("KEYEXPIRED", "KEYREVOKED", "SIGEXPIRED", "NO_PUBKEY"):
            problems.append(keyword)
    return Verification(
        signatures=tuple(Signature(result=str(s.get("result", "error")),
                                   key_id=str(s.get("key_id", "")),
                                   primary_fingerprint=str(s.get("primary", "")).upper(),
                                   sig_id=str(s.get("sig_id", "")),
                                   created=s.get("created"))  # type: ignore[arg-type]
                         for s in sigs),
        key_problems=tuple(problems))


def _info(k: dict[str, Any], secret: bool) -> KeyInfo:
    expires = dt.datetime.fromtimestamp(int(k["expires"]), dt.UTC) if k.get("expires") else None
    return KeyInfo(fingerprint=k["fingerprint"], uids=tuple(k.get("uids", [])), secret=secret,
                   expires=expires, revoked=k.get("trust") == "r",
                   expired=k.get("trust") == "e"
                   or bool(expires and expires < dt.datetime.now(dt.UTC)),
                   subkey_ids=(k["keyid"], *(sub[0] for sub in k.get("subkeys", []))))


def uid_address(uid: str) -> str:
    """The address in a user ID such as 'Alice <alice@example.org>'."""
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>\s*$", uid)
    return (match.group(1) if match else uid.strip()).lower()


class Keyring:
    """A GnuPG home. Cheap to use, costly to create (gpg --version): see ``keyring_for``."""

    def __init__(self, settings: GnupgSettings):
        self.settings = settings
        self.home = Path(settings.home)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.gpg = gnupg.GPG(gnupghome=str(self.home), options=GPG_OPTIONS)
        self.gpg.encoding = "utf-8"
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock, open(self.home / ".seclistd-write.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _passphrase(self) -> str | None:
        return self.settings.passphrase or None

    # -- the keyring -----------------------------------------------------------------------

    def generate(self, name: str, email: str, expire: str = "0") -> str:
        options = {"key_type": "EDDSA", "key_curve": "ed25519", "subkey_type": "ECDH",
                   "subkey_curve": "cv25519", "name_real": name, "name_email": email,
                   "expire_date": expire}
        if self._passphrase():
            options["passphrase"] = self._passphrase()
        else:
            options["no_protection"] = True
        with self._writing():
            result = self.gpg.gen_key(self.gpg.gen_key_input(**options))
        if not result.fingerprint:
            raise CryptoError(f"gpg could not generate a key: {result.status or result.stderr}")
        return str(result.fingerprint)

    def import_keys(self, data: bytes | str) -> list[str]:
        with self._writing():
            result = self.gpg.import_keys(data)
        return sorted({str(f).upper() for f in result.fingerprints if f})

    def export(self, fingerprint: str) -> str:
        armored = self.gpg.export_keys(fingerprint)
        if not armored:
            raise CryptoError(f"no key {fingerprint} in {self.home}")
        return str(armored)

    def list_keys(self, secret: bool = False) -> list[KeyInfo]:
        """Secret keys, or all public keys marked with whether their secret part is here."""
        if secret:
            return [_info(k, True) for k in self.gpg.list_keys(True)]
        secret_fprs = {k["fingerprint"] for k in self.gpg.list_keys(True)}
        return [_info(k, k["fingerprint"] in secret_fprs) for k in self.gpg.list_keys()]

    def key_for_address(self, address: str) -> str | None:
        """The one usable key with a user ID for exactly this address (None: none or several)."""
        address = address.lower()
        found = [k.fingerprint for k in self.list_keys() if not (k.revoked or k.expired)
                 and any(uid_address(uid) == address for uid in k.uids)]
        return found[0] if len(found) == 1 else None

    def key(self, fingerprint: str) -> KeyInfo | None:
        """The public key with this fingerprint (one gpg call; ``secret`` is not looked up)."""
        fingerprint = fingerprint.upper()
        listed = self.gpg.list_keys(keys=[fingerprint])
        return next((_info(k, False) for k in listed if k["fingerprint"] == fingerprint), None)

    # -- messages --------------------------------------------------------------------------

    def decrypt(self, data: bytes, max_bytes: int) -> Decrypted:
        result = self.gpg.decrypt(data, passphrase=self._passphrase(),
                                  extra_args=["--max-output", str(max_bytes)])
        stderr = result.stderr or ""
        recipients = tuple(re.findall(r"^\[GNUPG:\] ENC_TO (\S+)", stderr, re.M))
        output = bytes(result.data or b"")
        if "exceeded --max-output" in stderr or len(output) >= max_bytes:
            return Decrypted(ok=False, too_big=True, recipients=recipients,
                             problem=f"decrypted content exceeds {max_bytes} bytes "
                                     "(limits.max_decrypted_bytes)")
        if not result.ok:
            reason = "no secret key for it" if "NO_SECKEY" in stderr else (
                result.status or "gpg failed")
            return Decrypted(ok=False, problem=f"cannot decrypt: {reason}",
                             recipients=recipients)
        return Decrypted(ok=True, data=output, verification=parse_status(stderr),
                         recipients=recipients)

    def verify_detached(self, data: bytes, signature: bytes) -> Verification:
        with tempfile.NamedTemporaryFile(dir=self.home, prefix=".sig-", delete=False) as f:
            f.write(signature)
            name = f.name
        try:
            result = self.gpg.verify_data(name, data)
        finally:
            os.unlink(name)
        return parse_status(result.stderr or "")

    def encrypt(self, data: bytes, fingerprint: str, sign: str | None = None) -> bytes:
        """ASCII-armored ciphertext for ``fingerprint`` alone, signed by ``sign`` if given."""
        fingerprint = fingerprint.upper()
        info = self.key(fingerprint)
        if info is None:
            raise CryptoError(f"no key {fingerprint} in the keyring; import it with "
                              "`seclistd keys import FILE`")
        if info.revoked or info.expired:
            raise CryptoError(f"key {fingerprint} is {'revoked' if info.revoked else 'expired'}")
        result = self.gpg.encrypt(data, [fingerprint], always_trust=True, armor=True,
                                  sign=sign, passphrase=self._passphrase() if sign else None)
        if not result.ok:
            raise CryptoError(f"gpg could not encrypt to {fingerprint}: {result.status}")
        ciphertext = bytes(result.data)
        recipients = {r.upper() for r in self.gpg.get_recipients(ciphertext)}
        allowed = {k.upper() for k in info.subkey_ids}
        if not recipients or not recipients <= allowed:
            raise CryptoError(f"ciphertext for {fingerprint} names other recipients "
                              f"({', '.join(sorted(recipients - allowed)) or 'none'}); not sent")
        return ciphertext


@lru_cache(maxsize=4)
def keyring_for(settings: GnupgSettings) -> Keyring:
    """One Keyring per configuration (building one runs gpg to learn its version)."""
    return Keyring(settings)


def keyring(settings: GnupgSettings) -> Keyring | None:
    """The configured keyring, or None when gpg is not installed (nothing can be decrypted,
    and mail that must be encrypted is held)."""
    if shutil.which("gpg") is None:
        return None
    return keyring_for(settings)
