"""`seclistd quarantine`: what could not be processed, listed, shown (escaped for the
terminal, or as raw bytes), released (also as a report with the sender the operator gives)
and deleted (with an audit record)."""

from __future__ import annotations

import argparse
from typing import Any

from seclistd import db, views
from seclistd.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    Add,
    CliError,
    Parser,
    emit,
    kv,
    load_settings,
    mail_address,
    now,
    open_db,
    operator,
    positive_int,
    read,
    table,
    visible,
    write_raw,
)
from seclistd.cli.system import target
from seclistd.config import Settings


def _unknown(settings: Settings, message_id: int) -> CliError:
    """Why ``message_id`` is not in quarantine (deleted, or never there), in one line."""
    gone = read(settings, views.deleted_quarantined, settings.project.tz, message_id)
    if gone is not None:
        return CliError(f"message {message_id} was deleted from quarantine at "
                        f"{gone['deleted_at']} by {gone['actor']} (sha256 {gone['sha256']}); "
                        "`seclistd quarantine list` shows the ones left")
    return CliError(f"no quarantined message {message_id}, expected an ID from "
                    "`seclistd quarantine list`")


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    rows = read(settings, views.list_quarantine, settings.project.tz)
    emit(args, rows, lambda r: table(r, ["id", "received_at", "from", "reason"],
                                     "quarantine empty"))
    return EXIT_OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.raw:
        data = read(settings, views.quarantined_raw, args.id)
        if data is None:
            raise _unknown(settings, args.id)
        write_raw(args, data, f"seclistd quarantine show {args.id} --raw")
        return EXIT_OK
    doc = read(settings, views.show_quarantined, settings.project.tz, args.id)
    if doc is None:
        raise _unknown(settings, args.id)

    def text(d: dict[str, Any]) -> str:
        head = kv({k: visible(str(v)) for k, v in d.items()
                   if k not in ("raw_excerpt", "truncated")})
        body = visible(d["raw_excerpt"])
        if d["truncated"]:
            body += (f"\n[... {d['size']} bytes in all; `seclistd quarantine show {d['id']} "
                     "--raw > message.eml` writes every byte]")
        return f"{head}\n\n{body}"

    emit(args, doc, text)
    return EXIT_OK


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    from seclistd.intake.store import NotQuarantined, release

    if args.sender and not args.as_report:
        raise CliError("--from names the reporter of a case opened with --as-report; add "
                       f"--as-report: `seclistd quarantine release {args.id} --as-report "
                       f"--from {args.sender}`", EXIT_USAGE)
    settings = load_settings(args)
    factory = db.session_factory(open_db(settings))
    try:
        outcome = release(factory, settings, args.id, now(), as_report=args.as_report,
                          sender=args.sender, actor=operator())
    except NotQuarantined as exc:
        raise _unknown(settings, args.id) from exc
    doc = {"message": outcome.id, "status": outcome.status, "case_id": outcome.case_id,
           "request_id": outcome.request_id, "route": outcome.route, "reason": outcome.reason}
    if outcome.status == "quarantined":
        emit(args, doc, lambda d: "")
        hint = ""
        if outcome.route == "bad_sender" and not args.as_report:
            hint = (f"; if it is a report, `seclistd quarantine release {args.id} --as-report "
                    "--from ADDRESS` opens a case for it")
        raise CliError(f"message {args.id} is still quarantined: "
                       f"{visible(outcome.reason or '')}{hint}")
    emit(args, doc, lambda d: f"message {d['message']} released: {d['route']} on "
                              f"{target(outcome)}")
    return EXIT_OK


def cmd_quarantine_delete(args: argparse.Namespace) -> int:
    from seclistd.intake.store import NotQuarantined, delete

    settings = load_settings(args)
    factory = db.session_factory(open_db(settings))
    try:
        gone = delete(factory, args.id, now(), actor=operator(), reason=args.reason or "")
    except NotQuarantined as exc:
        raise _unknown(settings, args.id) from exc
    doc = {"message": gone.message, "deleted_at": views.iso(gone.at, settings.project.tz),
           "actor": gone.actor, "sha256": gone.sha256, "size": gone.size}
    emit(args, doc, lambda d: f"message {d['message']} deleted ({d['size']} bytes, sha256 "
                              f"{d['sha256']}); the record of it stays")
    return EXIT_OK


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    quarantine = sub.add_parser("quarantine", help="what could not be processed",
                                parents=parents)
    q_sub = quarantine.add_subparsers(dest="action", required=True, parser_class=Parser)
    add("list", cmd_quarantine_list, "list quarantined messages", q_sub)
    p = add("show", cmd_quarantine_show, "one quarantined message, control characters "
            "escaped (--raw: its exact bytes, to a file or pipe)", q_sub)
    p.add_argument("id", type=positive_int)
    p.add_argument("--raw", action="store_true",
                   help="write the message's exact bytes to standard output (not a terminal)")
    p = add("release", cmd_quarantine_release, "process a quarantined message again", q_sub)
    p.add_argument("id", type=positive_int)
    p.add_argument("--as-report", action="store_true",
                   help="open a case from it, whatever it looks like")
    p.add_argument("--from", dest="sender", type=mail_address, metavar="ADDRESS",
                   help="with --as-report: the reporter's address, when its From cannot be "
                        "read")
    p = add("delete", cmd_quarantine_delete, "remove a quarantined message for good (who, "
            "when, why and its SHA-256 are kept)", q_sub)
    p.add_argument("id", type=positive_int)
    p.add_argument("--reason", help="why it is deleted, for the record")
