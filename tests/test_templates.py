"""Every template renders with realistic data, and every kind of mail a case's life sends
carries [ID], threading headers, and Auto-Submitted exactly when it is automatic."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy
from importlib import resources

from jinja2 import meta
from sqlalchemy import select

from seclistd.intake.store import accept
from seclistd.mail.render import environment, render
from seclistd.models import Outbox
from tests.components import report
from tests.conftest import Env
from tests.test_lifecycle import COMPLETE, T0, act, at, sweep

CASE = {"id": "SEC-2026-0042", "state": "confirmed", "subject": "Heap overflow in parser",
        "reporter": "rita@example.net", "handler": "alice@example.org",
        "received_at": "Thursday 19 November 2026, 10:00 EST",
        "ack_due": "Tuesday 24 November 2026, 23:59 EST", "embargo_until": None,
        "missing": ["the affected version(s)"], "project": "Example",
        "security_address": "security@example.org"}
CONTEXT = {"case": CASE, "case_id": "SEC-2026-0042", "project": "Example",
           "reporter_name": "Rita", "ack_due": CASE["ack_due"], "missing": CASE["missing"],
           "subject": CASE["subject"], "security_address": "security@example.org",
           "reporter": "rita@example.net", "received_at": CASE["received_at"],
           "receipt_status": "sent to rita@example.net", "encrypted": False,
           "attachments": ["poc.cfg"], "text": "Upload poc.cfg to crash the parser.",
           "actor": "bob@example.org", "days": 2, "business_days": 3, "fallback": True,
           "credit": "Jane Doe (GitHub @janedoe)", "credit_how": "asked",
           "credit_known": False, "default_credit": "name", "action": "reply",
           "reason": "the signature is not by the key on record for the sender",
           "error": "UnicodeEncodeError: 'ascii' codec can't encode characters",
           "retry_at": "Wednesday 25 November 2026, 01:05 EST",
           "notes": ["Not applied, because a From header proves nothing (not signed): credit "
                     "you as: Mallory"],
           "changes": ["credit you as: Jane Doe (GitHub @janedoe)"],
           "token": "0f" * 16, "expires": "Thursday 26 November 2026, 10:00 EST",
           "what": "a new report was opened",
           "message": 17, "sender": "rita@example.net", "envelope_from": "rita@example.net",
           "size": 2048, "threshold": 5, "count": 1, "more": 0,
           "lines": ["SEC-2026-0042  2026-11-19 10:00 EST  rita@example.net  Heap overflow"],
           # A list member's reachability (bounces, key expiry).
           "member": {"email": "security@distro.example.net", "organization": "Distro",
                      "list_name": "distributors", "name": "Distro security"},
           "score": "3", "warning": 1, "warnings": 2, "sweep": "key",
           "remove_at": "Saturday 12 December 2026, 10:00 EST",
           "fingerprint": "0123456789ABCDEF0123456789ABCDEF01234567",
           "list_address": "distributors@example.org",
           # The advisory and the "now public" notices (workflows.disclosure).
           "title": "Heap overflow in parser", "published": "Tuesday 1 December 2026, 10:00 EST",
           "severity": "9.8 (CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H)",
           "affected": "<= 1.4.2", "fixed": "1.4.3",
           "released": "Monday 30 November 2026, 12:00 EST", "workaround": "Disable the parser.",
           "details": "A crafted file overflows a heap buffer.",
           "advisory": "Example security advisory SEC-2026-0042", "team": True,
           "addresses": ["oss-security@lists.example.net"]}
# Mail about a quarantined message concerns no case (yet): it names the message instead.
ABOUT_QUARANTINE = {"team_quarantined.txt.j2", "team_quarantine_digest.txt.j2"}
# Mail about a join request names the request.
REQUEST = {"id": "JOIN-2026-0007", "list": "distributors", "applicant": "acid@seven.example",
           "applicant_name": "Acidburn", "organization": "Seven-Corp",
           "answers": [{"id": "pgp", "criterion": "You can read PGP-encrypted mail",
                        "answer": "Yes."}],
           "voucher_named": "CrashOverride", "fingerprint": "AB" * 20, "key_proved": True,
           "missing": [], "vouches": 1}
CONTEXT.update({"request": REQUEST, "request_id": REQUEST["id"],
                "list_address": "distributors@example.org", "applicant_name": "Acidburn",
                "applicant": "acid@seven.example", "first": True, "state": "verifying",
                "key_needed": True, "token_sent": True, "key_proved": False,
                "fingerprint": "AB" * 20, "vouches": 0, "vouches_required": 1,
                "member_name": "CrashOverride", "member_email": "acid@seven.example",
                "extra": "", "max_embargo_days": 14, "other_sender": ""})
# The embargoed notice's discussion, reminder and leak alerts.
CONTEXT.update({"until": "Tuesday 6 July 2027, 15:00 EDT",
                "until_utc": "Tuesday 6 July 2027, 19:00 UTC", "problem": "not signed",
                "reported_by": "someone@forum.example", "signed": False, "leaks": 2,
                "flagged": True, "copy_of": "security@distro.example"})
# Mail about a list member (reachability, membership changes) names the member and
# concerns no case.
ABOUT_MEMBER = {"member_bounce_suspended.txt.j2", "member_bounce_warning.txt.j2",
                "member_bounce_removed.txt.j2", "team_member_bounces.txt.j2",
                "member_key_expiring.txt.j2", "member_key_suspended.txt.j2",
                "member_key_resumed.txt.j2", "team_member_key.txt.j2",
                "team_member_sweep_failed.txt.j2",
                "member_added.txt.j2", "member_removed.txt.j2", "member_suspended.txt.j2",
                "member_resumed.txt.j2", "team_member_changed.txt.j2",
                "member_confirm_address.txt.j2",
                "member_left.txt.j2", "member_command_refused.txt.j2",
                "member_key_token.txt.j2", "member_key_rotated.txt.j2",
                "member_key_unverified.txt.j2"}
CONTEXT.update({"list_name": "distributors", "email": "security@distro.example",
                "organization": "Distro", "remedy": "", "state": "suspended"})
# The embargoed notice of a case (issue 10).
CONTEXT.update({"until": "Tuesday 8 December 2026, 15:00 UTC (Tuesday 8 December 2026, 10:00 "
                         "EST, America/New_York)",
                "previous": "Monday 7 December 2026, 15:00 UTC", "files": ["fix.patch"],
                "affected_versions": "< 1.4.3", "severity": "CVSS:3.1/AV:N (9.8)"})
# Mail to a list member about the list itself (no case, no member details).
ABOUT_LIST = {"member_key_needed.txt.j2"}


def test_every_template_renders_with_realistic_data():
    names = sorted(p.name for p in resources.files("seclistd").joinpath("templates").iterdir()
                   if p.name.endswith(".j2"))
    assert len(names) >= 10
    env = environment("")
    for name in names:
        source = env.loader.get_source(env, name)[0]
        assert meta.find_undeclared_variables(env.parse(source)) <= set(CONTEXT), name
        text = render(name, "", **CONTEXT)
        if name in ABOUT_QUARANTINE:
            assert "seclistd quarantine show" in text, name
        elif name in ABOUT_LIST:
            assert "distributors@example.org" in text and "SEC-" not in text, name
        elif name.startswith("request_"):
            assert "JOIN-2026-0007" in text, name
        elif name in ABOUT_MEMBER:
            assert "security@distro.example" in text and "SEC-" not in text, name
        else:
            assert "SEC-2026-0042" in text, name
        assert "{{" not in text and "{%" not in text, name


AUTOMATIC = {"receipt": "auto-replied", "team_new_case": "auto-generated",
             "reminder": "auto-generated", "deadline_missed": "auto-generated",
             "fallback_ack": "auto-generated", "assigned": "auto-generated",
             "reporter_forward": "auto-generated", "update_reminder": "auto-generated",
             "confirm_change": "auto-generated", "now_public": "auto-generated"}
BY_A_PERSON = {"ack", "reply", "reject", "disclose"}


def test_every_mail_of_a_life_is_tagged_threaded_and_marked(env: Env):
    accept(env.factory, env.settings, report(1, body="It crashes."), source="ingest", now=T0)
    sweep(env, at(21, 1))
    sweep(env, at(25, 0))
    accept(env.factory, env.settings,
           report(2, sender="reporter1@example.net", subject="Re: [SEC-2026-0001] x",
                  body=COMPLETE), source="ingest", now=at(25, 9))
    act(env, at(25, 10), "SEC-2026-0001", "assign", email="alice@example.org")
    act(env, at(25, 11), "SEC-2026-0001", "reply", text="Working on it.")
    sweep(env, at(25, 11) + dt.timedelta(days=14))
    act(env, at(25, 11) + dt.timedelta(days=15), "SEC-2026-0001", "confirm")
    act(env, at(25, 11) + dt.timedelta(days=15), "SEC-2026-0001", "disclose", text="Public.")
    accept(env.factory, env.settings, report(3), source="ingest", now=T0)
    act(env, T0, "SEC-2026-0002", "reject", text="Not a vulnerability.")

    with env.factory() as session:
        rows = list(session.scalars(select(Outbox)))
    kinds = {row.kind for row in rows}
    assert kinds == set(AUTOMATIC) | {"reply", "disclose", "reject"}
    for row in rows:
        msg = message_from_bytes(row.raw, policy=policy.default)
        assert f"[{row.case_id}]" in msg["Subject"], row.kind
        assert msg["In-Reply-To"], row.kind
        assert msg["Message-ID"] == row.message_id
        if row.kind in BY_A_PERSON:
            assert msg["Auto-Submitted"] is None, row.kind
            assert msg["References"], row.kind
        else:
            assert msg["Auto-Submitted"] == AUTOMATIC[row.kind], row.kind
        assert not msg.defects
