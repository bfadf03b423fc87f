"""`seclistd doctor`: check the whole installation, read-only, and say how to fix each failure.

Each check returns one ``Result``: a ``name`` (fixed, for scripts), a ``status`` (``ok``,
``warn`` or ``fail``), a one-line ``detail`` saying what was found and, unless it is ok, a
one-line ``fix``. Only a ``fail`` makes the command exit 1: a warning (a key that expires
soon, a suspended member, an IMAP folder the daemon will create) needs attention, not a stop.

The checks change nothing: no database is created or migrated, no IMAP folder created or
message moved, no mail sent (the relay check logs in and says QUIT), no GnuPG home created.
Times are compared with the ``now`` passed in, never with gpg's clock.

What is a failure and what a warning (decided here, written down for the operator):

- the project key: missing, without its secret, revoked, expired or expiring within
  ``PROJECT_KEY_DAYS`` days is a failure: the operator owns it, and reporters and members
  encrypt to it;
- a team key (``[team]``): missing from the keyring, revoked or expired is a failure (that
  member's signed commands are refused); expiring within ``TEAM_KEY_DAYS`` days, or a team
  member with no fingerprint configured, is a warning (only that person can extend a key);
- an active member's pinned key: missing from the keyring, revoked, expired or unable to
  encrypt is a failure (embargoed mail to it is held); expiring within
  ``membership.key_expiry_warning_days`` is a warning (the daily key check warns the member
  too); a member with no pinned key fails only on a list that requires encryption;
- suspended members are listed as a warning, each with the reason on record;
- IMAP: a login that fails or a missing ``imap.folder`` fails; a missing processed or
  quarantine folder is a warning (the daemon creates both at its first pass).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import smtplib
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from seclistd import db
from seclistd.config import Settings

OK, WARN, FAIL = "ok", "warn", "fail"
PROJECT_KEY_DAYS = 30
TEAM_KEY_DAYS = 30
DEPENDENCIES = ("aiosmtpd", "imapclient", "python-gnupg", "mail-parser", "SQLAlchemy",
                "alembic", "APScheduler", "holidays", "Jinja2", "psycopg")
SHOWN = 5  # problems named one by one in a detail line; the rest are counted


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix}


def ok(name: str, detail: str) -> Result:
    return Result(name, OK, detail)


def warn(name: str, detail: str, fix: str) -> Result:
    return Result(name, WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Result:
    return Result(name, FAIL, detail, fix)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _listed(items: list[str]) -> str:
    shown = "; ".join(items[:SHOWN])
    return shown + (f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _day(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%a %Y-%m-%d %H:%M UTC")


def _command(settings: Settings, args: str) -> str:
    return f"`seclistd --config {settings.path} {args}`"


# --- the config --------------------------------------------------------------------------------

def check_config(settings: Settings, now: dt.datetime) -> Result:
    """The file parsed and validated (an invalid one never gets here: see ``config_failure``);
    inline secrets in a file others can read are a warning."""
    path = Path(settings.path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return ok("config", f"{path} is valid")
    inline = [f"{section}.{key}" for section, key, value in (
        ("imap", "password", settings.imap.password),
        ("relay", "password", settings.relay.password),
        ("gnupg", "passphrase", settings.gnupg.passphrase)) if value]
    if mode & stat.S_IROTH and inline and _is_inline(path, inline):
        return warn("config", f"{path} is valid, but others can read it and it holds "
                    f"{', '.join(inline)}",
                    f"`chmod o-r {path}`, or move the secrets to *_file credentials")
    return ok("config", f"{path} is valid")


def _is_inline(path: Path, keys: list[str]) -> bool:
    """Whether any of these secrets is written in the file itself (not as ``*_file``)."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    for where in keys:
        section, key = where.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            return True
    return False


def config_failure(path: str, problems: list[str]) -> Result:
    """The config check of a file that does not load (every other check needs it)."""
    return fail("config", _listed(problems),
                f"correct the file ({len(problems)} problem"
                f"{'s' if len(problems) != 1 else ''}; `seclistd --config {path} "
                "check-config` lists them all)")


# --- the database ------------------------------------------------------------------------------

def check_database(settings: Settings, now: dt.datetime) -> Result:
    path = db.sqlite_file(settings.database.url)
    migrate = f"run `seclistd migrate` ({_command(settings, 'migrate')})"
    if path is not None and not path.exists():
        return fail("database", f"no database at {path}",
                    f"{migrate} to create it, or correct database.url")
    try:
        engine = db.make_engine(settings.database.url)
        try:
            revision = db.schema_revision(engine)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any connection failure is reported the same way
        return fail("database", f"cannot connect ({_first_line(exc)})",
                    "check database.url (or database.url_file) and that the server runs and "
                    "accepts this user")
    head = db.REVISIONS[-1]
    if revision == head:
        return ok("database", f"reachable, schema {head} (the latest)")
    if revision is None:
        return fail("database", "reachable but empty (no schema)",
                    migrate)
    if revision in db.REVISIONS:
        return fail("database", f"reachable, schema {revision}, this seclistd needs {head}",
                    migrate)
    return fail("database", f"reachable, schema {revision} is newer than this seclistd "
                f"knows ({head})", "run the seclistd version that migrated it, or upgrade")


# --- IMAP --------------------------------------------------------------------------------------

def check_imap(settings: Settings, now: dt.datetime) -> list[Result]:
    """Log in and look at the three folders; nothing is selected read-write or created."""
    s = settings.imap
    if not s.enabled:
        return [ok("imap", "disabled (imap.enabled = false)")]
    from imapclient.exceptions import LoginError

    from seclistd.intake.imap import connect

    where = f"{s.host}:{s.port}"
    try:
        client = connect(s)
    except LoginError as exc:
        return [fail("imap", f"{where}: login as {s.username} refused ({_first_line(exc)})",
                     "check imap.username and imap.password (or imap.password_file)")]
    except ssl.SSLError as exc:
        return [fail("imap", f"{where}: TLS failed ({_first_line(exc)})",
                     "check imap.security (tls on port 993, starttls on 143) and the "
                     "server's certificate")]
    except Exception as exc:  # noqa: BLE001
        return [fail("imap", f"{where}: cannot connect ({_first_line(exc)})",
                     "check imap.host, imap.port and imap.security, and that the server runs")]
    results = [ok("imap", f"logged in to {where} as {s.username} ({s.security})")]
    try:
        missing = [name for name in (s.folder, s.processed_folder, s.quarantine_folder)
                   if not client.folder_exists(name)]
    except Exception as exc:  # noqa: BLE001
        results.append(fail("imap_folders", f"{where}: cannot list folders "
                            f"({_first_line(exc)})", "check the account's rights on the server"))
        missing = None
    finally:
        with contextlib.suppress(Exception):  # the answer is in hand already
            client.logout()
    if missing is None:
        return results
    folders = f"{s.folder}, {s.processed_folder}, {s.quarantine_folder}"
    if s.folder in missing:
        results.append(fail("imap_folders", f"the intake folder {s.folder!r} does not exist",
                            "correct imap.folder (usually INBOX) or create the folder"))
    elif missing:
        results.append(warn("imap_folders", f"{', '.join(map(repr, missing))} missing; "
                            "the daemon creates them at its first pass",
                            "nothing, or create them now (check imap.processed_folder and "
                            "imap.quarantine_folder if these names are not the ones meant)"))
    else:
        results.append(ok("imap_folders", f"{folders} exist"))
    return results


# --- the relay ---------------------------------------------------------------------------------

def check_relay(settings: Settings, now: dt.datetime) -> Result:
    s = settings.relay
    if s.transport == "maildir":
        # Read-only: the relay creates the maildir at its first delivery; the nearest
        # existing directory on its path must let it.
        path = Path(s.maildir)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            return fail("relay", f"maildir {path}: {existing} is not a writable directory",
                        f"correct relay.maildir or make {existing} writable by the daemon's "
                        "user")
        what = "is writable" if existing == path else "will be created at the first delivery"
        return ok("relay", f"maildir {path} {what}")
    return _check_smtp(settings)


def _check_smtp(settings: Settings) -> Result:
    """Connect, EHLO, STARTTLS and AUTH as configured, then QUIT: no MAIL FROM, no mail."""
    from seclistd.relay import SmtpTransport

    s = settings.relay
    where = f"{s.host}:{s.port}"
    try:
        conn = SmtpTransport(s).connect()
    except smtplib.SMTPAuthenticationError as exc:
        return fail("relay", f"{where}: AUTH as {s.username} refused ({exc.smtp_code} "
                    f"{_text(exc.smtp_error)})",
                    "check relay.username and relay.password (or relay.password_file)")
    except smtplib.SMTPNotSupportedError as exc:
        what = "AUTH" if "auth" in str(exc).lower() else "STARTTLS"
        fix = ("set relay.security = \"starttls\" (AUTH is offered only over TLS) or clear "
               "relay.username" if what == "AUTH"
               else "set relay.security to \"tls\" (port 465) or \"none\" for a local relay")
        return fail("relay", f"{where}: the server does not offer {what}", fix)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return fail("relay", f"{where}: TLS failed ({_first_line(exc)})",
                    "check relay.security (starttls on 587, tls on 465) and the server's "
                    "certificate")
    except (OSError, smtplib.SMTPException) as exc:
        return fail("relay", f"{where}: cannot connect ({_first_line(exc)})",
                    "check relay.host, relay.port and relay.security, and that the relay runs")
    done = ["connected"]
    if s.security == "starttls":
        done.append("STARTTLS")
    elif s.security == "tls":
        done.append("TLS")
    if s.username:
        done.append(f"AUTH as {s.username}")
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
    return ok("relay", f"SMTP {where}: {', '.join(done)}; no mail sent")


def _text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return (text.splitlines() or [""])[0][:200]


# --- GnuPG -------------------------------------------------------------------------------------

def check_gnupg_home(settings: Settings, now: dt.datetime) -> Result:
    home = Path(settings.gnupg.home)
    if shutil.which("gpg") is None:
        return fail("gnupg_home", "gpg is not installed", "`apt-get install gnupg`")
    if not home.exists():
        return fail("gnupg_home", f"no GnuPG home at {home}",
                    f"{_command(settings, 'keys generate')} creates it with the project key "
                    "(or set gnupg.home to an existing home)")
    if not home.is_dir():
        return fail("gnupg_home", f"{home} is not a directory", "correct gnupg.home")
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        return fail("gnupg_home", f"{home} has mode {mode:04o}: others can read the keyring",
                    f"`chmod 700 {home}`")
    try:
        with tempfile.NamedTemporaryFile(dir=home, prefix=".seclistd-doctor-"):
            pass  # deleted again on closing: the check leaves nothing behind
    except OSError as exc:
        return fail("gnupg_home", f"{home} is not writable ({exc.strerror})",
                    f"make {home} owned and writable by the daemon's user")
    return ok("gnupg_home", f"{home} exists, is writable, mode {mode:04o}")


def _keyring(settings: Settings) -> Any:
    """The keyring, only when a usable GnuPG home exists (doctor never creates one)."""
    home = Path(settings.gnupg.home)
    if shutil.which("gpg") is None or not home.is_dir():
        return None
    from seclistd.crypto import keyring_for

    try:
        return keyring_for(settings.gnupg)
    except Exception:  # noqa: BLE001 - reported by check_gnupg_home
        return None


def check_project_key(settings: Settings, now: dt.datetime) -> Result:
    home = Path(settings.gnupg.home)
    generate = _command(settings, "keys generate")
    ring = _keyring(settings)
    if ring is None:
        return fail("project_key", f"no usable GnuPG home at {home}, so no project key",
                    f"{generate} makes both (or set gnupg.home to an existing home)")
    fpr = ring.project_key()
    if fpr is None:
        return fail("project_key", f"no project key in {home}",
                    f"{generate} makes one (or set gnupg.key to the fingerprint of a secret "
                    "key in the home)")
    secret = next((k for k in ring.list_keys(secret=True) if k.fingerprint.upper() == fpr),
                  None)
    if secret is None:
        where = "gnupg.key" if settings.gnupg.key else "the key `keys generate` recorded"
        return fail("project_key", f"no secret key {fpr} ({where}) in {home}",
                    f"`seclistd keys import` the secret key, correct gnupg.key, or {generate}")
    validity = ring.validity(fpr)
    extend = (f"`gpg --homedir {home} --quick-set-expire {fpr} 2y` and again with `'*'` "
              "after it for the subkeys, then publish the key again (`seclistd keys export`)")
    if validity is None or validity.revoked or not validity.encryption:
        what = ("is revoked" if validity and validity.revoked == "the key"
                else f"has {validity.revoked} revoked" if validity and validity.revoked
                else "cannot encrypt")
        return fail("project_key", f"project key {fpr} {what}",
                    f"{generate} --force makes a new one; publish it")
    if validity.expires is not None:
        if validity.expires <= now:
            return fail("project_key", f"project key {fpr} expired on {_day(validity.expires)}",
                        extend)
        days = (validity.expires - now).days
        if validity.expires <= now + dt.timedelta(days=PROJECT_KEY_DAYS):
            return fail("project_key", f"project key {fpr} expires on "
                        f"{_day(validity.expires)}, in {days} days (under "
                        f"{PROJECT_KEY_DAYS})", extend)
        return ok("project_key", f"project key {fpr} in {home}, with its secret, expires "
                  f"{_day(validity.expires)}")
    return ok("project_key", f"project key {fpr} in {home}, with its secret, no expiry")


def _key_problem(validity: Any, now: dt.datetime) -> str | None:
    """Why a public key cannot be used now (the end of a sentence), or None."""
    if validity is None:
        return "is not in the keyring"
    if validity.revoked == "the key":
        return "is revoked"
    if validity.revoked:
        return f"has {validity.revoked} revoked"
    if not validity.encryption:
        return "has no key that can encrypt"
    if validity.expires is not None and validity.expires <= now:
        return f"expired on {_day(validity.expires)}"
    return None


def check_team_keys(settings: Settings, now: dt.datetime) -> Result:
    members = settings.team.members
    if not members:
        return warn("team_keys", "no [team] members configured: nobody receives new reports",
                    "add the team to [team] members, each with email and fingerprint")
    configured = [m for m in members if m.fingerprint]
    unpinned = [m.email for m in members if not m.fingerprint]
    ring = _keyring(settings)
    if ring is None and configured:
        return fail("team_keys", f"no usable GnuPG home at {settings.gnupg.home}: "
                    f"{len(configured)} team keys cannot be there",
                    "create the home (`seclistd keys generate`), then `seclistd keys import` "
                    "each team member's key")
    validities = ring.validities([m.fingerprint for m in configured]) if configured else {}
    failed, soon = [], []
    for m in configured:
        validity = validities.get(m.fingerprint)
        problem = _key_problem(validity, now)
        if problem:
            failed.append(f"{m.email}: key {m.fingerprint} {problem}")
        elif validity.expires and validity.expires <= now + dt.timedelta(days=TEAM_KEY_DAYS):
            soon.append(f"{m.email}: key {m.fingerprint} expires on {_day(validity.expires)}")
    if failed:
        return fail("team_keys", _listed(failed),
                    "`seclistd keys import FILE` each member's current key (or correct the "
                    "fingerprint in [team]); until then their signed commands are refused")
    if soon or unpinned:
        notes = soon + [f"{email}: no fingerprint in [team]" for email in unpinned]
        fixes = (["ask them to extend their keys, then `seclistd keys import` each again"]
                 if soon else [])
        if unpinned:
            fixes.append("set each one's fingerprint in [team] and `seclistd keys import` "
                         "the key (their signed commands are refused until then)")
        return warn("team_keys", _listed(notes), "; ".join(fixes))
    return ok("team_keys", f"{len(configured)} team keys present and valid for "
              f"{TEAM_KEY_DAYS} days or more")


# --- the list's members ------------------------------------------------------------------------

def _members(settings: Settings, database_ok: bool) -> list[Any] | None:
    """Every member not removed (detached rows), or None when the database cannot tell."""
    if not database_ok:
        return None
    from sqlalchemy import select

    from seclistd.list_models import Member

    engine = db.make_engine(settings.database.url)
    try:
        with db.session_factory(engine)() as session:
            rows = list(session.scalars(select(Member).where(Member.state != "removed")
                                        .order_by(Member.list_name, Member.email)))
            session.expunge_all()
            return rows
    finally:
        engine.dispose()


def check_member_keys(settings: Settings, now: dt.datetime, members: list[Any] | None
                      ) -> Result:
    if members is None:
        return warn("member_keys", "not checked: the database check failed",
                    "fix the database first")
    active = [m for m in members if m.state == "active"]
    if not active:
        return ok("member_keys", "no active members")
    encrypted = {lst.name: lst.require_encryption for lst in settings.lists}
    pinned = [m for m in active if m.fingerprint]
    ring = _keyring(settings)
    validities = ring.validities([m.fingerprint for m in pinned]) if ring and pinned else {}
    warning_days = settings.membership.key_expiry_warning_days
    failed, soon = [], []
    for m in active:
        who = f"{m.email} ({m.list_name})"
        if not m.fingerprint:
            if encrypted.get(m.list_name, True):
                failed.append(f"{who}: no pinned key")
            continue
        validity = validities.get(m.fingerprint.upper())
        problem = _key_problem(validity, now)
        if problem:
            failed.append(f"{who}: key {m.fingerprint} {problem}")
        elif validity.expires and validity.expires <= now + dt.timedelta(days=warning_days):
            soon.append(f"{who}: key expires on {_day(validity.expires)}")
    if failed:
        return fail("member_keys", _listed(failed),
                    "`seclistd keys import FILE` each member's current key, or `seclistd "
                    "members add EMAIL --key FILE` to pin a new one; embargoed mail to them "
                    "is held until then")
    if soon:
        return warn("member_keys", _listed(soon),
                    "ask these members to extend their keys and send them again (the daily "
                    "key check warns them too)")
    return ok("member_keys", f"{len(active)} active members' keys present and valid for "
              f"{warning_days} days or more")


def check_suspended(settings: Settings, now: dt.datetime, members: list[Any] | None
                    ) -> Result:
    if members is None:
        return warn("members_suspended", "not checked: the database check failed",
                    "fix the database first")
    suspended = [m for m in members if m.state == "suspended"]
    if not suspended:
        return ok("members_suspended", "no member is suspended")
    return warn("members_suspended", f"{len(suspended)} suspended (no embargoed mail): "
                + _listed([f"{m.email} ({m.list_name}): {m.state_reason or 'no reason given'}"
                           for m in suspended]),
                "`seclistd members resume EMAIL` once the reason is resolved, or "
                "`seclistd members remove EMAIL`")


# --- versions ----------------------------------------------------------------------------------

def check_python(settings: Settings, now: dt.datetime) -> Result:
    return ok("python", f"Python {platform.python_version()} ({sys.executable})")


def check_dependencies(settings: Settings, now: dt.datetime) -> Result:
    versions, missing = [], []
    for name in DEPENDENCIES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    gpg = shutil.which("gpg")
    if gpg:
        try:
            out = subprocess.run([gpg, "--version"], capture_output=True, timeout=10,
                                 text=True).stdout
            versions.append((out.splitlines() or ["gpg"])[0].replace("gpg (GnuPG) ", "GnuPG "))
        except (OSError, subprocess.SubprocessError):
            missing.append("gpg")
    else:
        missing.append("gpg")
    detail = ", ".join(versions)
    if missing:
        return warn("dependencies", f"missing: {', '.join(missing)}; {detail}",
                    "reinstall seclistd into its venv (`pip install seclistd`), and "
                    "`apt-get install gnupg` for gpg")
    return ok("dependencies", detail)


# --- all of them -------------------------------------------------------------------------------

CheckFn = Callable[[Settings, dt.datetime], Result]


def run_checks(settings: Settings, now: dt.datetime) -> list[Result]:
    """Every check, in the order shown; each one's failure stays its own."""
    results = [_guarded("config", check_config, settings, now)]
    database = _guarded("database", check_database, settings, now)
    results.append(database)
    try:
        results += check_imap(settings, now)
    except Exception as exc:  # noqa: BLE001
        results.append(_crashed("imap", exc))
    for name, check in (("relay", check_relay), ("gnupg_home", check_gnupg_home),
                        ("project_key", check_project_key), ("team_keys", check_team_keys)):
        results.append(_guarded(name, check, settings, now))
    try:
        members = _members(settings, database.status == OK)
    except Exception:  # noqa: BLE001 - the database check says why
        members = None
    results.append(_guarded("member_keys", lambda s, n: check_member_keys(s, n, members),
                            settings, now))
    results.append(_guarded("members_suspended", lambda s, n: check_suspended(s, n, members),
                            settings, now))
    results.append(_guarded("python", check_python, settings, now))
    results.append(_guarded("dependencies", check_dependencies, settings, now))
    return _scrubbed(results, settings)


def _secrets(settings: Settings) -> list[str]:
    """The configured secrets, and the base64 forms an AUTH exchange puts them in: a
    server's or library's text that doctor quotes may echo what it was sent."""
    import base64

    found = []
    for user, secret in ((settings.imap.username, settings.imap.password),
                         (settings.relay.username, settings.relay.password),
                         ("", settings.gnupg.passphrase)):
        if secret:
            found.append(secret)
            found.append(base64.b64encode(secret.encode()).decode())
            found.append(base64.b64encode(f"\0{user}\0{secret}".encode()).decode())
    try:
        from sqlalchemy.engine import make_url

        password = make_url(db.normalise_url(settings.database.url)).password
    except Exception:  # noqa: BLE001 - a URL doctor cannot parse holds no password to hide
        password = None
    if password:
        found.append(str(password))
    return sorted({f for f in found if len(f) >= 3}, key=len, reverse=True)


def _scrubbed(results: list[Result], settings: Settings) -> list[Result]:
    secrets = _secrets(settings)

    def clean(value: str) -> str:
        for secret in secrets:
            value = value.replace(secret, "[secret]")
        return value

    return [Result(r.name, r.status, clean(r.detail), clean(r.fix)) for r in results]


def _guarded(name: str, check: CheckFn, settings: Settings, now: dt.datetime) -> Result:
    try:
        return check(settings, now)
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        return _crashed(name, exc)


def _crashed(name: str, exc: BaseException) -> Result:
    return fail(name, f"the check itself failed ({_first_line(exc)})",
                "run it again; if it persists, report it with this line")


def text(results: list[Result]) -> str:
    """The human report: one line per check, its fix indented below, and a summary."""
    lines = []
    for r in results:
        lines.append(f"{r.status.upper():4} {r.name}: {r.detail}")
        if r.fix:
            lines.append(f"     fix: {r.fix}")
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    lines.append(f"{failed} failed, {warned} warning{'s' if warned != 1 else ''}, "
                 f"{len(results) - failed - warned} ok")
    return "\n".join(lines)
