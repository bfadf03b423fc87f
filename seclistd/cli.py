"""The `seclistd` command line: argument parsing, then calls into the rooms; text or --json.

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
from pathlib import Path
from typing import Any

from seclistd import config as config_mod
from seclistd import db, views

log = logging.getLogger("seclistd")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


class JournalFormatter(logging.Formatter):
    """`<N>name: message` under journald (it reads the priority prefix), else a timestamp."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def __init__(self, journal: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if not self.journal:
            return super().format(record)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(default: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("SECLISTD_LOG_LEVEL", default).upper())
    for noisy in ("apscheduler", "mail", "mailparser", "alembic", "imapclient"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
            print(out)


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
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
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


# --- commands -----------------------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    print(f"{settings.path}: OK")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    print(f"migrating {db_label(settings)} ...", file=sys.stderr)
    db.migrate(settings.database.url)
    print(f"database {db_label(settings)} is at the latest schema")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    # Before anything slow: a SIGTERM during start-up must still mean a clean stop.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    settings = load_settings(args)
    engine = open_db(settings)
    from seclistd import daemon

    if args.once:
        daemon.run_once(settings, engine)
        return EXIT_OK
    return daemon.Daemon(settings, engine, stop=stop).run()


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    engine = open_db(settings)
    from seclistd.intake.store import accept

    factory = db.session_factory(engine)
    results, failed = [], False
    total = len(args.files)
    for index, name in enumerate(args.files, 1):
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            print(f"{name}: cannot read it ({exc.strerror}), expected a file with one raw "
                  "message", file=sys.stderr)
            failed = True
            continue
        outcome = accept(factory, settings, raw, source="ingest", now=now())
        doc = {"file": name, "message": outcome.id, "status": outcome.status,
               "duplicate": outcome.duplicate, "case_id": outcome.case_id,
               "route": outcome.route, "reason": outcome.reason}
        results.append(doc)
        if not args.json:
            if outcome.duplicate:
                what = f"duplicate of message {outcome.id}, not processed again"
            elif outcome.status == "quarantined":
                what = f"quarantined as message {outcome.id}: {outcome.reason}"
            elif outcome.route == "new_report":
                what = f"new case {outcome.case_id}"
            else:
                what = f"{outcome.route} on case {outcome.case_id}"
            prefix = f"[{index}/{total}] " if total > 1 else ""
            print(f"{prefix}{name}: {what}")
    if args.json:
        emit(args, results, str)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    doc = read(settings, views.status, now(), settings.project.tz)
    emit(args, doc, kv)
    return EXIT_OK


def cmd_cases_list(args: argparse.Namespace) -> int:
    from seclistd.workflows.states import STATES

    settings = load_settings(args)
    if args.state and args.state not in STATES:
        raise CliError(f"unknown state {args.state!r}, expected one of {', '.join(STATES)}",
                       EXIT_USAGE)
    rows = read(settings, views.list_cases, settings.project.tz, args.state)
    emit(args, rows, lambda r: table(r, ["id", "state", "ack_due", "reporter", "subject"],
                                     "no cases"))
    return EXIT_OK


def _case_text(doc: dict[str, Any]) -> str:
    head = {k: doc[k] for k in ("id", "state", "resolution", "subject", "reporter", "handler",
                                "received_at", "ack_due", "acknowledged_at", "embargo_until")}
    head["missing_information"] = ", ".join(doc["missing_information"]) or "-"
    parts = [kv(head), "", "events:"]
    parts += [f"  {e['at']}  {e['actor']}  {e['action']}  "
              f"{e['from_state'] or '-'} -> {e['to_state'] or '-'}  {e['detail']}"
              for e in doc["events"]]
    parts += ["", "messages:"]
    for m in doc["messages"]:
        parts += [f"  --- {m['direction']} {m['at']} {m['from']} -> {m['to']}",
                  f"  Subject: {m['subject']}", ""]
        parts += [f"    {line}" for line in (m["text"] or "").splitlines()[:200]]
    return "\n".join(parts)


def cmd_cases_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    doc = read(settings, views.show_case, settings.project.tz, args.id)
    if doc is None:
        raise CliError(f"no case {args.id}, expected an ID from `seclistd cases list` "
                       f"(e.g. {settings.project.case_prefix}-{now().year}-0001)")
    emit(args, doc, _case_text)
    return EXIT_OK


def action_text(args: argparse.Namespace) -> str:
    """The action's text: --message, else standard input when it is not a terminal."""
    if args.message is not None:
        return str(args.message)
    if not sys.stdin.isatty():
        return sys.stdin.read()
    return ""


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


def cmd_case_action(args: argparse.Namespace) -> int:
    from seclistd.workflows import lifecycle

    settings = load_settings(args)
    factory = db.session_factory(open_db(settings))
    req = lifecycle.Request(
        action=args.action, text=action_text(args), email=getattr(args, "email", None),
        other=getattr(args, "other", None), versions=getattr(args, "versions", None),
        cvss=getattr(args, "cvss", None), until=getattr(args, "until", None),
        credit=getattr(args, "credit", None))
    try:
        with db.transaction(factory) as session:
            event = lifecycle.act(session, now(), settings, args.id, req, operator())
            doc = {"id": args.id, "action": event.action, "from_state": event.from_state,
                   "to_state": event.to_state, "detail": event.detail}
    except lifecycle.ActionError as exc:
        raise CliError(str(exc)) from exc
    emit(args, doc, lambda d: f"{d['id']}: {d['action']}: {d['from_state']} -> "
                              f"{d['to_state']}" + (f" ({d['detail'].splitlines()[0]})"
                                                     if d["detail"] else ""))
    return EXIT_OK


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from seclistd.outbox import STATUSES

    settings = load_settings(args)
    if args.status and args.status not in STATUSES:
        raise CliError(f"unknown status {args.status!r}, expected one of {', '.join(STATUSES)}",
                       EXIT_USAGE)
    rows = read(settings, views.list_outbox, settings.project.tz, args.status)
    emit(args, rows, lambda r: table(
        r, ["id", "case_id", "to", "status", "attempts", "subject", "last_error"], "outbox empty"))
    return EXIT_OK


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from seclistd import relay

    settings = load_settings(args)
    factory = db.session_factory(open_db(settings))
    from seclistd.crypto import keyring

    def find_key(address: str) -> str | None:
        ring = keyring(settings.gnupg)
        return ring.key_for_address(address) if ring else None

    try:
        with db.transaction(factory) as session:
            row = relay.retry(session, now(), args.id, find_key)
            doc = views.outbox_row(row, settings.project.tz)
    except LookupError as exc:
        raise CliError(f"no outbox row {args.id}, expected an ID from `seclistd outbox list`"
                       ) from exc
    except relay.NotRetryable as exc:
        raise CliError(f"{exc}; only pending, failed or held rows can be retried") from exc
    emit(args, doc, lambda d: f"outbox {d['id']} to {d['to']} is due now; the running daemon "
                              "(or `seclistd run --once`) sends it")
    return EXIT_OK


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    rows = read(settings, views.list_quarantine, settings.project.tz)
    emit(args, rows, lambda r: table(r, ["id", "received_at", "from", "reason"],
                                     "quarantine empty"))
    return EXIT_OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    doc = read(settings, views.show_quarantined, settings.project.tz, args.id)
    if doc is None:
        raise CliError(f"no quarantined message {args.id}, expected an ID from "
                       "`seclistd quarantine list`")

    def text(d: dict[str, Any]) -> str:
        head = kv({k: v for k, v in d.items() if k != "raw_excerpt"})
        safe = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in d["raw_excerpt"])
        return f"{head}\n\n{safe}"

    emit(args, doc, text)
    return EXIT_OK


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    from seclistd.intake.store import NotQuarantined, release

    settings = load_settings(args)
    factory = db.session_factory(open_db(settings))
    try:
        outcome = release(factory, settings, args.id, now())
    except NotQuarantined as exc:
        raise CliError(f"no quarantined message {args.id}, expected an ID from "
                       "`seclistd quarantine list`") from exc
    doc = {"message": outcome.id, "status": outcome.status, "case_id": outcome.case_id,
           "route": outcome.route, "reason": outcome.reason}
    if outcome.status == "quarantined":
        emit(args, doc, lambda d: "")
        raise CliError(f"message {args.id} is still quarantined: {outcome.reason}")
    emit(args, doc, lambda d: f"message {d['message']} released: {d['route']} on case "
                              f"{d['case_id']}")
    return EXIT_OK


def _keyring(settings: config_mod.Settings) -> Any:
    from seclistd.crypto import keyring

    ring = keyring(settings.gnupg)
    if ring is None:
        raise CliError("gpg is not installed: apt-get install gnupg")
    return ring


def cmd_keys_generate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    ring = _keyring(settings)
    address = settings.project.security_address
    existing = [k for k in ring.list_keys(secret=True)
                if any(address in uid for uid in k.uids)]
    if existing and not args.force:
        raise CliError(f"a secret key for {address} exists already ({existing[0].fingerprint});"
                       " use it (gnupg.key) or pass --force for another")
    print(f"generating an ed25519 key for {address} ...", file=sys.stderr)
    fpr = ring.generate(f"{settings.project.name} security team", address)
    emit(args, {"fingerprint": fpr}, lambda d: f"{d['fingerprint']}\nset it in the config:"
                                               f" [gnupg] key = \"{d['fingerprint']}\"")
    return EXIT_OK


def cmd_keys_import(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    ring = _keyring(settings)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: cannot read it ({exc.strerror}), expected an OpenPGP "
                       "key file") from exc
    fingerprints = ring.import_keys(data)
    if not fingerprints:
        raise CliError(f"{args.file}: no OpenPGP key in it, expected an armored or binary key")
    emit(args, {"imported": fingerprints}, lambda d: "\n".join(d["imported"]))
    return EXIT_OK


def cmd_keys_export(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    fpr = args.fingerprint or settings.gnupg.key
    if not fpr:
        raise CliError("no project key configured: set gnupg.key (see `seclistd keys list`)"
                       " or name a fingerprint", EXIT_USAGE)
    from seclistd.crypto import CryptoError

    try:
        armored = _keyring(settings).export(fpr)
    except CryptoError as exc:
        raise CliError(f"{exc}; `seclistd keys list` shows the keys") from exc
    emit(args, {"fingerprint": fpr, "key": armored}, lambda d: d["key"].rstrip("\n"))
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    rows = [k.as_dict() for k in _keyring(settings).list_keys()]
    for row in rows:
        row["uids"] = ", ".join(row["uids"]) if not args.json else row["uids"]
    emit(args, rows, lambda r: table(r, ["fingerprint", "secret", "expires", "uids"],
                                     "no keys"))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from seclistd import doctor

    settings = load_settings(args)
    results = doctor.run_checks(settings)
    emit(args, [r.as_dict() for r in results], lambda rows: "\n".join(
        f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}" for r in rows))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


# --- parser -------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def positive_int(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not an ID, expected a number")
    return int(value)


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="config file (default $SECLISTD_CONFIG, else "
                             f"{config_mod.DEFAULT_PATH})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="one JSON document on stdout")
    parser = Parser(prog="seclistd", parents=[common],
                    description="The mail daemon behind a project's security@ address.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name: str, func: Callable[[argparse.Namespace], int], helptext: str,
            into: Any = sub) -> Parser:
        p = into.add_parser(name, help=helptext, parents=[common])
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run the daemon")
    p.add_argument("--once", action="store_true", help="drain what is waiting, then exit")
    add("migrate", cmd_migrate, "create or upgrade the database")
    add("check-config", cmd_check_config, "validate the config file")
    add("doctor", cmd_doctor, "check database, IMAP, relay and GnuPG")
    p = add("ingest", cmd_ingest, "feed raw messages (files, or - for stdin)")
    p.add_argument("files", nargs="+", metavar="FILE")
    add("status", cmd_status, "counts and health")

    cases = sub.add_parser("cases", help="vulnerability reports", parents=[common])
    cases_sub = cases.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("list", cmd_cases_list, "list cases", cases_sub)
    p.add_argument("--state")
    p = add("show", cmd_cases_show, "one case with messages and events", cases_sub)
    p.add_argument("id")
    actions = {
        "ack": "acknowledge: mail the reporter a human answer",
        "assign": "make a team member the handler",
        "confirm": "confirm the vulnerability (affected versions, CVSS vector)",
        "reject": "reject the report and tell the reporter",
        "duplicate": "close as a duplicate of another case",
        "reply": "mail the reporter",
        "comment": "add an internal comment (never sent to the reporter)",
        "embargo": "set or move the embargo end",
        "disclose": "mark public, tell and credit the reporter",
        "close": "close (fixed after disclosure, else withdrawn)",
    }
    for name, helptext in actions.items():
        p = add(name, cmd_case_action, helptext, cases_sub)
        p.add_argument("id")
        if name == "assign":
            p.add_argument("email")
        if name == "duplicate":
            p.add_argument("other", metavar="OTHER_ID")
        if name == "confirm":
            p.add_argument("--versions", help="affected versions, e.g. '< 1.4.3'")
            p.add_argument("--cvss", help="CVSS vector, e.g. CVSS:3.1/AV:N/...")
        if name == "embargo":
            p.add_argument("--until", type=iso_time, required=True,
                           help="ISO 8601 with offset, e.g. 2026-12-01T15:00:00+00:00")
        if name == "disclose":
            p.add_argument("--credit", help="credit line, instead of the reporter's wish")
        p.add_argument("--message", "-m", help="the text (default: standard input)")

    outbox = sub.add_parser("outbox", help="outgoing mail", parents=[common])
    outbox_sub = outbox.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("list", cmd_outbox_list, "list outgoing mail", outbox_sub)
    p.add_argument("--status")
    p = add("retry", cmd_outbox_retry, "send a failed, held or deferred mail now", outbox_sub)
    p.add_argument("id", type=positive_int)

    quarantine = sub.add_parser("quarantine", help="what could not be processed",
                                parents=[common])
    q_sub = quarantine.add_subparsers(dest="action", required=True, parser_class=Parser)
    add("list", cmd_quarantine_list, "list quarantined messages", q_sub)
    p = add("show", cmd_quarantine_show, "one quarantined message", q_sub)
    p.add_argument("id", type=positive_int)
    p = add("release", cmd_quarantine_release, "process a quarantined message again", q_sub)
    p.add_argument("id", type=positive_int)
    keys = sub.add_parser("keys", help="the OpenPGP keyring", parents=[common])
    keys_sub = keys.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("generate", cmd_keys_generate, "generate the project key", keys_sub)
    p.add_argument("--force", action="store_true", help="even if one exists already")
    p = add("import", cmd_keys_import, "import a public or secret key (FILE or -)", keys_sub)
    p.add_argument("file", metavar="FILE")
    p = add("export", cmd_keys_export, "print a public key (the project key by default)",
            keys_sub)
    p.add_argument("fingerprint", nargs="?", metavar="FPR")
    add("list", cmd_keys_list, "list the keys", keys_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    setup_logging("INFO" if args.command in ("run", "migrate") else "WARNING")
    try:
        return args.func(args)
    except CliError as exc:
        if str(exc):
            print(f"seclistd: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILED
