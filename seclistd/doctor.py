"""`seclistd doctor`: check the database, IMAP, relay and GnuPG home; say how to fix each."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seclistd import db
from seclistd.config import Settings


@dataclass(frozen=True)
class Result:
    check: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_database(settings: Settings) -> Result:
    try:
        engine = db.make_engine(settings.database.url)
        problem = db.schema_problem(engine)
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        return Result("database", False, f"cannot connect ({_first_line(exc)}); check "
                      "database.url and that the server runs")
    if problem:
        return Result("database", False, f"reachable but {problem}")
    return Result("database", True, f"reachable, schema {db.REVISIONS[-1]}")


def check_imap(settings: Settings) -> Result:
    s = settings.imap
    if not s.enabled:
        return Result("imap", True, "disabled (imap.enabled = false)")
    from seclistd.intake.imap import connect

    try:
        client = connect(s)
        try:
            client.select_folder(s.folder, readonly=True)
        finally:
            client.logout()
    except Exception as exc:  # noqa: BLE001
        return Result("imap", False, f"{s.host}:{s.port}: {_first_line(exc)}; check imap.host, "
                      "imap.port, imap.security, imap.username and the password")
    return Result("imap", True, f"logged in to {s.host}:{s.port} and opened {s.folder}")


def check_relay(settings: Settings) -> Result:
    s = settings.relay
    if s.transport == "maildir":
        path = Path(s.maildir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            writable = os.access(path, os.W_OK)
        except OSError as exc:
            return Result("relay", False, f"maildir {path}: {exc.strerror}; check relay.maildir")
        if not writable:
            return Result("relay", False, f"maildir {path} is not writable; fix its owner")
        return Result("relay", True, f"maildir {path} is writable")
    from seclistd.relay import SmtpTransport

    try:
        SmtpTransport(s).connect().quit()
    except Exception as exc:  # noqa: BLE001
        return Result("relay", False, f"{s.host}:{s.port}: {_first_line(exc)}; check "
                      "relay.host, relay.port, relay.security and the credentials")
    return Result("relay", True, f"SMTP {s.host}:{s.port} answered")


def check_gnupg(settings: Settings) -> Result:
    home = Path(settings.gnupg.home)
    if shutil.which("gpg") is None:
        return Result("gnupg", False, "gpg is not installed; apt-get install gnupg")
    if not home.is_dir():
        return Result("gnupg", False, f"home {home} does not exist; create it (mode 0700) or "
                      "set gnupg.home")
    if not settings.gnupg.key:
        return Result("gnupg", False, f"home {home} exists but no project key is set: "
                      "`seclistd keys generate`, then gnupg.key = FINGERPRINT")
    from seclistd.crypto import keyring_for

    info = next((k for k in keyring_for(settings.gnupg).list_keys(secret=True)
                 if k.fingerprint == settings.gnupg.key), None)
    if info is None:
        return Result("gnupg", False, f"no secret key {settings.gnupg.key} in {home}; "
                      "`seclistd keys import` it or correct gnupg.key")
    if info.revoked or info.expired:
        return Result("gnupg", False, f"project key {info.fingerprint} is "
                      f"{'revoked' if info.revoked else 'expired'}; generate a new one")
    return Result("gnupg", True, f"project key {info.fingerprint} in {home}")


CHECKS: tuple[Callable[[Settings], Result], ...] = (
    check_database, check_imap, check_relay, check_gnupg)


def run_checks(settings: Settings) -> list[Result]:
    return [check(settings) for check in CHECKS]
