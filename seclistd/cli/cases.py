"""`seclistd cases`: list and show cases, get their messages and attachments out, and
every lifecycle action on one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from seclistd import db, views
from seclistd.cli.common import (
    EXIT_OK,
    Add,
    CliError,
    Parser,
    action_text,
    check_choice,
    emit,
    iso_time,
    kv,
    load_settings,
    now,
    open_db,
    operator,
    read,
    table,
    visible,
    write_raw,
)


def cmd_cases_list(args: argparse.Namespace) -> int:
    from seclistd.workflows.states import STATES

    settings = load_settings(args)
    check_choice(args.state, STATES, "state")
    rows = read(settings, views.list_cases, settings.project.tz, args.state)
    emit(args, rows, lambda r: table(r, ["id", "state", "ack_due", "reporter", "subject"],
                                     "no cases"))
    return EXIT_OK


def _case_text(doc: dict[str, Any]) -> str:
    head = {k: doc[k] for k in ("id", "state", "resolution", "subject", "reporter", "handler",
                                "received_at", "ack_due", "acknowledged_at", "embargo_until",
                                "fixed_version", "released_at", "disclosed_at")}
    head["missing_information"] = ", ".join(doc["missing_information"]) or "-"
    parts = [kv(head)]
    ann = doc.get("announcement") or {}
    if ann.get("until_shown"):
        parts += ["", f"embargoed notice (revision {ann['revision']}), embargo ends "
                  f"{ann['until_shown']}:"]
        parts += [f"  {r['email']}  {r['role']}  {r['status']}"
                  + (f"  acknowledged {r['acknowledged_at']}" if r["acknowledged_at"] else "")
                  + (f"  {r['vendor_status']}" if r["vendor_status"] else "")
                  + (f": {r['statement']}" if r["statement"] else "")
                  for r in ann["recipients"]]
    parts += ["", "events:"]
    parts += [f"  {e['at']}  {e['actor']}  {e['action']}  "
              f"{e['from_state'] or '-'} -> {e['to_state'] or '-'}  {e['detail']}"
              for e in doc["events"]]
    parts += _leaks_text(doc.get("leaks") or [])
    parts += ["", "messages:"]
    for m in doc["messages"]:
        number = f" #{m['id']}" if m.get("id") is not None else ""
        parts += [f"  --- {m['direction']}{number} {m['at']} {m['from']} -> {m['to']}",
                  f"  Subject: {m['subject']}", ""]
        parts += [f"    {line}" for line in (m["text"] or "").splitlines()[:200]]
    return "\n".join(parts)


def _leaks_text(leaks: list[dict[str, Any]]) -> list[str]:
    """The leaks recorded on the case, each with the member whose copy leaked."""
    if not leaks:
        return []
    return ["", "leaks:"] + [
        f"  {x['at']}  reported by {x['reported_by']} "
        f"({'signed' if x['signed'] else 'unsigned'}); copy of {x['member'] or 'not known'}"
        for x in leaks]


def cmd_cases_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    doc = read(settings, views.show_case, settings.project.tz, args.id)
    if doc is None:
        raise CliError(f"no case {args.id}, expected an ID from `seclistd cases list` "
                       f"(e.g. {settings.project.case_prefix}-{now().year}-0001)")
    emit(args, doc, _case_text)
    return EXIT_OK


def _case_messages(args: argparse.Namespace, settings: Any) -> list[Any]:
    """The case's received messages, oldest first; CliError for an unknown case."""
    from sqlalchemy import select

    from seclistd.models import Case, Message

    def load(session: Any) -> list[Any] | None:
        if session.get(Case, args.id) is None:
            return None
        return list(session.scalars(select(Message).where(Message.case_id == args.id)
                                    .order_by(Message.id)))

    messages = read(settings, load)
    if messages is None:
        raise CliError(f"no case {args.id}, expected an ID from `seclistd cases list` "
                       f"(e.g. {settings.project.case_prefix}-{now().year}-0001)")
    return messages


def cmd_cases_raw(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    messages = _case_messages(args, settings)
    if not messages:
        raise CliError(f"case {args.id} has no stored message")
    chosen = messages[0]
    if args.message is not None:
        wanted = args.message.strip()
        found = [m for m in messages if str(m.id) == wanted or m.message_id == wanted]
        if not found:
            raise CliError(f"message {visible(wanted)} is not on case {args.id}, expected one "
                           f"of {', '.join(str(m.id) for m in messages)} (the #N of `seclistd "
                           f"cases show {args.id}`)")
        chosen = found[0]
    write_raw(args, chosen.raw, f"seclistd cases raw {args.id} {chosen.id}")
    return EXIT_OK


def _readable_bytes(settings: Any, message: Any) -> tuple[bytes, str | None]:
    """The bytes to look for attachments in: the decrypted content of an encrypted message
    (PGP/MIME), else the raw bytes; and why it could not be decrypted, if so."""
    if not message.encrypted:
        return message.raw, None
    from seclistd.crypto import keyring
    from seclistd.mail import secure
    from seclistd.mail.parse import parse

    try:
        unwrapped = secure.unwrap(message.raw, parse(message.raw).content_type,
                                  lambda: keyring(settings.gnupg), settings.limits)
    except Exception as exc:  # noqa: BLE001 - fall back to the bytes as stored
        return message.raw, f"{type(exc).__name__}"
    if unwrapped.decrypted is None:
        return message.raw, unwrapped.problem or "it could not be decrypted"
    return (message.raw, None) if unwrapped.inline else (unwrapped.decrypted, None)


def cmd_cases_attachments(args: argparse.Namespace) -> int:
    from seclistd.mail import extract

    settings = load_settings(args)
    messages = _case_messages(args, settings)
    out = Path(args.output)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{out}: cannot create the directory ({exc.strerror}), expected a "
                       "directory path for --output") from exc
    if not out.is_dir():
        raise CliError(f"{out} is not a directory, expected a directory path for --output")
    out = out.resolve()
    written = []
    for message in messages:
        data, problem = _readable_bytes(settings, message)
        if problem:
            print(f"message {message.id} is encrypted and {problem}; its encrypted parts are "
                  "written as they are", file=sys.stderr)
        for index, part in enumerate(extract.attachments(data), 1):
            name = extract.safe_name(part.name, extract.fallback_name(
                message.id, index, part.content_type))
            try:
                path = extract.write_new(out, name, part.data)
            except OSError as exc:
                raise CliError(f"{out / name}: cannot write it ({exc.strerror}); "
                               f"{len(written)} file(s) written before") from exc
            written.append({"path": str(path), "size": len(part.data), "message": message.id,
                            "name": part.name, "content_type": part.content_type})
    doc = {"case": args.id, "output": str(out), "written": written}

    def text(d: dict[str, Any]) -> str:
        lines = [f"wrote {w['path']} ({w['size']} bytes, {w['content_type']}, message "
                 f"{w['message']}" + (f", named {visible(repr(w['name'][:200]))}"
                                      if w["name"] else "") + ")" for w in d["written"]]
        lines.append(f"{d['case']}: {len(d['written'])} attachment(s) from {len(messages)} "
                     f"message(s) written to {d['output']}")
        return "\n".join(lines)

    emit(args, doc, text)
    return EXIT_OK


def cmd_cases_export(args: argparse.Namespace) -> int:
    """The case as an OSV record or a CSAF 2.0 document (JSON) on standard output, or in
    ``--output FILE`` (written whole, mode 0600: an embargoed case's advisory is private)."""
    import json

    from seclistd import advisory_export

    check_choice(args.format, advisory_export.FORMATS, "format")
    settings = load_settings(args)
    try:
        doc = read(settings, advisory_export.export, now(), settings, args.id, args.format)
    except advisory_export.NotExportable as exc:
        raise CliError(str(exc)) from exc
    if doc is None:
        raise CliError(f"no case {args.id}, expected an ID from `seclistd cases list` "
                       f"(e.g. {settings.project.case_prefix}-{now().year}-0001)")
    # CSAF asks for sorted keys (its recommended test 6.2.13); OSV reads best in its order.
    text = json.dumps(doc, indent=2, ensure_ascii=False,
                      sort_keys=args.format == "csaf") + "\n"
    if args.output:
        path = Path(args.output)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            raise CliError(f"{path}: cannot write it ({exc.strerror}), expected a writable "
                           "file path for --output") from exc
        print(f"wrote {path} ({args.format}, {args.id})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if doc.get("database_specific", {}).get("state") == "embargoed" or (
            args.format == "csaf" and doc.get("document", {}).get("tracking", {})
            .get("status") == "draft"):
        print(f"note: {args.id} is not public yet: keep this {args.format} document private "
              "until its disclosure", file=sys.stderr)
    if args.format == "osv" and not settings.project.ecosystem:
        print("note: project.ecosystem is not set, so the OSV record names no package; set it "
              "(e.g. \"Go\", \"PyPI\") so scanners can match the record", file=sys.stderr)
    return EXIT_OK


def _attachments(paths: list[str] | None) -> tuple[Any, ...]:
    """The files of ``--attach``, read whole; CliError naming one that cannot be read."""
    import mimetypes

    from seclistd.mail.compose import Attachment
    from seclistd.workflows.announce import MAX_ATTACHMENT_BYTES

    out = []
    total = 0
    for name in paths or []:
        path = Path(name)
        try:
            if not path.exists():
                raise CliError(f"--attach {name}: no such file, expected the path of a file "
                               "to send with the notice (a patch)")
            if not path.is_file():
                raise CliError(f"--attach {name}: not a regular file, expected the path of a "
                               "file to send with the notice (a patch)")
            total += path.stat().st_size  # judged before anything is read
            if total > MAX_ATTACHMENT_BYTES:
                raise CliError(f"--attach {name}: the files come to more than "
                               f"{MAX_ATTACHMENT_BYTES} bytes, expected at most that in all")
            data = path.read_bytes()
        except OSError as exc:
            raise CliError(f"--attach {name}: cannot read it ({exc.strerror}), expected a "
                           "readable file") from exc
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".patch", ".diff"):
            ctype = "text/x-diff"
        out.append(Attachment(path.name, ctype, data))
    return tuple(out)


def _embargo_report(session: Any, settings: Any, case_id: str, doc: dict[str, Any]) -> None:
    """Add the notice's fan-out and warnings to an embargo action's document."""
    from seclistd.workflows import announce

    announcement = announce.announcement_of(session, case_id)
    if announcement is None:
        return
    counts = announce.fanout_counts(session, announcement)
    doc["until"] = announcement.until.astimezone(settings.project.tz).isoformat()
    doc["until_shown"] = announce.shown(settings, announcement.until)
    doc["revision"] = announcement.revision
    doc["queued"], doc["held"] = counts.queued, counts.held
    # The detail's first line is the outcome, the warnings follow it, then the team's text.
    warnings = []
    for line in doc["detail"].splitlines()[1:]:
        if not line.startswith("warning: "):
            break
        warnings.append(line[len("warning: "):])
    doc["warnings"] = warnings


def cmd_case_action(args: argparse.Namespace) -> int:
    from seclistd.workflows import lifecycle

    text = action_text(args, required=args.action in lifecycle.NEEDS_TEXT)
    settings = load_settings(args)
    files = _attachments(getattr(args, "attach", None))
    factory = db.session_factory(open_db(settings))
    req = lifecycle.Request(
        action=args.action, text=text, email=getattr(args, "email", None),
        other=getattr(args, "other", None), versions=getattr(args, "versions", None),
        cvss=getattr(args, "cvss", None), until=getattr(args, "until", None),
        credit=getattr(args, "credit", None), version=getattr(args, "release_version", None),
        attachments=files)
    try:
        with db.transaction(factory) as session:
            event = lifecycle.act(session, now(), settings, args.id, req, operator())
            # to_state: where the case is now (a release may have disclosed it as well).
            doc = {"id": args.id, "action": event.action, "from_state": event.from_state,
                   "to_state": lifecycle.load(session, args.id).state,
                   "detail": event.detail}
            if args.action == "embargo":
                _embargo_report(session, settings, args.id, doc)
    except lifecycle.ActionError as exc:
        raise CliError(str(exc)) from exc
    for warning in doc.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if args.action == "embargo" and text.strip():
        print("note: the notice's text also becomes the public advisory's details at "
              "disclosure: keep what is for the list only out of it", file=sys.stderr)
    emit(args, doc, lambda d: f"{d['id']}: {d['action']}: {d['from_state']} -> "
                              f"{d['to_state']}" + (f" ({d['detail'].splitlines()[0]})"
                                                     if d["detail"] else ""))
    return EXIT_OK


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    from seclistd.workflows.lifecycle import NEEDS_TEXT
    from seclistd.workflows.states import STATES

    cases = sub.add_parser("cases", help="vulnerability reports: list, show and act on them",
                           parents=parents)
    cases_sub = cases.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("list", cmd_cases_list, "list cases", cases_sub)
    p.add_argument("--state", metavar="{" + ",".join(STATES) + "}",
                   help="only cases in this state: " + ", ".join(STATES))
    p = add("show", cmd_cases_show, "one case with messages and events", cases_sub)
    p.add_argument("id")
    p = add("raw", cmd_cases_raw, "write the exact bytes of the case's first message (or "
            "of MESSAGE) to standard output (not a terminal)", cases_sub)
    p.add_argument("id")
    p.add_argument("message", nargs="?", metavar="MESSAGE",
                   help="the #N of `cases show`, or a Message-ID")
    p = add("attachments", cmd_cases_attachments, "write the attachments of the case's "
            "messages to files in a directory, under safe names, never overwriting", cases_sub)
    p.add_argument("id")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="directory to write to (created if missing)")
    p = add("export", cmd_cases_export, "the case as an advisory: an OSV record or a CSAF "
            "2.0 document (JSON)", cases_sub)
    p.add_argument("id")
    p.add_argument("--format", required=True, metavar="{osv,csaf}",
                   help="osv (an OSV record) or csaf (a CSAF 2.0 document)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write to FILE (mode 0600) instead of standard output")
    actions = {
        "ack": "acknowledge: mail the reporter a human answer",
        "assign": "make someone the handler (a team member or another maintainer)",
        "confirm": "confirm the vulnerability (affected versions, CVSS vector)",
        "reject": "reject the report and tell the reporter",
        "duplicate": "close as a duplicate of another case",
        "reply": "mail the reporter",
        "comment": "add an internal comment (never sent to the reporter)",
        "embargo": "set or move the embargo end",
        "disclose": "make public: the signed advisory, the reporter told and credited, "
                    "the list and the team told",
        "released": "record the fixing release; discloses at once, or at the embargo end "
                    "if that is later",
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
            p.add_argument("--attach", nargs="+", action="extend", metavar="FILE",
                           help="files (patches) sent with the notice, inside each copy's "
                                "encryption")
        if name == "disclose":
            p.add_argument("--credit", help="credit line, instead of the reporter's wish")
        if name == "released":
            p.add_argument("--version", dest="release_version", required=True, metavar="V",
                           help="the fixed version, e.g. 1.2.3")
        if name in NEEDS_TEXT:
            p.add_argument("--message", "-m", help="the text, required (default: standard "
                                                   "input; empty text is refused)")
        else:
            p.add_argument("--message", "-m", help="an optional note (default: standard input "
                                                   "when it is not a terminal)")
