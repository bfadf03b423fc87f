"""`seclistd requests`: join requests to the distributors lists: list and show them, approve
or deny one (DESIGN.md §3 "Join request").

`approve` needs a request in pending_review (answers complete, vouches and proof of key
done); `--force` approves one still submitted, incomplete or verifying, and the event says
what it lacked (a key never proved is then not pinned on the member). `deny` takes an
optional note for the applicant (`--message`, or standard input when it is not a terminal).
"""

from __future__ import annotations

import argparse
from typing import Any

from seclistd import db
from seclistd.cli.common import (
    EXIT_OK,
    Add,
    CliError,
    Parser,
    action_text,
    check_choice,
    emit,
    kv,
    load_settings,
    now,
    open_db,
    operator,
    read,
    table,
    visible,
)


def cmd_requests_list(args: argparse.Namespace) -> int:
    from seclistd.workflows import requests

    settings = load_settings(args)
    check_choice(args.state, requests.STATES, "state")
    rows = read(settings, requests.list_requests, settings, args.state)

    def text(rows: list[dict[str, Any]]) -> str:
        shown = [{**r, "missing_criteria": ", ".join(r["missing_criteria"]) or "-"}
                 for r in rows]
        return table(shown, ["id", "state", "applicant", "organization", "missing_criteria"],
                     "no join requests")

    emit(args, rows, text)
    return EXIT_OK


def _show_text(doc: dict[str, Any]) -> str:
    head = {k: doc[k] for k in ("id", "state", "list", "applicant", "applicant_name",
                                "organization", "created_at", "last_activity_at",
                                "fingerprint", "key_proved_at", "pending_fingerprint",
                                "voucher_named", "voucher",
                                "member", "decided_at", "decided_by")}
    head["vouches"] = f"{len(doc['vouches'])} of {doc['vouches_required']}"
    head["missing_criteria"] = ", ".join(doc["missing_criteria"]) or "-"
    head["still_needed"] = "; ".join(doc["still_needed"]) or "-"
    parts = [kv(head), "", "answers:"]
    for answer in doc["answers"]:
        parts.append(f"  [{answer['criterion']}] {answer['text'] or ''}")
        value = answer["answer"]
        parts += [f"      {line}" for line in (value.splitlines()[:20] if value
                                               else ["(missing)"])]
    if doc["vouches"]:
        parts += ["", "vouches:"]
        parts += [f"  {v['at']}  {v['member']}  {v['fingerprint']}" for v in doc["vouches"]]
    parts += ["", "events:"]
    parts += [f"  {e['at']}  {e['actor']}  {e['action']}  "
              f"{e['from_state'] or '-'} -> {e['to_state'] or '-'}  {e['detail']}"
              for e in doc["events"]]
    return "\n".join(parts)


def _no_such(request_id: str) -> CliError:
    return CliError(f"no join request {visible(request_id)}, expected an ID from "
                    f"`seclistd requests list` (e.g. JOIN-{now().year}-0001)")


def cmd_requests_show(args: argparse.Namespace) -> int:
    from seclistd.workflows import requests

    settings = load_settings(args)
    doc = read(settings, requests.show_request, settings, args.id)
    if doc is None:
        raise _no_such(args.id)
    emit(args, doc, _show_text)
    return EXIT_OK


def cmd_requests_decide(args: argparse.Namespace) -> int:
    from seclistd.workflows import requests

    settings = load_settings(args)
    text = action_text(args) if args.action == "deny" else ""
    factory = db.session_factory(open_db(settings))
    try:
        with db.transaction(factory) as session:
            if args.action == "approve":
                event = requests.approve(session, now(), settings, args.id, operator(),
                                         force=args.force)
            else:
                event = requests.deny(session, now(), settings, args.id, operator(), text)
            doc = {"id": args.id, "action": event.action, "from_state": event.from_state,
                   "to_state": event.to_state, "detail": event.detail}
    except requests.RequestError as exc:
        raise CliError(str(exc)) from exc
    emit(args, doc, lambda d: f"{d['id']}: {d['action']}: {d['from_state']} -> "
                              f"{d['to_state']}" + (f" ({d['detail']})" if d["detail"] else ""))
    return EXIT_OK


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    from seclistd.workflows.requests import STATES

    noun = sub.add_parser("requests", help="join requests to the distributors lists: list, "
                          "show, approve, deny", parents=parents)
    noun_sub = noun.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("list", cmd_requests_list, "list join requests", noun_sub)
    p.add_argument("--state", metavar="{" + ",".join(STATES) + "}",
                   help="only requests in this state: " + ", ".join(STATES))
    p = add("show", cmd_requests_show, "one join request: answers per criterion, what is "
            "missing, vouches, key, events", noun_sub)
    p.add_argument("id")
    p = add("approve", cmd_requests_decide, "approve a request in pending_review: "
            "create the member and send the welcome", noun_sub)
    p.add_argument("id")
    p.add_argument("--force", action="store_true",
                   help="approve a request that is not yet in pending_review (submitted, "
                        "incomplete or verifying); the event records what it lacked")
    p = add("deny", cmd_requests_decide, "deny an open request and tell the applicant",
            noun_sub)
    p.add_argument("id")
    p.add_argument("--message", "-m", help="a note for the applicant (default: standard "
                                           "input when it is not a terminal)")
