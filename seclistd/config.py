"""Configuration: the one TOML file -> frozen, validated settings.

This module is the only reader of the configuration file. Every key of DESIGN.md §4 is
known here, with its type, default and check; `load()` collects *every* problem before it
gives up and reports each as ``file: section.key: what is wrong, what is expected``.
Secrets may be given inline or as ``*_file`` (a path; a relative path is looked up in
``$CREDENTIALS_DIRECTORY`` first, as itself or with ``/`` made ``_`` as systemd names the
files of a directory credential, so systemd credentials work as they are). The database URL
is one of them too (``database.url_file``): a PostgreSQL URL may hold a password.

Relative paths in the file (the SQLite database of ``database.url``, ``gnupg.home``,
``relay.maildir``, ``templates.dir`` and every ``*_file``) are relative to the file's own
directory (DESIGN.md §4), so a command means the same files from whatever directory it is
run; the settings hold them as absolute paths.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_PATH = "/etc/seclistd/seclistd.toml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_FPR = re.compile(r"^[0-9A-F]{40}$")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ProjectSettings:
    name: str
    security_address: str
    timezone: str = "UTC"
    case_prefix: str = "SEC"
    # How a reporter who never said how to be credited is credited at disclosure:
    # "name" (the name in their mail) or "anonymous".
    default_credit: str = "name"
    # What advisories (`cases export`) name: the package (default: ``name``), its OSV
    # ecosystem ("Go", "PyPI", ...; empty: the OSV record names no package) and the
    # project's web address (CSAF publisher namespace; default https://<security domain>).
    package: str = ""
    ecosystem: str = ""
    url: str = ""

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def domain(self) -> str:
        return self.security_address.rpartition("@")[2]


@dataclass(frozen=True)
class DatabaseSettings:
    # It may hold a password (database.url_file): kept out of repr() like the other secrets.
    url: str = field(default="sqlite:////var/lib/seclistd/seclistd.db", repr=False)


@dataclass(frozen=True)
class ImapSettings:
    enabled: bool = True
    host: str = ""
    port: int = 993
    security: str = "tls"
    username: str = ""
    password: str = field(default="", repr=False)
    folder: str = "INBOX"
    processed_folder: str = "seclistd-processed"
    quarantine_folder: str = "seclistd-quarantine"
    idle: bool = True
    poll_interval: int = 60
    timeout: int = 60


@dataclass(frozen=True)
class ListenerSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8025
    protocol: str = "smtp"


@dataclass(frozen=True)
class RelaySettings:
    transport: str = "smtp"
    host: str = "localhost"
    port: int = 587
    security: str = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)
    maildir: str = ""
    timeout: int = 60
    lease_seconds: int = 300
    max_age_days: int = 5


@dataclass(frozen=True)
class GnupgSettings:
    home: str = "/var/lib/seclistd/gnupg"
    key: str = ""
    passphrase: str = field(default="", repr=False)


@dataclass(frozen=True)
class CalendarSettings:
    country: str = "US"
    subdivision: str = ""
    workdays: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    extra_holidays: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlaSettings:
    ack_business_days: int = 3
    remind_after_business_days: tuple[int, ...] = (1, 2)
    fallback_ack: bool = True
    reporter_update_days: int = 14


@dataclass(frozen=True)
class TeamMember:
    email: str
    name: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class TeamSettings:
    members: tuple[TeamMember, ...] = ()
    command_auth: str = "pgp"


CRITERION_ROLES = ("contact", "pgp", "embargo", "contribute", "voucher", "link")
_CRITERION_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class CriterionSettings:
    """One membership criterion of a list's own (``[[lists]] criteria`` as tables or texts).

    ``phrases`` are extra wordings that recognise it in an applicant's copy; ``role`` is ""
    or one of ``CRITERION_ROLES`` (what the join workflow reads from its answer).
    """

    id: str
    text: str
    phrases: tuple[str, ...] = ()
    role: str = ""


@dataclass(frozen=True)
class ListSettings:
    name: str
    address: str
    # "oci", "kubernetes" (presets of seclistd.workflows.criteria) or the list's own.
    criteria: str | tuple[CriterionSettings, ...] = "oci"
    require_encryption: bool = True
    max_embargo_days: int = 14
    # Longer embargoes are accepted with a warning (to the operator and in the case's events).
    preferred_embargo_days: int = 7
    public_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class MembershipSettings:
    """Join requests, and how members stay reachable (``workflows.bounces``,
    ``workflows.member_keys``; the example config explains the bounce defaults)."""

    request_expiry_days: int = 30
    vouches_required: int = 1
    require_key_proof: bool = True
    key_expiry_warning_days: int = 14
    bounce_score_threshold: float = 3.0
    bounce_stale_after_days: int = 90
    bounce_warnings: int = 2
    bounce_warning_interval_days: int = 7
    leaks_before_removal_flag: int = 2


@dataclass(frozen=True)
class TemplateSettings:
    dir: str = ""


@dataclass(frozen=True)
class AutoreplySettings:
    """Automatic answers to senders, and how team notices collapse during a flood.

    ``max_per_sender_per_day`` counts one mailbox once however it is spelled
    (``seclistd.mail.loops.canonical_mailbox``); ``max_per_hour`` caps all automatic answers
    together. Past ``team_digest_after`` new reports (``quarantine_digest_after`` quarantined
    messages) within an hour, the team gets an hourly digest instead of one notice each.
    """

    max_per_sender_per_day: int = 5
    max_per_hour: int = 100
    team_digest_after: int = 20
    quarantine_digest_after: int = 5


@dataclass(frozen=True)
class LimitSettings:
    max_message_bytes: int = 25 * 1024 * 1024
    max_header_bytes: int = 100 * 1024
    max_mime_parts: int = 100
    max_received: int = 50
    max_decrypted_bytes: int = 32 * 1024 * 1024
    processing_seconds: float = 30


@dataclass(frozen=True)
class Settings:
    path: str
    project: ProjectSettings
    database: DatabaseSettings
    imap: ImapSettings
    listener: ListenerSettings
    relay: RelaySettings
    gnupg: GnupgSettings
    calendar: CalendarSettings
    sla: SlaSettings
    team: TeamSettings
    lists: tuple[ListSettings, ...]
    membership: MembershipSettings
    templates: TemplateSettings
    autoreply: AutoreplySettings
    limits: LimitSettings


# --- checks: each returns None when fine, else "what is wrong, what is expected" ----------

Check = Callable[[Any], str | None]


def _is_int(lo: int, hi: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{v!r} is not a whole number, expected an integer >= {lo}"
        if v < lo or (hi is not None and v > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            return f"{v} is out of range, expected an integer {bound}"
        return None

    return check


def _is_number(lo: float) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"{v!r} is not a number, expected a number >= {lo:g}"
        if v < lo:
            return f"{v} is out of range, expected a number >= {lo:g}"
        return None

    return check


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{v!r} is not a boolean, expected true or false"


def _is_str(v: Any) -> str | None:
    return None if isinstance(v, str) else f"{v!r} is not a string, expected a quoted string"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if v in choices:
            return None
        return f"{v!r} is not allowed, expected one of " + ", ".join(f'"{c}"' for c in choices)

    return check


def _address(v: Any) -> str | None:
    if not isinstance(v, str) or not _ADDRESS.match(v):
        return f"{v!r} is not a mail address, expected local@domain"
    return None


def address_problem(value: str) -> str | None:
    """None when ``value`` is a plain mail address (as the config accepts), else why not."""
    return _address(value)


def _timezone(v: Any) -> str | None:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return f"{v!r} is not a known time zone, expected an IANA name such as \"Europe/Berlin\""
    return None


def _prefix(v: Any) -> str | None:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Z][A-Z0-9]{1,15}", v):
        return f"{v!r} is not a case prefix, expected 2-16 capital letters or digits, e.g. \"SEC\""
    return None


def _db_url(v: Any) -> str | None:
    if not isinstance(v, str) or not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
        # Never echoed: a URL may hold a password, and a reload's refusal goes to the log.
        return ("is not a database URL, expected sqlite:///PATH or "
                "postgresql://user@host/db")
    return None


def _str_list(item: Check) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"{v!r} is not a list, expected a list such as [\"a\", \"b\"]"
        for x in v:
            problem = item(x)
            if problem:
                return problem
        return None

    return check


def _weekday(v: Any) -> str | None:
    if v in WEEKDAYS:
        return None
    return f"{v!r} is not a weekday, expected one of {', '.join(WEEKDAYS)}"


def _iso_date(v: Any) -> str | None:
    import datetime as dt

    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return None
    try:
        dt.date.fromisoformat(v)
    except (TypeError, ValueError):
        return f"{v!r} is not a date, expected YYYY-MM-DD"
    return None


def _web_url(v: Any) -> str | None:
    if v == "" or (isinstance(v, str) and re.fullmatch(r"https?://[^\s/?#]+[^\s]*", v)):
        return None
    return f"{v!r} is not a web address, expected e.g. https://example.org"


def _fingerprint(v: Any) -> str | None:
    if v == "" or (isinstance(v, str) and _FPR.match(v.replace(" ", "").upper())):
        return None
    return f"{v!r} is not an OpenPGP fingerprint, expected 40 hexadecimal digits"


# section -> key -> (default, check); "REQUIRED" marks keys without default.
REQUIRED = object()
_SECRET = object()  # placeholder in the schema for KEY / KEY_file pairs

SCHEMA: dict[str, dict[str, tuple[Any, Check | None]]] = {
    "project": {
        "name": (REQUIRED, _is_str),
        "security_address": (REQUIRED, _address),
        "timezone": ("UTC", _timezone),
        "case_prefix": ("SEC", _prefix),
        "default_credit": ("name", _one_of("name", "anonymous")),
        "package": ("", _is_str),
        "ecosystem": ("", _is_str),
        "url": ("", _web_url),
    },
    "database": {"url": ("sqlite:////var/lib/seclistd/seclistd.db", _db_url)},
    "imap": {
        "enabled": (True, _is_bool),
        "host": ("", _is_str),
        "port": (993, _is_int(1, 65535)),
        "security": ("tls", _one_of("tls", "starttls", "none")),
        "username": ("", _is_str),
        "password": (_SECRET, None),
        "folder": ("INBOX", _is_str),
        "processed_folder": ("seclistd-processed", _is_str),
        "quarantine_folder": ("seclistd-quarantine", _is_str),
        "idle": (True, _is_bool),
        "poll_interval": (60, _is_int(1)),
        "timeout": (60, _is_int(1)),
    },
    "listener": {
        "enabled": (False, _is_bool),
        "host": ("127.0.0.1", _is_str),
        "port": (8025, _is_int(1, 65535)),
        "protocol": ("smtp", _one_of("smtp", "lmtp")),
    },
    "relay": {
        "transport": ("smtp", _one_of("smtp", "maildir")),
        "host": ("localhost", _is_str),
        "port": (587, _is_int(1, 65535)),
        "security": ("starttls", _one_of("starttls", "tls", "none")),
        "username": ("", _is_str),
        "password": (_SECRET, None),
        "maildir": ("", _is_str),
        "timeout": (60, _is_int(1)),
        "lease_seconds": (300, _is_int(1)),
        "max_age_days": (5, _is_int(1)),
    },
    "gnupg": {
        "home": ("/var/lib/seclistd/gnupg", _is_str),
        "key": ("", _fingerprint),
        "passphrase": (_SECRET, None),
    },
    "calendar": {
        "country": ("US", None),  # checked against the holidays package below
        "subdivision": ("", _is_str),
        "workdays": (["mon", "tue", "wed", "thu", "fri"], _str_list(_weekday)),
        "extra_holidays": ([], _str_list(_iso_date)),
    },
    "sla": {
        "ack_business_days": (3, _is_int(1, 60)),
        "remind_after_business_days": ([1, 2], None),
        "fallback_ack": (True, _is_bool),
        "reporter_update_days": (14, _is_int(1)),
    },
    "team": {"members": ([], None), "command_auth": ("pgp", _one_of("pgp"))},
    "membership": {
        "request_expiry_days": (30, _is_int(1)),
        "vouches_required": (1, _is_int(0)),
        "require_key_proof": (True, _is_bool),
        "key_expiry_warning_days": (14, _is_int(1, 365)),
        "bounce_score_threshold": (3.0, _is_number(1)),
        "bounce_stale_after_days": (90, _is_int(1)),
        "bounce_warnings": (2, _is_int(0, 52)),
        "bounce_warning_interval_days": (7, _is_int(1, 365)),
        "leaks_before_removal_flag": (2, _is_int(1, 100)),
    },
    "templates": {"dir": ("", _is_str)},
    "autoreply": {
        "max_per_sender_per_day": (5, _is_int(0)),
        "max_per_hour": (100, _is_int(0)),
        "team_digest_after": (20, _is_int(0)),
        "quarantine_digest_after": (5, _is_int(0)),
    },
    "limits": {
        "max_message_bytes": (25 * 1024 * 1024, _is_int(1024)),
        "max_header_bytes": (100 * 1024, _is_int(1024)),
        "max_mime_parts": (100, _is_int(1)),
        "max_received": (50, _is_int(1)),
        "max_decrypted_bytes": (32 * 1024 * 1024, _is_int(1024)),
        "processing_seconds": (30, _is_int(1, 3600)),
    },
}

LIST_SCHEMA: dict[str, tuple[Any, Check | None]] = {
    "name": (REQUIRED, _is_str),
    "address": (REQUIRED, _address),
    "criteria": ("oci", None),
    "require_encryption": (True, _is_bool),
    "max_embargo_days": (14, _is_int(1)),
    "preferred_embargo_days": (7, _is_int(1)),
    "public_addresses": ([], _str_list(_address)),
}


class _Reader:
    """Walks the parsed TOML, collecting problems instead of stopping at the first."""

    def __init__(self, path: str, data: dict[str, Any]):
        self.path = path
        self.base = Path(os.path.abspath(path)).parent  # relative paths start here
        self.data = data
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{self.path}: {where}: {text}")

    def section(self, name: str, raw: Any, schema: dict[str, tuple[Any, Check | None]]
                ) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.problem(name, "is not a table, expected a [section] with keys")
            raw = {}
        known = set(schema) | {f"{k}_file" for k, (d, _) in schema.items() if d is _SECRET}
        for key in raw:
            if key not in known:
                self.problem(f"{name}.{key}", "unknown key, expected one of "
                             + ", ".join(sorted(known)))
        out: dict[str, Any] = {}
        for key, (default, check) in schema.items():
            if default is _SECRET:
                out[key] = self.secret(name, key, raw)
                continue
            if key not in raw:
                if default is REQUIRED:
                    self.problem(f"{name}.{key}", "is missing, expected it to be set")
                    out[key] = ""
                else:
                    out[key] = default
                continue
            value = raw[key]
            bad = check(value) if check else None
            if bad:
                self.problem(f"{name}.{key}", bad)
                out[key] = default if default is not REQUIRED else ""
            else:
                out[key] = value
        return out

    def secret(self, section: str, key: str, raw: dict[str, Any]) -> str:
        inline, path = raw.get(key), raw.get(f"{key}_file")
        if inline is not None and path is not None:
            self.problem(f"{section}.{key}", f"both {key} and {key}_file are set, expected one")
            return ""
        if inline is not None:
            if not isinstance(inline, str):
                self.problem(f"{section}.{key}", "is not a string, expected a quoted string")
                return ""
            return inline
        if path is None:
            return ""
        if not isinstance(path, str):
            self.problem(f"{section}.{key}_file", "is not a string, expected a file path")
            return ""
        resolved = Path(path)
        if not resolved.is_absolute():
            resolved = credential_path(path) or self.base / path
        try:
            return resolved.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problem(f"{section}.{key}_file",
                         f"cannot read {path} ({exc.strerror}), expected a readable file")
            return ""


def credential_path(name: str) -> Path | None:
    """The systemd credential for the relative path ``name``, if the service has one.

    ``$CREDENTIALS_DIRECTORY/name`` itself (``LoadCredential=imap-password:FILE``), else the
    name systemd gives a file of a directory loaded whole: with
    ``LoadCredential=credentials:/etc/seclistd/credentials`` the file ``imap-password`` in it
    is the credential ``credentials_imap-password``, so ``credentials/imap-password`` (the
    same file, relative to the config's directory, when a command is run by hand) finds it.
    """
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return None
    for candidate in (name, name.replace("/", "_")):
        path = Path(creds) / candidate
        if ".." not in Path(candidate).parts and path.is_file():
            return path
    return None


def _database_url(r: _Reader, raw: Any) -> Any:
    """``[database]`` with ``url_file`` read into ``url``: a PostgreSQL URL holding a
    password can then be a credential like the other secrets."""
    if not isinstance(raw, dict) or "url_file" not in raw:
        return raw
    raw = dict(raw)
    if "url" in raw:
        r.problem("database.url", "both url and url_file are set, expected one")
        raw.pop("url_file")
        return raw
    url = r.secret("database", "url", {"url_file": raw.pop("url_file")}).strip()
    if url and _db_url(url):  # never quote it: it may hold a password
        r.problem("database.url_file", "does not hold a database URL, expected one line "
                  "such as postgresql://seclistd:PASSWORD@db.example.org/seclistd")
    elif url:
        raw["url"] = url
    elif not any(p.startswith(f"{r.path}: database.url_file:") for p in r.problems):
        r.problem("database.url_file", "is an empty file, expected a file holding the "
                  "database URL, e.g. postgresql://seclistd:PASSWORD@db.example.org/seclistd")
    return raw


def _team_members(r: _Reader, raw: Any) -> tuple[TeamMember, ...]:
    if not isinstance(raw, list):
        r.problem("team.members", "is not a list, expected [{ email = ..., name = ..., "
                  "fingerprint = ... }, ...]")
        return ()
    members = []
    for i, item in enumerate(raw):
        where = f"team.members[{i}]"
        if not isinstance(item, dict):
            r.problem(where, "is not a table, expected "
                      "{ email = ..., name = ..., fingerprint = ... }")
            continue
        for key in item:
            if key not in ("email", "name", "fingerprint"):
                r.problem(f"{where}.{key}", "unknown key, expected email, name or fingerprint")
        email = item.get("email", "")
        bad = _address(email)
        if bad:
            r.problem(f"{where}.email", bad)
            continue
        fpr = item.get("fingerprint", "")
        bad = _fingerprint(fpr)
        if bad:
            r.problem(f"{where}.fingerprint", bad)
            fpr = ""
        name = item.get("name", "")
        if not isinstance(name, str):
            r.problem(f"{where}.name", "is not a string, expected a quoted string")
            name = ""
        members.append(TeamMember(email=email.lower(), name=name,
                                  fingerprint=fpr.replace(" ", "").upper()))
    return tuple(members)


def _own_criteria(r: _Reader, where: str, raw: list[Any]) -> tuple[CriterionSettings, ...]:
    """A list's own criteria: texts (ids c1, c2, ... by position) or tables
    ``{ id, text, phrases, role }``; ids unique, texts non-empty."""
    expected = ('expected a criterion text or { id = "...", text = "...", '
                'phrases = ["...", ...] }')
    out: list[CriterionSettings] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"id": f"c{i + 1}", "text": item}
        elif not isinstance(item, dict):
            r.problem(at, f"{item!r} is not allowed, {expected}")
            continue
        for key in item:
            if key not in ("id", "text", "phrases", "role"):
                r.problem(f"{at}.{key}", "unknown key, expected id, text, phrases or role")
        cid, text = item.get("id"), item.get("text")
        phrases, role = item.get("phrases", []), item.get("role", "")
        ok = True
        if not isinstance(cid, str) or not _CRITERION_ID.match(cid):
            r.problem(f"{at}.id", f"{cid!r} is not a criterion id, expected 1-32 lower-case "
                      "letters, digits, - or _ (e.g. \"pgp\")")
            ok = False
        elif cid in seen:
            r.problem(f"{at}.id", f"{cid!r} is used twice, expected each id once")
            ok = False
        if not isinstance(text, str) or not text.strip():
            r.problem(f"{at}.text", f"{text!r} is empty or missing, expected the criterion "
                      "in your own words")
            ok = False
        bad = _str_list(_is_str)(phrases)
        if bad:
            r.problem(f"{at}.phrases", bad)
            ok = False
        if role not in ("", *CRITERION_ROLES):
            r.problem(f"{at}.role", _one_of("", *CRITERION_ROLES)(role) or "")
            ok = False
        if ok:
            seen.add(cid)
            out.append(CriterionSettings(
                id=cid, text=" ".join(text.split()),
                phrases=tuple(p.strip() for p in phrases if p.strip()), role=role))
    roles = [c.role for c in out if c.role]
    for role in sorted({x for x in roles if roles.count(x) > 1}):
        r.problem(where, f"role {role!r} is given to several criteria, expected it once")
    return tuple(out)


def _lists(r: _Reader, raw: Any) -> tuple[ListSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem("lists", "is not an array of tables, expected [[lists]] blocks")
        return ()
    out = []
    for i, item in enumerate(raw):
        values = r.section(f"lists[{i}]", item, LIST_SCHEMA)
        crit = values["criteria"]
        if isinstance(crit, list) and crit:
            crit = _own_criteria(r, f"lists[{i}].criteria", crit)
        elif crit not in ("oci", "kubernetes"):
            r.problem(f"lists[{i}].criteria", f"{crit!r} is not allowed, expected \"oci\", "
                      "\"kubernetes\" or a list of criteria (texts, or tables "
                      "{ id, text, phrases })")
            crit = "oci"
        values["criteria"] = crit
        values["public_addresses"] = tuple(values["public_addresses"])
        preferred, longest = values["preferred_embargo_days"], values["max_embargo_days"]
        if isinstance(preferred, int) and isinstance(longest, int) and preferred > longest:
            r.problem(f"lists[{i}].preferred_embargo_days",
                      f"{values['preferred_embargo_days']} is more than max_embargo_days "
                      f"({values['max_embargo_days']}), expected at most that")
        out.append(ListSettings(**values))
    return tuple(out)


def parse(path: str, text: str) -> Settings:
    """Validate TOML text; raise ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [f"{path}: (file): not valid TOML ({exc}), expected TOML syntax"]) from exc
    r = _Reader(path, data)
    known = set(SCHEMA) | {"lists"}
    for name in data:
        if name not in known:
            r.problem(name, "unknown section, expected one of " + ", ".join(sorted(known)))
    raw_sections = {**data, "database": _database_url(r, data.get("database"))}
    v = {name: r.section(name, raw_sections.get(name), schema)
         for name, schema in SCHEMA.items()}

    imap = v["imap"]
    if imap["enabled"]:
        for key in ("host", "username"):
            if not imap[key]:
                r.problem(f"imap.{key}", "is empty while imap.enabled is true, "
                          "expected a value (or enabled = false)")
    relay = v["relay"]
    if relay["transport"] == "maildir" and not relay["maildir"]:
        r.problem("relay.maildir", "is empty while relay.transport is \"maildir\", "
                  "expected a directory path")
    if relay["transport"] == "smtp" and not relay["host"]:
        r.problem("relay.host", "is empty while relay.transport is \"smtp\", expected a host name")

    cal = v["calendar"]
    _check_country(r, cal)
    sla = v["sla"]
    reminders = sla["remind_after_business_days"]
    if not isinstance(reminders, list) or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 < d < sla["ack_business_days"]
            for d in reminders):
        r.problem("sla.remind_after_business_days", f"{reminders!r} is not allowed, expected a "
                  f"list of whole numbers between 1 and {sla['ack_business_days'] - 1}")
        reminders = [1, 2]
    members = _team_members(r, v["team"]["members"])
    lists = _lists(r, data.get("lists"))
    _resolve_paths(r.base, v)

    if r.problems:
        raise ConfigError(r.problems)
    return Settings(
        path=path,
        project=ProjectSettings(**v["project"]),
        database=DatabaseSettings(**v["database"]),
        imap=ImapSettings(**imap),
        listener=ListenerSettings(**v["listener"]),
        relay=RelaySettings(**relay),
        gnupg=GnupgSettings(**v["gnupg"]),
        calendar=CalendarSettings(
            country=cal["country"], subdivision=cal["subdivision"],
            workdays=tuple(cal["workdays"]),
            extra_holidays=tuple(str(d) for d in cal["extra_holidays"])),
        sla=SlaSettings(ack_business_days=sla["ack_business_days"],
                        remind_after_business_days=tuple(sorted(set(reminders))),
                        fallback_ack=sla["fallback_ack"],
                        reporter_update_days=sla["reporter_update_days"]),
        team=TeamSettings(members=members, command_auth=v["team"]["command_auth"]),
        lists=lists,
        membership=MembershipSettings(**{
            **v["membership"],
            "bounce_score_threshold": float(v["membership"]["bounce_score_threshold"])}),
        templates=TemplateSettings(**v["templates"]),
        autoreply=AutoreplySettings(**v["autoreply"]),
        limits=LimitSettings(**v["limits"]),
    )


_SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?):///([^?]*)(.*)$", re.S)


def sqlite_url_in(base: Path, url: str) -> str:
    """A SQLite URL whose relative file path is made absolute under ``base``; other URLs
    (PostgreSQL, in-memory, absolute or ``file:`` paths) as they are."""
    m = _SQLITE_URL.match(url)
    if not m:
        return url
    scheme, path, query = m.groups()
    if not path or path == ":memory:" or path.startswith(("/", "file:")):
        return url
    return f"{scheme}:///{os.path.normpath(base / path)}{query}"


def _resolve_paths(base: Path, v: dict[str, dict[str, Any]]) -> None:
    """Make every relative path of the file relative to the file's own directory."""
    if isinstance(v["database"]["url"], str):
        v["database"]["url"] = sqlite_url_in(base, v["database"]["url"])
    for section, key in (("gnupg", "home"), ("relay", "maildir"), ("templates", "dir")):
        value = v[section][key]
        if isinstance(value, str) and value and not Path(value).is_absolute():
            v[section][key] = os.path.normpath(base / value)


def _check_country(r: _Reader, cal: dict[str, Any]) -> None:
    import holidays

    country, subdiv = cal["country"], cal["subdivision"] or None
    try:
        holidays.country_holidays(country, subdiv=subdiv)
    except (NotImplementedError, KeyError, TypeError, AttributeError):
        r.problem("calendar.country", f"{country!r} is not a country the holidays package knows, "
                  "expected an ISO 3166-1 alpha-2 code such as \"US\" or \"DE\"")
        cal["country"] = "US"
    except ValueError:
        r.problem("calendar.subdivision", f"{subdiv!r} is not a subdivision of {country}, "
                  "expected one listed by holidays.list_supported_countries()")
        cal["subdivision"] = ""


def resolve_path(cli_value: str | None) -> str:
    """The config path: --config, else $SECLISTD_CONFIG, else the system default."""
    return cli_value or os.environ.get("SECLISTD_CONFIG") or DEFAULT_PATH


def load(path: str) -> Settings:
    """Read and validate the file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: (file): cannot read it ({exc.strerror}), expected a "
                           "readable TOML file (set --config or $SECLISTD_CONFIG)"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: (file): not UTF-8 ({exc.reason}), expected UTF-8 text"]) from exc
    return parse(path, text)
