"""`seclistd outbox`: outgoing mail and retrying it."""

from __future__ import annotations

import argparse
from typing import Any

from seclistd import db, views
from seclistd.cli.common import (
    EXIT_OK,
    Add,
    CliError,
    Parser,
    check_choice,
    emit,
    load_settings,
    now,
    open_db,
    positive_int,
    read,
    table,
)


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from seclistd.outbox import STATUSES

    settings = load_settings(args)
    check_choice(args.status, STATUSES, "status")
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


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    from seclistd.outbox import STATUSES

    outbox = sub.add_parser("outbox", help="outgoing mail: list it, retry what is stuck",
                            parents=parents)
    outbox_sub = outbox.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("list", cmd_outbox_list, "list outgoing mail", outbox_sub)
    p.add_argument("--status", metavar="{" + ",".join(STATUSES) + "}",
                   help="only mail with this status: " + ", ".join(STATUSES))
    p = add("retry", cmd_outbox_retry, "send a failed, held or deferred mail now", outbox_sub)
    p.add_argument("id", type=positive_int)
