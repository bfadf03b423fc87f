"""OpenPGP: the only importer of python-gnupg. Decrypt, verify, encrypt, sign, the keyring.

The library's obvious usage is wrong in several ways (NOTES.md), so:
- ``verify`` reads gpg's status lines itself: the number of signatures, each one's result,
  VALIDSIG's *primary-key* fingerprint, key expiry and revocation. ``.valid`` alone is true
  for any good signature by any key.
- ``decrypt`` passes ``--max-output``: a 1.3 KB message can expand to 1 GB. python-gnupg still
  reports such a run as "decryption ok" with the output cut short, so the cut is detected
  from gpg's own message and the output length.
- ``encrypt`` takes a fingerprint, never an address (an address matches any key whose user
  ID contains it), and checks the ciphertext's recipients before returning it (read from
  its session-key packets: one gpg process per message, ``keys`` looks a batch up at once).
- Keyring writes (generate, import) are serialised: a thread lock and a file lock on the
  home, since concurrent imports on one home lose keys. ``--no-random-seed-file`` keeps
  parallel gpg processes from sleeping on the seed file's lock.

Two keyrings, so that nothing a mail carries touches the project's secret keys:

- The *project* home is ``gnupg.home``: the project key (secret and public) and the keys the
  operator imports (``seclistd keys import``: the team's keys, a reporter's key). Only the
  operator writes here; mail never does.
- The *offered* home is ``gnupg.home/offered``, a GnuPG home of its own (its own
  ``private-keys-v1.d``, never an agent: ``--no-autostart``). Keys that mail offers
  (attachments, pasted blocks, Autocrypt) go there, and only after ``seclistd.packets`` has
  seen public key packets alone (a few per message, capped in size, nothing compressed) and
  ``gpg --import-options show-only`` has listed no ``sec``/``ssb`` record; each gpg run has a
  time limit. A key the project home holds already is never imported there again.
- Reading (decrypt, verify, encrypt, look a key up) runs in the project home with the offered
  public keyring added (``--keyring offered/pubring.kbx``): the project keyring comes first,
  and secret keys can only come from the project home's own agent. Decisions that are the
  operator's (the project key, the one key for an address when an outbox row is retried)
  look at the project keyring alone.

The project key is ``gnupg.key`` when set, else the one ``seclistd keys generate`` made,
whose fingerprint it records in ``gnupg.home/seclistd-project-key``; so the key is usable at
once (export, doctor, decrypting, signing) with no edit of the configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import gnupg

from seclistd.config import GnupgSettings
from seclistd.packets import recipient_key_ids

GPG_OPTIONS = ["--no-random-seed-file", "--no-auto-key-retrieve", "--no-auto-key-locate"]
OFFERED_DIR = "offered"  # the offered-keys home, inside gnupg.home
PROJECT_KEY_FILE = "seclistd-project-key"  # the fingerprint `keys generate` recorded
OFFERED_BUDGET_SECONDS = 5.0  # all gpg work on the keys one message offers
FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")


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

    offered: bool = False  # in the offered-keys keyring (mail brought it), not the project's

    def as_dict(self) -> dict[str, object]:
        return {"fingerprint": self.fingerprint, "uids": list(self.uids), "secret": self.secret,
                "expires": self.expires.isoformat() if self.expires else None,
                "revoked": self.revoked, "expired": self.expired,
                "keyring": "offered" if self.offered else "project"}


@dataclass(frozen=True)
class KeyValidity:
    """How long a key can still be encrypted to, judged from the key alone (not from gpg's
    clock: the caller compares ``expires`` with its own ``now``).

    ``expires``: the earlier of the primary key's expiry and the latest expiry among its
    encryption-capable subkeys that are not revoked (None: never). ``revoked``: what is
    revoked, "" when nothing that matters is: "the key" (the primary key), or "every
    encryption subkey". ``encryption``: whether it has an encryption-capable key at all.
    """

    fingerprint: str
    expires: dt.datetime | None
    revoked: str
    encryption: bool


def _stamp(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(value), dt.UTC) if value else None
    except (TypeError, ValueError, OverflowError):
        return None


def validity_of(k: dict[str, Any]) -> KeyValidity:
    """``KeyValidity`` from one entry of python-gnupg's ``list_keys`` (see ``Keyring.validity``)."""
    fingerprint = str(k["fingerprint"]).upper()
    primary_expires = _stamp(k.get("expires"))
    if k.get("trust") == "r":
        return KeyValidity(fingerprint, primary_expires, "the key", True)
    # Capabilities: the lower-case letters are the key's own, upper-case the whole key's.
    own_caps = "".join(c for c in str(k.get("cap") or "") if c.islower())
    usable: list[dt.datetime | None] = [primary_expires] if "e" in own_caps else []
    revoked = 0
    for info in (k.get("subkey_info") or {}).values():
        if "e" not in str(info.get("cap") or "").lower():
            continue
        if info.get("trust") == "r":
            revoked += 1
            continue
        usable.append(_stamp(info.get("expires")))
    if not usable:
        return KeyValidity(fingerprint, primary_expires,
                           "every encryption subkey" if revoked else "", False)
    latest = None if None in usable else max(d for d in usable if d is not None)
    expires = min((d for d in (primary_expires, latest) if d is not None), default=None)
    return KeyValidity(fingerprint, expires, "", True)


@dataclass(frozen=True)
class OfferedImport:
    fingerprints: tuple[str, ...] = ()  # the offered keys now known (imported or already held)
    refused: tuple[str, ...] = ()  # why each other key was not imported (never its content)


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
    """The address in a user ID such as 'Alice <alice@example.org>'.

    Only the tail is searched (an address is at most 254 characters): user IDs can come
    from keys a stranger sent, and the pattern backtracks over long runs of ``@``."""
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>\s*$", uid[-300:])
    return (match.group(1) if match else uid.strip()).lower()


class Keyring:
    """The project home with the offered keyring beside it (see the module's docstring).

    Cheap to use, costly to create (gpg --version): see ``keyring_for``.
    """

    def __init__(self, settings: GnupgSettings):
        self.settings = settings
        self.home = Path(settings.home)
        self.offered_home = self.home / OFFERED_DIR
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.offered_home.mkdir(exist_ok=True, mode=0o700)
        offered_ring = self.offered_home / "pubring.kbx"
        if not offered_ring.exists():  # created once here, not by concurrent readers
            with contextlib.suppress(CryptoError):  # else the first reader creates it
                self._run(self.offered_home, ["--list-keys"], b"", timeout=30)
        # Reads see both keyrings; writes go to the project keyring alone.
        self.gpg = gnupg.GPG(gnupghome=str(self.home),
                             options=[*GPG_OPTIONS, "--keyring", str(offered_ring)])
        self.gpg.encoding = "utf-8"
        self.project = gnupg.GPG(gnupghome=str(self.home), options=GPG_OPTIONS)
        self.project.encoding = "utf-8"
        self._lock = threading.Lock()
        self._offered_lock = threading.Lock()

    @contextlib.contextmanager
    def _writing(self, home: Path | None = None) -> Iterator[None]:
        home = home or self.home
        lock = self._lock if home == self.home else self._offered_lock
        with lock, open(home / ".seclistd-write.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _passphrase(self) -> str | None:
        return self.settings.passphrase or None

    # -- the project keyring ---------------------------------------------------------------

    def project_key(self) -> str | None:
        """``gnupg.key`` when set, else the key ``keys generate`` recorded (None: neither)."""
        if self.settings.key:
            return self.settings.key.upper()
        try:
            recorded = (self.home / PROJECT_KEY_FILE).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return recorded.upper() if FINGERPRINT.fullmatch(recorded.upper()) else None

    def generate(self, name: str, email: str, expire: str = "0") -> str:
        """A new project key, recorded as the project key (``gnupg.key`` still overrides)."""
        options = {"key_type": "EDDSA", "key_curve": "ed25519", "subkey_type": "ECDH",
                   "subkey_curve": "cv25519", "name_real": name, "name_email": email,
                   "expire_date": expire}
        if self._passphrase():
            options["passphrase"] = self._passphrase()
        else:
            options["no_protection"] = True
        with self._writing():
            result = self.project.gen_key(self.project.gen_key_input(**options))
            if not result.fingerprint:
                raise CryptoError(
                    f"gpg could not generate a key: {result.status or result.stderr}")
            fingerprint = str(result.fingerprint).upper()
            record = self.home / f".{PROJECT_KEY_FILE}.new"
            record.write_text(fingerprint + "\n", encoding="ascii")
            os.replace(record, self.home / PROJECT_KEY_FILE)
        return fingerprint

    def import_keys(self, data: bytes | str) -> list[str]:
        """The operator's import (``keys import``): into the project keyring, secret or not."""
        with self._writing():
            result = self.project.import_keys(data)
        return sorted({str(f).upper() for f in result.fingerprints if f})

    def export(self, fingerprint: str) -> str:
        armored = self.gpg.export_keys(fingerprint)
        if not armored:
            raise CryptoError(f"no key {fingerprint} in {self.home}")
        return str(armored)

    def list_keys(self, secret: bool = False) -> list[KeyInfo]:
        """Secret keys (the project home's only), or all public keys of both keyrings, each
        marked with whether its secret part is here and whether mail brought it."""
        secret_listed = self.project.list_keys(True)
        if secret:
            return [_info(k, True) for k in secret_listed]
        secret_fprs = {k["fingerprint"] for k in secret_listed}
        project_fprs = {k["fingerprint"] for k in self.project.list_keys()}
        return [dataclasses.replace(_info(k, k["fingerprint"] in secret_fprs),
                                    offered=k["fingerprint"] not in project_fprs)
                for k in self.gpg.list_keys()]

    def key_for_address(self, address: str) -> str | None:
        """The one usable key the operator imported with a user ID for exactly this address
        (None: none or several). Keys that mail offered are not considered."""
        address = address.lower()
        keys = [_info(k, False) for k in self.project.list_keys()]
        found = [k.fingerprint for k in keys if not (k.revoked or k.expired)
                 and any(uid_address(uid) == address for uid in k.uids)]
        return found[0] if len(found) == 1 else None

    def key(self, fingerprint: str) -> KeyInfo | None:
        """The public key with this fingerprint (one gpg call; ``secret`` is not looked up)."""
        fingerprint = fingerprint.upper()
        listed = self.gpg.list_keys(keys=[fingerprint])
        return next((_info(k, False) for k in listed if k["fingerprint"] == fingerprint), None)

    def keys(self, fingerprints: list[str] | tuple[str, ...]) -> dict[str, KeyInfo]:
        """The public keys with these fingerprints that either keyring holds, by fingerprint,
        in one gpg call (a fingerprint gpg does not know is simply absent)."""
        wanted = sorted({f.upper() for f in fingerprints if f})
        if not wanted:
            return {}
        listed = self.gpg.list_keys(keys=wanted)
        return {str(k["fingerprint"]).upper(): _info(k, False) for k in listed
                if str(k.get("fingerprint", "")).upper() in wanted}

    def validity(self, fingerprint: str) -> KeyValidity | None:
        """Expiry and revocation of the public key with this fingerprint (both keyrings; one
        gpg call), None when neither keyring holds it."""
        fingerprint = fingerprint.upper()
        listed = self.gpg.list_keys(keys=[fingerprint])
        return next((validity_of(k) for k in listed
                     if str(k.get("fingerprint", "")).upper() == fingerprint), None)

    def validities(self, fingerprints: list[str] | tuple[str, ...]) -> dict[str, KeyValidity]:
        """``validity`` of many keys in one gpg call, by upper-case fingerprint; a key
        neither keyring holds is absent."""
        wanted = sorted({f.upper() for f in fingerprints if f})
        if not wanted:
            return {}
        listed = self.gpg.list_keys(keys=wanted)
        return {str(k["fingerprint"]).upper(): validity_of(k) for k in listed
                if str(k.get("fingerprint", "")).upper() in wanted}

    # -- the offered keyring ---------------------------------------------------------------

    @staticmethod
    def _run(home: Path, args: list[str], data: bytes, timeout: float) -> bytes:
        """gpg on ``home`` without ever starting an agent, bounded in time; its stdout."""
        command = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--no-autostart",
                   "--no-greeting", *GPG_OPTIONS, *args]
        try:
            done = subprocess.run(command, input=data, capture_output=True,
                                  timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired as exc:
            raise CryptoError(f"gpg took longer than {timeout:.1f} s") from exc
        except OSError as exc:
            raise CryptoError(f"gpg could not run ({exc.strerror})") from exc
        if done.returncode != 0 and not done.stdout:
            raise CryptoError("gpg could not read it")
        return done.stdout

    def import_offered(self, keys: tuple[bytes, ...] | list[bytes],
                       budget: float = OFFERED_BUDGET_SECONDS) -> OfferedImport:
        """Import keys a mail offered into the offered keyring, each after gpg's own look.

        ``keys`` are binary public keys that ``seclistd.packets`` passed. gpg lists each one
        first without importing it; any secret key record refuses it. All of it within
        ``budget`` seconds; what is left when the budget is spent is not imported.
        """
        deadline = time.monotonic() + budget
        fingerprints: list[str] = []
        refused: list[str] = []
        for key in keys:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise CryptoError(f"the {budget:.0f} s allowed for the offered keys of one "
                                      "message were spent")
                fingerprint = self._inspect_offered(key, left)
                if self._in_project_keyring(fingerprint):
                    fingerprints.append(fingerprint)  # the operator's copy stays the one used
                    continue
                with self._writing(self.offered_home):
                    status = self._run(self.offered_home, ["--status-fd", "1", "--import"],
                                       key, deadline - time.monotonic())
                if not any(line.split()[1:2] == [b"IMPORT_OK"]
                           and line.split()[-1] == fingerprint.encode()
                           for line in status.splitlines()):
                    raise CryptoError("gpg would not import it (no valid self-signature?)")
                fingerprints.append(fingerprint)
            except CryptoError as exc:
                refused.append(f"an offered key was not imported: {exc}")
        return OfferedImport(tuple(dict.fromkeys(fingerprints)), tuple(refused))

    def _in_project_keyring(self, fingerprint: str) -> bool:
        try:
            listed = self._run(self.home, ["--with-colons", "--list-keys", fingerprint], b"",
                               timeout=30)
        except CryptoError:  # gpg exits 2 for a key it does not have
            return False
        return f":{fingerprint}:".encode() in listed

    def _inspect_offered(self, key: bytes, timeout: float) -> str:
        """The fingerprint of the one public key in ``key``; CryptoError if it is not that."""
        listing = self._run(self.offered_home, ["--with-colons", "--import-options",
                                                "show-only", "--import"], key, timeout)
        records = [line.split(":") for line in listing.decode("utf-8", "replace").splitlines()]
        if any(r[0] in ("sec", "ssb") for r in records):
            raise CryptoError("it holds secret key material")
        primaries = [i for i, r in enumerate(records) if r[0] == "pub"]
        if len(primaries) != 1:
            raise CryptoError(f"gpg found {len(primaries)} public keys in it, expected one")
        after = records[primaries[0] + 1:]
        fingerprint = next((r[9] for r in after if r[0] == "fpr" and len(r) > 9), "").upper()
        if not FINGERPRINT.fullmatch(fingerprint):
            raise CryptoError("gpg gave no fingerprint for it")
        return fingerprint

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

    def sign_detached(self, data: bytes) -> bytes:
        """An ASCII-armored detached signature (SHA-256) of ``data`` by the project key, for
        mail that goes out signed but in plaintext (a public advisory, RFC 3156 §5)."""
        signer = self.project_key()
        if not signer:
            raise CryptoError("there is no project key to sign with: `seclistd keys generate` "
                              "or gnupg.key")
        # Not python-gnupg's ``keyid``: it becomes --default-key, which gpg ignores when it
        # has no such secret key and then signs with any other one it has. --local-user
        # fails instead; and the key gpg reports it signed with is checked as well.
        result = self.project.sign(data, detach=True, binary=False,
                                   passphrase=self._passphrase(),
                                   extra_args=["--local-user", signer, "--digest-algo", "SHA256"])
        signature = bytes(result.data or b"")
        info = self.key(signer)
        used = str(getattr(result, "fingerprint", "") or "").upper()
        if (not signature.startswith(b"-----BEGIN PGP SIGNATURE-----") or info is None
                or not any(used.endswith(k.upper()) for k in info.subkey_ids)):
            raise CryptoError(f"gpg could not sign with the project key {signer} "
                              f"({result.status or 'failed'})")
        return signature

    def encrypt(self, data: bytes, fingerprint: str, sign: str | None = None,
                known: dict[str, KeyInfo] | None = None) -> bytes:
        """ASCII-armored ciphertext for ``fingerprint`` alone, signed by ``sign``, else by the
        project key when there is one.

        ``known``: keys looked up beforehand for a batch (``keys``), which spares a gpg call
        per message; a fingerprint missing from it is a key the keyring does not hold. One
        gpg process per message then: the ciphertext's recipients are read from its own
        session-key packets (``packets.recipient_key_ids``), not by running gpg again."""
        fingerprint = fingerprint.upper()
        sign = sign or self.project_key()
        info = known.get(fingerprint) if known is not None else self.key(fingerprint)
        if info is None:
            raise CryptoError(f"no key {fingerprint} in the keyring; import it with "
                              "`seclistd keys import FILE`")
        if info.revoked or info.expired:
            raise CryptoError(f"key {fingerprint} is {'revoked' if info.revoked else 'expired'}")
        # --local-user: python-gnupg's ``sign`` is --default-key, which gpg ignores when it
        # has no such secret key and then signs with any other one it has.
        result = self.gpg.encrypt(data, [fingerprint], always_trust=True, armor=True,
                                  sign=sign, passphrase=self._passphrase() if sign else None,
                                  extra_args=["--local-user", sign] if sign else None)
        if not result.ok:
            raise CryptoError(f"gpg could not encrypt to {fingerprint}: {result.status}")
        ciphertext = bytes(result.data)
        found = recipient_key_ids(ciphertext)
        recipients = set(found or ())
        allowed = {k.upper() for k in info.subkey_ids}
        if not found or not recipients <= allowed:
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
