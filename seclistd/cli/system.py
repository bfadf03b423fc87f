"""`seclistd` commands about the whole installation: check-config, migrate, run, ingest,
status and doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from seclistd import db
from seclistd.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Add,
    CliError,
    Parser,
    db_label,
    emit,
    load_settings,
    now,
    open_db,
    read,
)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every problem on stderr (exit 2); with --json also ``{"config", "ok", "problems"}``."""
    from seclistd import config as config_mod

    path = config_mod.resolve_path(args.config)
    try:
        config_mod.load(path)
    except config_mod.ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        if args.json:
            emit(args, {"config": path, "ok": False, "problems": exc.problems}, str)
        raise CliError("", EXIT_USAGE) from exc
    emit(args, {"config": path, "ok": True, "problems": []}, lambda d: f"{d['config']}: OK")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    label = db_label(settings)
    try:
        before = _revision(settings.database.url)
    except SQLAlchemyError:
        before = None  # migrate itself reports what is wrong with the database
    if not args.json:
        print(f"migrating {label} ...", file=sys.stderr)
    try:
        db.migrate(settings.database.url)
    except (OSError, SQLAlchemyError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CliError(f"database {label}: cannot migrate it ({exc.__class__.__name__}: "
                       f"{first[:200]}), check database.url and that the server runs",
                       EXIT_FAILED) from exc
    doc = {"database": label, "from_revision": before, "revision": db.REVISIONS[-1],
           "changed": before != db.REVISIONS[-1]}
    emit(args, doc, lambda d: f"database {d['database']} is at the latest schema "
                              f"({d['revision']})")
    return EXIT_OK


def _revision(url: str) -> str | None:
    """The schema revision before migrating (None: no database or an empty one)."""
    path = db.sqlite_file(url)
    if path is not None and not path.exists():
        return None
    engine = db.make_engine(url)
    try:
        return db.schema_revision(engine)
    finally:
        engine.dispose()


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
    try:
        return daemon.Daemon(settings, engine, stop=stop).run()
    except daemon.StartupError as exc:
        raise CliError(str(exc), EXIT_FAILED) from exc


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
        if not raw.strip():  # a file or pipe left empty: nothing to store, tell, or page about
            print(f"{name}: it is empty, expected a file with one raw message",
                  file=sys.stderr)
            failed = True
            continue
        outcome = accept(factory, settings, raw, source="ingest", now=now())
        doc = {"file": name, "message": outcome.id, "status": outcome.status,
               "duplicate": outcome.duplicate, "case_id": outcome.case_id,
               "request_id": outcome.request_id, "route": outcome.route,
               "reason": outcome.reason}
        results.append(doc)
        if not args.json:
            if outcome.duplicate:
                what = f"duplicate of message {outcome.id}, not processed again"
            elif outcome.status == "quarantined":
                what = f"quarantined as message {outcome.id}: {outcome.reason}"
            elif outcome.route == "new_report":
                what = f"new case {outcome.case_id}"
            elif outcome.route == "join_request" and outcome.request_id:
                what = f"new join request {outcome.request_id}"
            else:
                what = f"{outcome.route} on {target(outcome)}"
            prefix = f"[{index}/{total}] " if total > 1 else ""
            print(f"{prefix}{name}: {what}")
    if args.json:
        emit(args, results, str)
    return EXIT_FAILED if failed else EXIT_OK


def target(outcome: object) -> str:
    """What a processed message went to: its case, its join request, or neither."""
    case_id, request_id = getattr(outcome, "case_id", None), getattr(outcome, "request_id", None)
    if case_id:
        return f"case {case_id}"
    if request_id:
        return f"join request {request_id}"
    return "no case (recorded only)"


def cmd_status(args: argparse.Namespace) -> int:
    """The contract's counts and the health (``seclistd.health``): a table, ``--json``, or
    ``--format prometheus`` for node_exporter's textfile collector."""
    from seclistd import health, status_render

    settings = load_settings(args)
    if args.json and args.format not in (None, "json"):
        raise CliError(f"--json and --format {args.format} disagree: give one of them",
                       EXIT_USAGE)
    at = now()
    doc = read(settings, health.status, at, settings.project.tz)
    if args.format == "prometheus":
        sys.stdout.write(status_render.prometheus(doc, at))
        return EXIT_OK
    if args.format == "json":
        args.json = True
    emit(args, doc, lambda d: status_render.text(d, settings.project.tz))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """Every check as {name, status: ok|warn|fail, detail, fix}; exit 1 if any fails, 2 when
    the config itself does not load (nothing else can be checked then)."""
    from seclistd import config as config_mod
    from seclistd import doctor

    path = config_mod.resolve_path(args.config)
    try:
        settings = config_mod.load(path)
    except config_mod.ConfigError as exc:
        results = [doctor.config_failure(path, exc.problems)]
        emit(args, [r.as_dict() for r in results], lambda _: doctor.text(results))
        return EXIT_USAGE
    results = doctor.run_checks(settings, now())
    emit(args, [r.as_dict() for r in results], lambda _: doctor.text(results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    p = add("run", cmd_run, "run the daemon", sub)
    p.add_argument("--once", action="store_true", help="drain what is waiting, then exit")
    add("migrate", cmd_migrate, "create or upgrade the database", sub)
    add("check-config", cmd_check_config, "validate the config file", sub)
    add("doctor", cmd_doctor, "check config, database, IMAP, relay, GnuPG and keys", sub)
    p = add("ingest", cmd_ingest, "feed raw messages (files, or - for stdin)", sub)
    p.add_argument("files", nargs="+", metavar="FILE")
    p = add("status", cmd_status, "counts and health", sub)
    p.add_argument("--format", choices=("text", "json", "prometheus"), default=None,
                   help="text (default), json (as --json), or prometheus (the textfile "
                        "collector's format)")
