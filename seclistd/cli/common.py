"""What every `seclistd` command shares: exit codes, the one error type, logging set-up,
output (text tables or --json), loading the settings and opening the database, the
operator's identity and the argument types.

Exit codes (DESIGN.md §4): 0 success, 1 operation failed or refused, 2 usage or
configuration error. Every failure is one line on stderr saying what is wrong and what
would be right.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

from seclistd import config as config_mod
from seclistd import db
from seclistd.errors import trace

log = logging.getLogger("seclistd")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


class JournalFormatter(logging.Formatter):
    """`<N>name: message` under journald (it reads the priority prefix: sd-daemon(3)), one
    prefix per line, no timestamp (journald adds its own); elsewhere a timestamp."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def __init__(self, journal: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        """Frames and exception types only: an exception's text may quote mail content or
        a secret (``errors.trace``), whoever logs it with ``exc_info``."""
        return trace(ei[1]) if ei and ei[1] is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        if not self.journal:
            return super().format(record)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging(default: str) -> None:
    """Log to stderr at $SECLISTD_LOG_LEVEL (else ``default``); journald priorities under
    systemd."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = os.environ.get("SECLISTD_LOG_LEVEL", "").strip().upper() or default
    if level not in LOG_LEVELS:
        root.setLevel(default)
        raise CliError(f"SECLISTD_LOG_LEVEL={os.environ['SECLISTD_LOG_LEVEL'][:20]!r} is not a "
                       f"log level, expected one of {', '.join(LOG_LEVELS)}", EXIT_USAGE)
    root.setLevel(level)
    for noisy in ("apscheduler", "mail", "mailparser", "alembic", "imapclient"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # python-gnupg warns of every non-zero gpg exit, which seclistd reads and explains
    # itself (a key lookup that finds nothing exits 2): its own errors still show.
    if logging.getLevelName(level) > logging.DEBUG:
        logging.getLogger("gnupg").setLevel(logging.ERROR)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)



# --- output -------------------------------------------------------------------------------

def emit(args: argparse.Namespace, doc: Any, text: Callable[[Any], str]) -> None:
    if args.json:
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        out = text(doc)
        if out:
            # Human output carries strangers' words (subjects, names, report text): never
            # raw terminal control (escape sequences, bidi overrides), whatever the command.
            print(visible(out))


def visible(text: str) -> str:
    """``text`` as a terminal may show it, faithfully: CR LF and LF are line ends and a tab
    stays a tab; every other control or invisible formatting character (a lone CR, ESC, NUL,
    the C1 controls, bidirectional overrides, ...) is written as an escape such as ``\\r``,
    ``\\x1b`` or ``\\u202e``, so no byte of a message reaches the terminal as a command."""
    text = text.replace("\r\n", "\n")
    return "".join(c if c in "\n\t" or c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def write_raw(args: argparse.Namespace, data: bytes, command: str) -> None:
    """Exact bytes to standard output; refused when it is a terminal (raw mail may hold
    escape sequences) or with --json, each with the command that would be right."""
    if args.json:
        raise CliError(f"raw bytes are not JSON; drop --json: `{command} > message.eml`",
                       EXIT_USAGE)
    if sys.stdout.isatty():
        raise CliError("refusing to write raw message bytes to a terminal (they may hold "
                       f"escape sequences); redirect them: `{command} > message.eml`")
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the reader (e.g. `| head`) had enough: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    if not rows:
        return empty
    cells = [[("" if r.get(c) is None else str(r.get(c))).replace("\n", " ") for c in columns]
             for r in rows]
    widths = [min(max(len(c), *(len(row[i]) for row in cells)), 60)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v[:w].ljust(w) for v, w in zip(row, widths, strict=True))
              for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def kv(doc: dict[str, Any]) -> str:
    """``key: value`` lines; a dict value on one line, a list of dicts one indented line each
    (``-`` for an empty list)."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            lines.append(f"{key}:" + ("" if value else " -"))
            lines += ["  " + (", ".join(f"{k}={v}" for k, v in item.items())
                              if isinstance(item, dict) else str(item)) for item in value]
            continue
        lines.append(f"{key}: {value}")
    return "\n".join(lines)



# --- context ------------------------------------------------------------------------------

def load_settings(args: argparse.Namespace) -> config_mod.Settings:
    path = config_mod.resolve_path(args.config)
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise CliError("", EXIT_USAGE) from exc


def open_db(settings: config_mod.Settings) -> Any:
    """The engine of an existing database at the schema this code needs. A missing SQLite
    file is reported, never created: only `seclistd migrate` creates a database."""
    path = db.sqlite_file(settings.database.url)
    if path is not None and not path.exists():
        raise CliError(f"no database at {path}: run `seclistd migrate` (with this config) to "
                       "create it, or check database.url", EXIT_USAGE)
    engine = db.make_engine(settings.database.url)
    try:
        problem = db.schema_problem(engine)
    except Exception as exc:  # noqa: BLE001 - any connection failure is reported the same way
        raise CliError(f"database {db_label(settings)}: cannot connect ({exc.__class__.__name__}:"
                       f" {str(exc).splitlines()[0]}), check database.url", EXIT_FAILED) from exc
    if problem:
        raise CliError(f"database {db_label(settings)} {problem}", EXIT_USAGE)
    return engine


def read(settings: config_mod.Settings, view: Callable[..., Any], *args: Any) -> Any:
    """Run one read-only view in its own session."""
    factory = db.session_factory(open_db(settings))
    with factory() as session:
        return view(session, *args)


def db_label(settings: config_mod.Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database.url).render_as_string(hide_password=True)



# --- arguments ----------------------------------------------------------------------------

def action_text(args: argparse.Namespace, required: bool = False) -> str:
    """The action's text: --message, else standard input when it is not a terminal.

    With ``required``, empty text (nothing, or only white space) is refused with one line:
    recording an empty comment or mailing an empty answer is never what was meant.
    """
    if args.message is not None:
        text, where = str(args.message), "--message is empty"
    elif sys.stdin is not None and not sys.stdin.isatty():
        text, where = sys.stdin.read(), "standard input was empty"
    else:
        text, where = "", "standard input is a terminal and no --message was given"
    if required and not text.strip():
        raise CliError(f"{args.action} needs a text and {where}: give --message TEXT or pipe "
                       "the text on standard input")
    return text


def operator() -> str:
    import getpass

    return f"{os.environ.get('SUDO_USER') or getpass.getuser()} (cli)"


def iso_time(value: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time, expected e.g. "
                                         "2026-12-01T15:00:00+00:00") from exc
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no offset, expected e.g. "
                                         "2026-12-01T15:00:00+00:00")
    return when


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def mail_address(value: str) -> str:
    """An operator-given mail address, checked and in its canonical spelling."""
    from email.headerregistry import Address

    from seclistd.mail.loops import canonical_mailbox

    wrong = argparse.ArgumentTypeError(f"{value!r} is not a mail address, expected "
                                       "local@domain, e.g. reporter@example.net")
    text = value.strip()
    if not text or len(text) > 254 or any(c in text for c in "\r\n\0<>,; "):
        raise wrong
    try:
        addr = Address(addr_spec=text)
    except Exception as exc:  # noqa: BLE001 - the parser raises several kinds
        raise wrong from exc
    domain = addr.domain
    if not addr.username or not domain or (
            "." not in domain.strip(".") and not domain.startswith("[")):
        raise wrong
    return canonical_mailbox(addr.addr_spec)


def positive_int(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ID, expected a number as "
                                         "the list command shows it")
    return int(value)



class Add(Protocol):
    """Registers one subcommand: ``add(name, func, helptext, into)`` returns its parser."""

    def __call__(self, name: str, func: Callable[[argparse.Namespace], int], helptext: str,
                 into: Any) -> Parser: ...


def check_choice(value: str | None, allowed: tuple[str, ...], what: str) -> None:
    """Refuse a filter value the command does not know, naming the ones it does."""
    if value and value not in allowed:
        raise CliError(f"unknown {what} {value!r}, expected one of {', '.join(allowed)}",
                       EXIT_USAGE)
