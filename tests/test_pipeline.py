"""A message in, a case and a receipt out: classification, threading, loops, rate limits."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from seclistd import daemon, views
from seclistd.intake.store import accept
from seclistd.models import Case, Message, Outbox
from tests.components import Sink, report
from tests.conftest import Env

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)  # a Thursday


def ingest(env: Env, raw: bytes, now: dt.datetime = NOW, **kw: object):
    return accept(env.factory, env.settings, raw, source="ingest", now=now, **kw)


def deliver(env: Env, now: dt.datetime = NOW) -> int:
    return daemon.drain_relay(env.settings, env.factory, lambda: now)


def case_doc(env: Env, case_id: str) -> dict:
    with env.factory() as session:
        doc = views.show_case(session, env.settings.project.tz, case_id)
    assert doc is not None
    return doc


def test_new_report_opens_case_with_threaded_receipt_and_team_notice(env: Env, sink: Sink):
    outcome = ingest(env, report(1, headers="Return-Path: <bounces+r1@example.net>\r\n"))
    assert outcome.route == "new_report" and outcome.case_id == "SEC-2026-0001"
    assert deliver(env) == 2

    [receipt] = sink.to("bounces+r1@example.net")  # the return path, not From
    msg = receipt.message
    assert msg["Subject"] == "[SEC-2026-0001] Vulnerability number 1"
    assert msg["In-Reply-To"] == "<report-1@example.net>"
    assert "<report-1@example.net>" in msg["References"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert receipt.rcpt_tos == ["bounces+r1@example.net"]
    assert "SEC-2026-0001" in msg.get_body().get_content()

    [notice] = sink.to("alice@example.org")
    assert "[SEC-2026-0001]" in notice.message["Subject"]
    assert "buffer overflow in version 1.1" in notice.message.get_body().get_content()

    doc = case_doc(env, "SEC-2026-0001")
    assert doc["state"] == "new"
    assert doc["reporter"] == "reporter1@example.net"
    # Thursday 19 Nov 2026 in New York: Fri 20, Mon 23, Tue 24 -> end of Tuesday, local time.
    assert doc["ack_due"] == "2026-11-24T23:59:59-05:00"
    assert [m["direction"] for m in doc["messages"]] == ["in", "out", "out"]
    [opened] = doc["events"]
    assert opened["action"] == "open" and opened["to_state"] == "new"
    assert "receipt sent to bounces+r1@example.net" in opened["detail"]
    assert "team notified: alice@example.org" in opened["detail"]


def test_case_ids_number_per_year(env: Env):
    first = ingest(env, report(1))
    second = ingest(env, report(2))
    next_year = ingest(env, report(3), now=dt.datetime(2027, 1, 2, 12, tzinfo=dt.UTC))
    assert (first.case_id, second.case_id, next_year.case_id) == (
        "SEC-2026-0001", "SEC-2026-0002", "SEC-2027-0001")


def test_reply_threads_by_references_then_subject_tag_and_gets_no_answer(env: Env, sink: Sink):
    ingest(env, report(1))
    deliver(env)
    receipt_id = sink.to("reporter1@example.net")[0].message["Message-ID"]

    by_reference = report(2, sender="reporter1@example.net", subject="more details",
                          headers=f"In-Reply-To: {receipt_id}\r\nReferences: {receipt_id}\r\n")
    by_tag = report(3, sender="someone@example.com",
                    subject="Re: [SEC-2026-0001] Vulnerability number 1")
    unknown_tag = report(4, subject="Re: [SEC-2026-0999] no such case")
    assert ingest(env, by_reference).case_id == "SEC-2026-0001"
    assert ingest(env, by_tag).case_id == "SEC-2026-0001"
    fresh = ingest(env, unknown_tag)
    assert fresh.route == "new_report" and fresh.case_id == "SEC-2026-0002"

    before = len(sink.messages())
    deliver(env)
    # No answer to replies. New: the second case's receipt and team notice, the reporter's
    # own reply forwarded to the team, and the stranger's marked as not from the reporter.
    assert len(sink.messages()) == before + 4
    assert sink.to("someone@example.com") == []
    [other] = [r for r in sink.to("alice@example.org")
               if "Not from the reporter" in r.message["Subject"]]
    assert "someone@example.com, not the reporter" in other.message.get_body().get_content()
    forwards = [r for r in sink.to("alice@example.org")
                if "Reporter wrote" in r.message["Subject"]]
    assert len(forwards) == 1 and "[SEC-2026-0001]" in forwards[0].message["Subject"]
    assert "Report 2: a buffer overflow" in forwards[0].message.get_body().get_content()
    doc = case_doc(env, "SEC-2026-0001")
    assert [m["from"] for m in doc["messages"] if m["direction"] == "in"] == [
        "reporter1@example.net", "reporter1@example.net", "someone@example.com"]


def test_no_automatic_answer_to_auto_replies_lists_daemons_or_ourselves(env: Env, sink: Sink):
    cases = {
        "auto": report(1, headers="Auto-Submitted: auto-generated\r\n"),
        "precedence": report(2, headers="Precedence: bulk\r\n"),
        "list": report(3, headers="List-Id: <dev.example.net>\r\n"),
        "request": report(4, sender="announce-request@example.net"),
        "owner": report(5, sender="owner-announce@example.net"),
        "daemon": report(6, sender="MAILER-DAEMON@example.net"),
        "null": report(7, headers="Return-Path: <>\r\n"),
        "suppress": report(8, headers="X-Auto-Response-Suppress: All\r\n"),
    }
    outcomes = {name: ingest(env, raw) for name, raw in cases.items()}
    deliver(env)
    # Unthreaded automatic mail is kept in quarantine; the rest opened cases without receipt.
    assert outcomes["auto"].status == "quarantined"
    assert outcomes["daemon"].status == "quarantined"  # a mailer daemon: a bounce
    for name in ("precedence", "list", "request", "owner", "null", "suppress"):
        assert outcomes[name].route == "new_report", name
        doc = case_doc(env, outcomes[name].case_id)
        assert "receipt_withheld" in [e["action"] for e in doc["events"]], name
    receipts = [r for r in sink.messages() if "alice@example.org" not in r.rcpt_tos]
    assert receipts == []
    subjects = [r.message["Subject"] for r in sink.to("alice@example.org")]
    # The team still hears of every case, and of each message kept in quarantine.
    assert len([s for s in subjects if "New report" in s]) == 6
    assert len([s for s in subjects if s.startswith("Quarantined: message")]) == 2


def test_automatic_answers_are_rate_limited_per_sender(env: Env, sink: Sink):
    limit = env.settings.autoreply.max_per_sender_per_day
    for i in range(limit + 2):
        ingest(env, report(i, sender="flood@example.net"), now=NOW + dt.timedelta(minutes=i))
    deliver(env, NOW + dt.timedelta(hours=1))
    assert len(sink.to("flood@example.net")) == limit
    with env.factory() as session:
        assert session.scalar(select(func.count(Case.id))) == limit + 2
    # A day later the sender gets answers again.
    ingest(env, report(99, sender="flood@example.net"), now=NOW + dt.timedelta(days=1, hours=1))
    deliver(env, NOW + dt.timedelta(days=1, hours=1))
    assert len(sink.to("flood@example.net")) == limit + 1


def test_loops_are_quarantined_with_reason(env: Env, sink: Sink):
    hops = "".join(f"Received: from h{i} by h{i+1}; Thu, 19 Nov 2026 10:00:00 +0000\r\n"
                   for i in range(60))
    many_hops = ingest(env, report(1, headers=hops))
    ourselves = ingest(env, report(2, sender="security@example.org"))
    x_loop = ingest(env, report(3, headers="X-Loop: security@example.org\r\n"))
    for outcome in (many_hops, ourselves, x_loop):
        assert outcome.status == "quarantined"
        assert outcome.reason.startswith("mail loop")
    assert deliver(env) == 0


def test_bounce_of_our_receipt_lands_on_its_case(env: Env, sink: Sink):
    ingest(env, report(1))
    with env.factory() as session:
        receipt_id = session.scalar(select(Outbox.message_id).where(Outbox.kind == "receipt"))
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        "To: security@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.example.net>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; reporter1@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {receipt_id}\r\n"
        "Subject: [SEC-2026-0001] Vulnerability number 1\r\n\r\n--b--\r\n").encode()
    outcome = ingest(env, dsn)
    assert (outcome.route, outcome.case_id) == ("bounce", "SEC-2026-0001")
    assert "bounce" in [e["action"] for e in case_doc(env, "SEC-2026-0001")["events"]]


def test_duplicates_are_stored_once(env: Env):
    raw = report(1)
    first, again = ingest(env, raw), ingest(env, raw)
    assert not first.duplicate and again.duplicate and again.id == first.id
    # Same Message-ID, different bytes: kept as its own message (not silently dropped).
    changed = ingest(env, raw.replace(b"buffer overflow", b"heap overflow"))
    assert not changed.duplicate
    with env.factory() as session:
        assert session.scalar(select(func.count(Message.id))) == 2


def test_encoded_crlf_in_subject_injects_no_header(env: Env, sink: Sink):
    evil = report(1, subject="=?utf-8?q?hello=0D=0ABcc:_victim@example.com=0D=0AX-Evil:_1?=")
    outcome = ingest(env, evil)
    assert outcome.route == "new_report"
    deliver(env)
    for received in sink.messages():
        assert received.message["Bcc"] is None and received.message["X-Evil"] is None
        assert "victim@example.com" not in received.rcpt_tos
        assert b"\r\nBcc:" not in received.raw and b"\r\nX-Evil:" not in received.raw


def test_bad_from_goes_to_quarantine_with_reason(env: Env):
    raw = report(1).replace(b"From: Reporter 1 <reporter1@example.net>",
                            b"From: alice@example.org)<bob@example.org>")
    outcome = ingest(env, raw)
    assert outcome.status == "quarantined"
    assert "From header is malformed" in outcome.reason


def test_a_failure_inside_the_pipeline_keeps_the_message_in_quarantine(env: Env, monkeypatch):
    from seclistd.workflows import report as workflow

    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(workflow, "open_case", broken)
    outcome = ingest(env, report(1))
    assert outcome.status == "quarantined"
    # The error's type and place, never its text (which may quote the message).
    assert outcome.reason.startswith("internal error while processing: RuntimeError at ")
    assert "in broken" in outcome.reason and "exploded" not in outcome.reason
    with env.factory() as session:
        assert session.scalar(select(Message.raw)) == report(1)
        assert session.scalar(select(func.count(Case.id))) == 0
        # Nothing half-done: the only mail is the team's notice of the quarantined message.
        assert session.scalars(select(Outbox.kind)).all() == ["quarantined"]
    monkeypatch.undo()
    # Once fixed, the operator releases it and it becomes the case it should have been.
    from seclistd.intake.store import release

    released = release(env.factory, env.settings, outcome.id, NOW)
    assert released.route == "new_report" and released.case_id == "SEC-2026-0001"
