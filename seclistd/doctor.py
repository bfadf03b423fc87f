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
    path = db.sqlite_file(settings.database.url)
    if path is not None and not path.exists():
        return Result("database", False, f"no database at {path}: run `seclistd migrate`")
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
        # Read-only: the relay creates the maildir at its first delivery; the nearest
        # existing directory on its path must let it.
        path = Path(s.maildir)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            return Result("relay", False, f"maildir {path}: {existing} is not a writable "
                          "directory; check relay.maildir or fix the owner")
        what = "is writable" if existing == path else "will be created at the first delivery"
        return Result("relay", True, f"maildir {path} {what}")
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
    generate = f"`seclistd --config {settings.path} keys generate`"
    if not home.is_dir():
        return Result("gnupg", False, f"no GnuPG home at {home}, so no project key: {generate}"
                      " creates both (or set gnupg.home to an existing home)")
    from seclistd.crypto import keyring_for

    ring = keyring_for(settings.gnupg)
    fpr = ring.project_key()
    if fpr is None:
        return Result("gnupg", False, f"no project key in {home}: {generate} makes one (or "
                      "set gnupg.key to the fingerprint of a secret key in it)")
    info = next((k for k in ring.list_keys(secret=True) if k.fingerprint == fpr), None)
    if info is None:
        where = "gnupg.key" if settings.gnupg.key else "the key `keys generate` recorded"
        return Result("gnupg", False, f"no secret key {fpr} ({where}) in {home}; "
                      f"`seclistd keys import` it, correct gnupg.key, or {generate}")
    if info.revoked or info.expired:
        return Result("gnupg", False, f"project key {info.fingerprint} is "
                      f"{'revoked' if info.revoked else 'expired'}; {generate} --force "
                      "makes a new one")
    return Result("gnupg", True, f"project key {info.fingerprint} in {home}")


CHECKS: tuple[Callable[[Settings], Result], ...] = (
    check_database, check_imap, check_relay, check_gnupg)


def run_checks(settings: Settings) -> list[Result]:
    return [check(settings) for check in CHECKS]
