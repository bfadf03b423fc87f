"""Real GnuPG homes for the tests, and builders for signed and encrypted mail.

Homes live in short directories under /tmp (gpg's agent socket fails on paths over ~100
characters) and their agents are killed when the test ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gnupg

ENTITY_HEAD = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"


def crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


@dataclass
class Home:
    path: Path
    gpg: gnupg.GPG = field(init=False)

    def __post_init__(self) -> None:
        self.gpg = gnupg.GPG(gnupghome=str(self.path), options=["--no-random-seed-file"])

    def generate(self, uid_name: str, email: str, expire: str = "0") -> str:
        result = self.gpg.gen_key(self.gpg.gen_key_input(
            key_type="EDDSA", key_curve="ed25519", subkey_type="ECDH", subkey_curve="cv25519",
            name_real=uid_name, name_email=email, no_protection=True, expire_date=expire))
        assert result.fingerprint, result.stderr
        return str(result.fingerprint)

    def run(self, *args: str, data: bytes = b"", faketime: str | None = None) -> bytes:
        """gpg in this home; ``faketime`` an offset such as "-240h" for its clock (libfaketime
        preloaded directly: the wrapper cannot run inside a suite that runs under it)."""
        env = None
        if faketime:
            libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
            assert libs, "libfaketime is missing: apt-get install faketime (make test does)"
            env = {**os.environ, "LD_PRELOAD": str(libs[0]), "FAKETIME": faketime}
        done = subprocess.run(["gpg", "--homedir", str(self.path), "--batch", "--yes",
                               "--trust-model", "always", "--pinentry-mode", "loopback",
                               "--passphrase", "", *args], input=data, capture_output=True,
                              env=env)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    def export(self, fpr: str) -> bytes:
        return self.run("--armor", "--export", fpr)

    def sign(self, data: bytes, fpr: str, faketime: str | None = None) -> bytes:
        return self.run("--armor", "--detach-sign", "--digest-algo", "SHA256", "-u", fpr,
                        data=data, faketime=faketime)

    def encrypt(self, data: bytes, to_fpr: str, sign_fpr: str | None = None) -> bytes:
        args = ["--armor", "--encrypt", "-r", to_fpr]
        if sign_fpr:
            args += ["--sign", "-u", sign_fpr]
        return self.run(*args, data=data)

    def decrypt(self, data: bytes) -> tuple[bool, bytes]:
        done = subprocess.run(["gpg", "--homedir", str(self.path), "--batch", "--decrypt"],
                              input=data, capture_output=True)
        return done.returncode == 0, done.stdout

    def revocation(self, fpr: str) -> bytes:
        cert = (self.path / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
        return cert.replace(":-----BEGIN PGP PUBLIC KEY BLOCK-----",
                            "-----BEGIN PGP PUBLIC KEY BLOCK-----").encode()

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.path), "--kill", "gpg-agent"],
                       capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)


def new_home() -> Home:
    path = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    path.chmod(0o700)
    return Home(path)


def headers(sender: str, subject: str, message_id: str | None = None, extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: security@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id or f'<{uuid.uuid4().hex}@example.net>'}\r\n"
            f"Date: Thu, 19 Nov 2026 15:00:00 +0000\r\nMIME-Version: 1.0\r\n{extra}")


def entity(text: str) -> bytes:
    return (ENTITY_HEAD + crlf(text)).encode("utf-8")


def signed_mail(sender: str, subject: str, signed: bytes, signature: bytes, *,
                preamble: str = "", epilogue: str = "", message_id: str | None = None) -> bytes:
    boundary = f"sig-{uuid.uuid4().hex[:12]}"
    return (headers(sender, subject, message_id)
            + f'Content-Type: multipart/signed; micalg=pgp-sha256; '
              f'protocol="application/pgp-signature"; boundary="{boundary}"\r\n\r\n'
            + crlf(preamble) + f"--{boundary}\r\n").encode() + signed + (
        f"\r\n--{boundary}\r\nContent-Type: application/pgp-signature; name=signature.asc\r\n"
        f"\r\n").encode() + signature + f"\r\n--{boundary}--\r\n{crlf(epilogue)}".encode()


def encrypted_mail(sender: str, subject: str, armored: bytes,
                   message_id: str | None = None) -> bytes:
    boundary = f"enc-{uuid.uuid4().hex[:12]}"
    return (headers(sender, subject, message_id)
            + f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
              f'boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
              f"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
              f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + (
        armored + f"\r\n--{boundary}--\r\n".encode())


def with_key_attached(text: str, key: bytes) -> bytes:
    """A multipart/mixed entity: the report text and the sender's public key."""
    boundary = f"mix-{uuid.uuid4().hex[:12]}"
    return (f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
            + ENTITY_HEAD + crlf(text) + f"\r\n--{boundary}\r\n"
            + "Content-Type: application/pgp-keys; name=key.asc\r\n"
              "Content-Disposition: attachment; filename=key.asc\r\n\r\n").encode() + (
        key + f"\r\n--{boundary}--\r\n".encode())
