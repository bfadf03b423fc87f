"""Bounces of mail to list members: real DSNs (built with the email package as an MTA
builds them) fed through ``accept``, the listener and ``run --once``, with time passed
explicitly: counted once a day, suspended at the threshold, warned, removed, resumed, and
forged bounces that change nothing."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import smtplib
import uuid
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from sqlalchemy import select

from seclistd import config, daemon
from seclistd.db import transaction
from seclistd.intake.listener import Handler, make_controller
from seclistd.intake.store import accept
from seclistd.list_models import Member, MemberEvent
from seclistd.mail import dsn, verp
from seclistd.models import Case, Outbox
from seclistd.models import Message as Stored
from seclistd.scheduler import run_sweep
from seclistd.workflows import bounces, member_states
from tests.components import CLOCK, Sink, cli, free_port, wait_port
from tests.conftest import Env

MEMBER = "security@distro.example.net"
OTHER = "psirt@vendor.example.com"
SECURITY = "security@example.org"
T0 = CLOCK  # Thursday 19 November 2026, 10:00 in New York
DAY = dt.timedelta(days=1)


def add(env: Env, email: str = MEMBER, at: dt.datetime = T0 - 30 * DAY) -> str:
    """A member of the list, made directly (the members CLI is another part); its token."""
    with transaction(env.factory) as session:
        member = member_states.add_member(session, list_name="distributors", email=email,
                                          organization="Distro", actor="test", now=at)
        return member.bounce_token


def member(env: Env, email: str = MEMBER) -> Member:
    with env.factory() as session:
        found = session.scalars(select(Member).where(Member.email == email)).one()
        session.expunge(found)
        return found


def events(env: Env, email: str = MEMBER) -> list[tuple[str, str]]:
    with env.factory() as session:
        found = session.scalars(select(Member).where(Member.email == email)).one()
        return [(e.action, e.detail) for e in found.events]


def actions(env: Env, email: str = MEMBER) -> list[str]:
    return [action for action, _ in events(env, email)]


def delivery_status(recipient: str, action: str, status: str) -> Message:
    """The message/delivery-status part: a per-message block and one per recipient."""
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mx.distro.example.net"
    per_message["Arrival-Date"] = "Thu, 19 Nov 2026 10:00:01 +0000"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Original-Recipient"] = f"rfc822;{recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Remote-MTA"] = "dns; mx.distro.example.net"
    per_recipient["Diagnostic-Code"] = f"smtp; 550 {status} <{recipient}>: mailbox unavailable"
    part = Message()
    part["Content-Type"] = "message/delivery-status"
    part.set_payload([per_message, per_recipient])
    return part


def bounce(to: str, *, recipient: str = MEMBER, action: str = "failed", status: str = "5.1.1",
           headers: dict[str, str] | None = None) -> bytes:
    """An RFC 3464 report as Postfix writes one, addressed to the bounced mail's return path."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["Return-Path"] = "<>"
    report["From"] = "MAILER-DAEMON@mx.distro.example.net (Mail Delivery System)"
    report["To"] = to
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = "Thu, 19 Nov 2026 10:00:02 +0000"
    report["Message-ID"] = f"<{uuid.uuid4().hex}@mx.distro.example.net>"
    report["Auto-Submitted"] = "auto-replied"
    for name, value in (headers or {}).items():
        report[name] = value
    report.attach(MIMEText("This is the mail system at host mx.distro.example.net.\n\n"
                           "I'm sorry to have to inform you that your message could not\n"
                           "be delivered to one or more recipients.\n"))
    report.attach(delivery_status(recipient, action, status))
    original = Message()
    original["Content-Type"] = "text/rfc822-headers"
    original.set_payload(f"From: Example security team <{SECURITY}>\nTo: {recipient}\n"
                         "Subject: Embargoed notice\n"
                         "Message-ID: <abc.seclistd@example.org>\n")
    report.attach(original)
    return report.as_bytes()


def ingest(env: Env, raw: bytes, at: dt.datetime, envelope_to: list[str] | None = None):
    return accept(env.factory, env.settings, raw, source="ingest", now=at,
                  envelope_to=envelope_to)


def hard(env: Env, token: str, at: dt.datetime):
    return ingest(env, bounce(verp.bounce_address(SECURITY, token)), at)


def outbox(env: Env, kind: str | None = None) -> list[Outbox]:
    with env.factory() as session:
        query = select(Outbox).order_by(Outbox.id)
        if kind:
            query = query.where(Outbox.kind == kind)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def sweep(env: Env, at: dt.datetime) -> int:
    return run_sweep(env.factory, lambda: at, env.settings, bounces.sweep)


def suspend_by_bounces(env: Env, token: str) -> dt.datetime:
    """Three hard bounces on three days; returns when the member was suspended."""
    for day in range(3):
        hard(env, token, T0 + day * DAY)
    assert member(env).state == "suspended"
    return T0 + 2 * DAY


# --- the DSN reader -----------------------------------------------------------------------

def test_dsn_reader_hard_soft_and_loose():
    failed = dsn.read(bounce("x@example.org"))
    assert (failed.kind, failed.verdict) == ("rfc3464", "hard")
    assert [(r.address, r.action, r.status) for r in failed.recipients] == [
        (MEMBER, "failed", "5.1.1")]
    delayed = dsn.read(bounce("x@example.org", action="delayed", status="4.4.7"))
    assert (delayed.verdict, delayed.hard) == ("soft", False)
    # Without an Action, the status class decides.
    assert dsn.verdict_of("", "5.7.1") == "hard" and dsn.verdict_of("", "4.2.2") == "soft"
    # Postfix gives up on a temporary failure after its queue lifetime: still not delivered.
    assert dsn.verdict_of("failed", "4.4.1") == "hard"
    assert dsn.verdict_of("delivered", "2.0.0") == "none"
    # qmail and friends: no report, only a daemon's mail whose subject says it failed.
    plain = EmailMessage()
    plain["From"] = "MAILER-DAEMON@mx.example.net"
    plain["Subject"] = "failure notice"
    plain.set_content("Hi. This is the qmail-send program. Sorry, it didn't work out.")
    loose = dsn.read(plain.as_bytes(), from_addr="mailer-daemon@mx.example.net",
                     subject="failure notice")
    assert (loose.kind, loose.verdict) == ("loose", "hard")
    vacation = dsn.read(plain.as_bytes(), from_addr="someone@example.net",
                        subject="Out of office")
    assert (vacation.kind, vacation.verdict) == ("none", "none")


def test_dsn_reader_decodes_an_encoded_status_and_stays_bounded():
    raw = bounce("x@example.org").replace(b"Content-Type: message/delivery-status\n\n",
                                          b"Content-Type: message/delivery-status\n"
                                          b"Content-Transfer-Encoding: base64\n\n")
    status = (b"Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; " + MEMBER.encode()
              + b"\nAction: failed\nStatus: 5.2.1\n")
    head, _, _ = raw.partition(b"Content-Transfer-Encoding: base64\n\n")
    boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    encoded = (head + b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(status)
               + b"\n--" + boundary + b"--\n")
    read = dsn.read(encoded)
    assert [(r.address, r.status) for r in read.recipients] == [(MEMBER, "5.2.1")]
    assert read.hard
    # Thousands of parts: the parser stops at its cap, nothing is counted as hard.
    parts = b"".join(b"--B\nContent-Type: text/plain\n\nx\n" for _ in range(5000))
    many = (b"From: MAILER-DAEMON@x\nContent-Type: multipart/report; "
            b"report-type=delivery-status; boundary=B\n\n" + parts + b"--B--\n")
    assert not dsn.read(many, from_addr="mailer-daemon@x", subject="").hard


# --- counting ------------------------------------------------------------------------------

def test_three_hard_bounces_on_one_day_count_once(env: Env):
    token = add(env)
    outcomes = [hard(env, token, T0 + dt.timedelta(hours=h)) for h in (0, 3, 8)]
    assert [(o.status, o.route, o.case_id) for o in outcomes] == [
        ("processed", "member_bounce", None)] * 3
    m = member(env)
    assert (m.state, m.bounce_score, m.last_bounce_at) == ("active", 1, T0)
    details = [d for a, d in events(env) if a == "bounce"]
    assert len(details) == 3
    assert "score 1 of 3" in details[0] and f"message {outcomes[0].id}" in details[0]
    assert all("counted today already" in d for d in details[1:])
    assert "failed 5.1.1" in details[0] and MEMBER in details[0]
    with env.factory() as session:  # no case opened, nobody answered, the team not paged
        assert session.scalar(select(Case.id)) is None
    assert outbox(env) == []
    # The next local day (New York) counts again, although it is the same UTC date as an
    # earlier bounce would suggest: 23:30 EST on the 19th is 04:30 UTC on the 20th.
    hard(env, token, dt.datetime(2026, 11, 20, 4, 30, tzinfo=dt.UTC))
    assert member(env).bounce_score == 1  # still the 19th in New York
    hard(env, token, dt.datetime(2026, 11, 20, 5, 30, tzinfo=dt.UTC))
    assert member(env).bounce_score == 2


def test_suspended_at_the_threshold_and_member_and_team_told(env: Env, sink: Sink):
    token = add(env)
    hard(env, token, T0)
    hard(env, token, T0 + DAY)
    assert member(env).state == "active"  # two days: not yet
    hard(env, token, T0 + 2 * DAY)
    m = member(env)
    assert m.state == "suspended" and m.bounce_score == 3
    assert m.state_reason.startswith("mail to the member kept bouncing")
    assert m.next_bounce_warning_at == T0 + 9 * DAY
    assert actions(env)[-3:] == ["bounce", "suspend", "bounce_notice"]
    rows = outbox(env, "member_suspended")
    assert sorted(r.to_addr for r in rows) == ["alice@example.org", MEMBER]
    note = next(r for r in rows if r.to_addr == MEMBER)
    # The member's note goes with its own return path (it may bounce too), in plaintext.
    assert note.envelope_from == verp.bounce_address(SECURITY, token)
    assert (note.must_encrypt, note.encrypt_to, note.member_id) == (False, None, m.id)
    daemon.drain_relay(env.settings, env.factory, lambda: T0 + 2 * DAY)
    [got] = sink.to(MEMBER)
    assert got.mail_from == verp.bounce_address(SECURITY, token)
    body = got.message.get_content()
    assert "suspended" in body and "3 separate days" in body
    assert "Saturday 12 December 2026" in body  # removal: 3 weeks after the suspension
    [team] = sink.to("alice@example.org")
    assert "members resume security@distro.example.net" in team.message.get_content()
    assert team.message["Subject"] == f"Member suspended (bounces): {MEMBER}"
    # The suspension note bounces too: recorded, counted at most once a day, no more notes.
    hard(env, token, T0 + 2 * DAY + dt.timedelta(hours=1))
    hard(env, token, T0 + 3 * DAY)
    assert member(env).bounce_score == 4 and member(env).state == "suspended"
    assert len(outbox(env, "member_suspended")) == 2


def test_warned_then_removed(env: Env, sink: Sink):
    token = add(env)
    suspended = suspend_by_bounces(env, token)
    sweep(env, suspended + 7 * DAY - dt.timedelta(minutes=1))
    assert outbox(env, "member_bounce_warning") == []
    sweep(env, suspended + 7 * DAY)
    sweep(env, suspended + 7 * DAY + dt.timedelta(hours=1))  # no second warning
    [first] = outbox(env, "member_bounce_warning")
    assert first.to_addr == MEMBER and first.subject.startswith("Warning 1 of 2")
    sweep(env, suspended + 14 * DAY)
    assert len(outbox(env, "member_bounce_warning")) == 2
    sweep(env, suspended + 21 * DAY - dt.timedelta(minutes=1))
    assert member(env).state == "suspended"
    sweep(env, suspended + 21 * DAY)
    m = member(env)
    assert m.state == "removed" and m.removed_at == suspended + 21 * DAY
    assert "removed after 2 warning(s)" in m.state_reason
    assert actions(env)[-4:] == ["bounce_warning", "bounce_warning", "remove",
                                 "bounce_notice"]
    assert sorted(r.to_addr for r in outbox(env, "member_removed")) == [
        "alice@example.org", MEMBER]
    sweep(env, suspended + 60 * DAY)  # removed: nothing more
    assert len(outbox(env, "member_removed")) == 2
    # A bounce of a removed member is recorded, and counts for nothing.
    hard(env, token, suspended + 61 * DAY)
    assert events(env)[-1][0] == "bounce" and "removed, not counted" in events(env)[-1][1]


def test_resume_resets_the_score_and_stops_the_warnings(env: Env):
    token = add(env)
    suspended = suspend_by_bounces(env, token)
    with transaction(env.factory) as session:
        found = session.scalars(select(Member)).one()
        member_states.change_state(session, found, "resume", actor="bob@example.org",
                                   now=suspended + DAY, reason="their MX is fixed")
    m = member(env)
    assert (m.state, m.bounce_score, m.bounce_warnings, m.next_bounce_warning_at) == (
        "active", 0, 0, None)
    sweep(env, suspended + 30 * DAY)
    assert outbox(env, "member_bounce_warning") == [] and member(env).state == "active"
    hard(env, token, suspended + 31 * DAY)
    assert member(env).bounce_score == 1 and member(env).state == "active"


def test_a_stale_score_starts_again(env: Env):
    token = add(env)
    hard(env, token, T0)
    hard(env, token, T0 + DAY)
    hard(env, token, T0 + DAY + 91 * DAY)  # over bounce_stale_after_days (90)
    m = member(env)
    assert (m.state, m.bounce_score) == ("active", 1)
    assert "was stale" in events(env)[-1][1]


def test_delays_and_automatic_replies_count_for_nothing(env: Env):
    token = add(env)
    address = verp.bounce_address(SECURITY, token)
    ingest(env, bounce(address, action="delayed", status="4.4.7"), T0)
    vacation = EmailMessage()
    vacation["From"] = f"Distro Security <{MEMBER}>"
    vacation["To"] = address
    vacation["Subject"] = "Out of office"
    vacation["Auto-Submitted"] = "auto-replied"
    vacation["Message-ID"] = "<vacation@distro.example.net>"
    vacation.set_content("I am away until Monday.")
    outcome = ingest(env, vacation.as_bytes(), T0)
    assert (outcome.status, outcome.case_id) == ("processed", None)
    assert member(env).bounce_score == 0
    details = [d for a, d in events(env) if a == "bounce_ignored"]
    assert "delay or temporary failure" in details[0] and "4.4.7" in details[0]
    assert "not a delivery failure" in details[1]
    assert outbox(env) == []  # no receipt to the vacation reply, no team notice


def test_forged_bounces_change_nothing(env: Env):
    token = add(env)
    before = member(env)
    # A token that names no member: quarantined with the reason.
    unknown = ingest(env, bounce(verp.bounce_address(SECURITY, "0" * 20)), T0)
    assert unknown.status == "quarantined"
    assert "token names no list member" in unknown.reason
    # Not hex, or another domain: not one of our return paths at all.
    for to in (f"security+bounce-{token}zz@example.org", f"security+bounce-{token}@evil.test"):
        outcome = ingest(env, bounce(to), T0)
        assert outcome.route != "member_bounce"
    # A bounce to the security address naming the member in its report: the report names
    # the recipient, but only the return path names a member.
    ingest(env, bounce(SECURITY), T0)
    # The listener saw the envelope: a To header naming the member's return path is not
    # where the message was delivered, so it is not read.
    forged = ingest(env, bounce(verp.bounce_address(SECURITY, token)), T0,
                    envelope_to=[SECURITY])
    assert forged.route != "member_bounce"
    after = member(env)
    assert (after.state, after.bounce_score, after.last_bounce_at) == (
        before.state, 0, None)
    assert actions(env) == ["add"]


def test_headers_of_the_delivering_mta_name_the_member_on_imap(env: Env):
    """IMAP and ingest see no envelope: Delivered-To / X-Original-To as Postfix and
    Dovecot write them."""
    token = add(env)
    address = verp.bounce_address(SECURITY, token)
    raw = bounce("Someone Else <whoever@example.net>", headers={"Delivered-To": address})
    assert ingest(env, raw, T0).route == "member_bounce"
    raw = bounce("whoever@example.net", headers={"X-Original-To": address.upper()})
    assert ingest(env, raw, T0 + DAY).route == "member_bounce"
    assert member(env).bounce_score == 2


def test_the_listener_takes_member_return_paths(env: Env):
    token = add(env)
    port = free_port()
    settings = dataclasses.replace(env.settings, listener=dataclasses.replace(
        env.settings.listener, port=port, host="127.0.0.1"))
    controller = make_controller(settings, Handler(settings, env.factory, lambda: T0))
    controller.start()
    try:
        wait_port(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("<>", [verp.bounce_address(SECURITY, token)],
                            bounce("whoever@example.net").replace(b"\n", b"\r\n"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("<>", ["other+bounce-00@example.org"], b"Subject: x\r\n\r\nx")
    finally:
        controller.stop()
    m = member(env)
    assert m.bounce_score == 1
    with env.factory() as session:
        stored = session.scalars(select(Stored).where(Stored.route == "member_bounce")).one()
        assert stored.envelope_to == verp.bounce_address(SECURITY, token)


def test_one_failing_member_does_not_stop_the_sweep(env: Env, monkeypatch: pytest.MonkeyPatch):
    tokens = [add(env, MEMBER), add(env, OTHER)]
    for token in tokens:
        suspend_by_bounces_of(env, token)
    real = bounces.tell_member

    def failing(session, now, settings, member, **kwargs):  # type: ignore[no-untyped-def]
        if member.email == MEMBER:
            raise RuntimeError("template trouble")
        return real(session, now, settings, member, **kwargs)

    monkeypatch.setattr(bounces, "tell_member", failing)
    due = T0 + 9 * DAY
    assert sweep(env, due) == 1
    assert [r.to_addr for r in outbox(env, "member_bounce_warning")] == [OTHER]
    m = member(env)
    assert (m.bounce_warnings, m.next_bounce_warning_at) == (0, due + dt.timedelta(seconds=300))
    assert actions(env)[-1] == "bounce_failed" and "RuntimeError" in events(env)[-1][1]
    assert len(outbox(env, "member_sweep_failed")) == 1
    sweep(env, due + dt.timedelta(seconds=300))  # fails again: longer backoff, no new notice
    assert member(env).next_bounce_warning_at == due + dt.timedelta(seconds=900)
    assert len(outbox(env, "member_sweep_failed")) == 1
    monkeypatch.setattr(bounces, "tell_member", real)
    sweep(env, due + dt.timedelta(seconds=900))
    assert member(env).bounce_warnings == 1


def suspend_by_bounces_of(env: Env, token: str) -> None:
    for day in range(3):
        hard(env, token, T0 + day * DAY)


def test_run_once_sends_the_due_warning(env: Env, sink: Sink):
    token = add(env)
    suspended = suspend_by_bounces(env, token)
    done = cli(env.path, "run", "--once", at=suspended + 7 * DAY + dt.timedelta(minutes=1))
    assert done.returncode == 0, done.stderr
    assert [r.to_addr for r in outbox(env, "member_bounce_warning")] == [MEMBER]
    [warning] = [r for r in sink.to(MEMBER) if "Warning 1 of 2" in r.message["Subject"]]
    assert warning.mail_from == verp.bounce_address(SECURITY, token)


def test_bounce_settings_are_checked(tmp_path):
    from tests.components import write_config

    path = write_config(tmp_path, extra="[membership]\nbounce_score_threshold = \"three\"\n"
                                         "bounce_warnings = -1\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load(str(path))
    text = str(caught.value)
    assert "membership.bounce_score_threshold: 'three' is not a number" in text
    assert "membership.bounce_warnings: -1 is out of range" in text
    ok = write_config(tmp_path, extra="[membership]\nbounce_score_threshold = 2\n")
    settings = config.load(str(ok)).membership
    assert settings.bounce_score_threshold == 2.0
    assert (settings.key_expiry_warning_days, settings.bounce_stale_after_days,
            settings.bounce_warnings, settings.bounce_warning_interval_days) == (14, 90, 2, 7)


def test_events_are_audited_with_message_numbers(env: Env):
    token = add(env)
    outcome = hard(env, token, T0)
    with env.factory() as session:
        [event] = session.scalars(select(MemberEvent).where(MemberEvent.action == "bounce"))
        assert event.actor == "seclistd" and f"message {outcome.id}" in event.detail
        stored = session.get(Stored, outcome.id)
        assert (stored.case_id, stored.request_id) == (None, None)
