"""`seclistd members`: the members of a distributors list: list, show, add (with a key
file), remove, suspend, resume, import a Markdown table, export it.

`--list NAME` picks the `[[lists]]` block (default: the first); without any, every command
exits 2 saying to add one. Changes go through `seclistd.workflows.members` (audited, the
member told by mail in the same transaction); JSON is shaped by `seclistd.member_views`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seclistd import db
from seclistd.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    Add,
    CliError,
    Parser,
    check_choice,
    emit,
    kv,
    load_settings,
    mail_address,
    now,
    open_db,
    operator,
    read,
    table,
)
from seclistd.config import ListSettings, Settings


def _list(settings: Settings, args: argparse.Namespace) -> ListSettings:
    from seclistd.workflows.members import ListChoiceError, pick_list

    try:
        return pick_list(settings, args.list)
    except ListChoiceError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _read_file(path: str, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read it ({exc.strerror}), expected {what}") from exc


def cmd_members_list(args: argparse.Namespace) -> int:
    from seclistd.member_views import list_members
    from seclistd.workflows.member_states import STATES

    settings = load_settings(args)
    check_choice(args.state, STATES, "state")
    lst = _list(settings, args)
    rows = read(settings, list_members, settings.project.tz, lst.name, args.state)
    emit(args, rows, lambda r: table(r, ["email", "organization", "state", "fingerprint",
                                         "key_expires"], f"no members on {lst.name}"))
    return EXIT_OK


def _member_text(doc: dict[str, Any]) -> str:
    head = {k: doc[k] for k in ("email", "organization", "list", "state", "reason",
                                "fingerprint", "key_expires", "pending_fingerprint",
                                "joined_at", "removed_at")}
    parts = [kv({k: ("-" if v is None else v) for k, v in head.items()}), "", "events:"]
    parts += [f"  {e['at']}  {e['actor']}  {e['action']}  "
              f"{e['from_state'] or '-'} -> {e['to_state'] or '-'}  {e['detail']}"
              for e in doc["events"]]
    return "\n".join(parts)


def cmd_members_show(args: argparse.Namespace) -> int:
    from seclistd.member_views import show_member

    settings = load_settings(args)
    lst = _list(settings, args)
    doc = read(settings, show_member, settings.project.tz, lst.name, args.email)
    if doc is None:
        raise CliError(f"{args.email} is not a member of {lst.name}; `seclistd members list` "
                       "shows the members")
    emit(args, doc, _member_text)
    return EXIT_OK


def cmd_members_add(args: argparse.Namespace) -> int:
    from seclistd.member_views import member_view
    from seclistd.workflows import members
    from seclistd.workflows.member_states import REMOVED, find_member

    settings = load_settings(args)
    lst = _list(settings, args)
    organization = members.clean_organization(args.organization)
    if not organization:
        raise CliError("--organization is empty, expected the distribution or company the "
                       "address belongs to, e.g. --organization 'Example Linux'", EXIT_USAGE)
    factory = db.session_factory(open_db(settings))
    existing = read(settings, lambda s: find_member(s, lst.name, args.email))
    if existing is not None and existing.state != REMOVED:
        raise CliError(f"{args.email} is already a member of {lst.name} ({existing.state}); "
                       f"`seclistd members show {args.email}` shows it")
    key = None
    when = now()
    if args.key:
        data = _read_file(args.key, "an OpenPGP public key file (gpg --export --armor FPR)")
        try:
            key = members.import_key(settings, data, args.email, when)
        except members.MemberError as exc:
            raise CliError(f"{args.key}: {exc}") from exc
        for warning in key.warnings:
            print(f"seclistd: warning: {warning}", file=sys.stderr)
    try:
        with db.transaction(factory) as session:
            member = members.add(session, when, settings, lst=lst, email=args.email,
                                 organization=organization, actor=operator(), key=key,
                                 name=args.name or "")
            doc = member_view(member, settings.project.tz)
    except members.MemberError as exc:
        raise CliError(str(exc)) from exc
    doc["warnings"] = list(key.warnings) if key else []

    def text(d: dict[str, Any]) -> str:
        pinned = (f"key {d['fingerprint']} pinned (expires {d['key_expires'] or 'never'})"
                  if d["fingerprint"] else "no key: embargoed mail is held until one is "
                  "pinned")
        return f"added {d['email']} ({d['organization']}) to {d['list']}; {pinned}"

    emit(args, doc, text)
    return EXIT_OK


def cmd_members_change(args: argparse.Namespace) -> int:
    from seclistd.member_views import member_view
    from seclistd.workflows import members

    settings = load_settings(args)
    lst = _list(settings, args)
    reason = getattr(args, "reason", None) or ""
    if args.action == "suspend" and not reason.strip():
        raise CliError("--reason is empty, expected why the member is suspended (the member "
                       "reads it), e.g. --reason 'mail to this address bounces'", EXIT_USAGE)
    factory = db.session_factory(open_db(settings))
    operation = {"remove": members.remove, "suspend": members.suspend,
                 "resume": members.resume}[args.action]
    try:
        with db.transaction(factory) as session:
            member = members.find(session, lst.name, args.email)
            before = member.state
            operation(session, now(), settings, lst=lst, member=member, actor=operator(),
                      reason=reason)
            doc = member_view(member, settings.project.tz)
    except members.MemberError as exc:
        raise CliError(str(exc)) from exc
    doc["from_state"] = before
    emit(args, doc, lambda d: f"{d['email']} on {d['list']}: {args.action}: "
                              f"{d['from_state']} -> {d['state']}; the member is told by mail")
    return EXIT_OK


def cmd_members_import(args: argparse.Namespace) -> int:
    from seclistd.member_views import member_view
    from seclistd.workflows import member_table, members

    settings = load_settings(args)
    lst = _list(settings, args)
    data = _read_file(args.file, "a Markdown members table")
    try:
        text = member_table.decode(data)
    except members.MemberError as exc:
        raise CliError(f"{args.file}: {exc}") from exc
    factory = db.session_factory(open_db(settings))
    try:
        with db.transaction(factory) as session:
            report = member_table.import_table(session, now(), settings, lst, text,
                                               operator(), source=args.file)
            doc = {"list": lst.name, "added": [member_view(m, settings.project.tz)
                                               for m in report.added],
                   "skipped": [s.as_dict() for s in report.skipped]}
    except members.MemberError as exc:
        raise CliError(f"{args.file}: {exc}") from exc

    def out(d: dict[str, Any]) -> str:
        lines = [f"added {m['email']} ({m['organization']})" for m in d["added"]]
        lines += [f"skipped line {s['line']}: {s['reason']}: {s['text']}"
                  for s in d["skipped"]]
        lines.append(f"{d['list']}: {len(d['added'])} added, {len(d['skipped'])} skipped")
        return "\n".join(lines)

    emit(args, doc, out)
    return EXIT_OK


def cmd_members_export(args: argparse.Namespace) -> int:
    from seclistd.workflows import member_table

    settings = load_settings(args)
    lst = _list(settings, args)
    fmt = args.format or ("json" if args.json else "markdown")
    if args.json and fmt != "json":
        raise CliError(f"--json prints JSON but --format is {fmt}; drop --json or use "
                       "--format json", EXIT_USAGE)
    if args.include_removed and fmt == "markdown":
        raise CliError("the Markdown table lists active and suspended members only; use "
                       "--include-removed with --format csv or json", EXIT_USAGE)
    text = read(settings, lambda s: member_table.export(s, settings, lst, fmt,
                                                        args.include_removed))
    sys.stdout.write(text)
    return EXIT_OK


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    from seclistd.workflows.member_states import STATES
    from seclistd.workflows.member_table import EXPORT_FORMATS

    group = sub.add_parser("members", help="members of a distributors list: list, show, add, "
                           "remove, suspend, resume, import, export", parents=parents)
    group_sub = group.add_subparsers(dest="action", required=True, parser_class=Parser)

    def with_list(p: Parser) -> Parser:
        p.add_argument("--list", metavar="NAME", help="the [[lists]] name (default: the "
                       "first [[lists]] block)")
        return p

    p = with_list(add("list", cmd_members_list, "list the members of a list", group_sub))
    p.add_argument("--state", metavar="{" + ",".join(STATES) + "}",
                   help="only members in this state: " + ", ".join(STATES))
    p = with_list(add("show", cmd_members_show, "one member with its history of changes",
                      group_sub))
    p.add_argument("email", type=mail_address, metavar="EMAIL")
    p = with_list(add("add", cmd_members_add, "add a member (told by mail); with --key, pin "
                      "its OpenPGP key (public only; a key without a user ID for EMAIL is "
                      "pinned with a warning)", group_sub))
    p.add_argument("email", type=mail_address, metavar="EMAIL")
    p.add_argument("--organization", "--organisation", required=True, metavar="ORG",
                   help="the distribution or company the address belongs to")
    p.add_argument("--key", metavar="FILE", help="the member's public key, armored or "
                   "binary (- for standard input); without it embargoed mail is held")
    p.add_argument("--name", help="a contact name (optional)")
    p = with_list(add("remove", cmd_members_change, "remove a member; it is told why (the "
                      "team too)", group_sub))
    p.add_argument("email", type=mail_address, metavar="EMAIL")
    p.add_argument("--reason", metavar="TEXT", help="why, in words the member reads (e.g. "
                   "a criterion no longer met)")
    p = with_list(add("suspend", cmd_members_change, "stop embargoed mail to a member until "
                      "it is resumed; it is told why (the team too)", group_sub))
    p.add_argument("email", type=mail_address, metavar="EMAIL")
    p.add_argument("--reason", metavar="TEXT", required=True,
                   help="why, in words the member reads")
    p = with_list(add("resume", cmd_members_change, "make a suspended member active again "
                      "(it is told)", group_sub))
    p.add_argument("email", type=mail_address, metavar="EMAIL")
    p.add_argument("--reason", metavar="TEXT", help="a note for the record (optional)")
    p = with_list(add("import", cmd_members_import, "add the members a Markdown table lists "
                      "(| Email | Organization |); reports each row skipped and why; no mail "
                      "is sent", group_sub))
    p.add_argument("file", metavar="FILE.md", help="the Markdown file (- for standard input)")
    p = with_list(add("export", cmd_members_export, "print the members: the Markdown table "
                      "to publish (active and suspended), or CSV / JSON with every field",
                      group_sub))
    p.add_argument("--format", choices=EXPORT_FORMATS,
                   help="markdown (default), csv or json")
    p.add_argument("--include-removed", action="store_true",
                   help="csv and json: list removed members too")
