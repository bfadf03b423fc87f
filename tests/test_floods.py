"""Backscatter and floods (issue 8, item 8): one mailbox is counted once however it is
spelled, automatic answers have a global hourly cap, a flood of reports reaches the team as
a digest, and a receipt quotes only a short prefix of the subject and nothing of the body."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import daemon, db
from seclistd.intake.store import accept
from seclistd.mail.loops import canonical_mailbox
from seclistd.models import Event
from seclistd.workflows import notices
from tests.components import Sink, report
from tests.conftest import Env, make_env

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)  # a Thursday


def flood_env(tmp_path: Path, sink: Sink, **autoreply: int) -> Env:
    keys = "".join(f"{k} = {v}\n" for k, v in autoreply.items())
    return make_env(tmp_path, relay_port=sink.port, extra=f"[autoreply]\n{keys}")


def ingest(env: Env, raw: bytes, now: dt.datetime):
    return accept(env.factory, env.settings, raw, source="ingest", now=now)


def deliver(env: Env, now: dt.datetime) -> int:
    return daemon.drain_relay(env.settings, env.factory, lambda: now)


def digest_sweep(env: Env, now: dt.datetime) -> int:
    with db.transaction(env.factory) as session:
        return notices.sweep(session, now, env.settings)


def events(env: Env, case_id: str, action: str) -> list[str]:
    with env.factory() as session:
        return list(session.scalars(select(Event.detail).where(
            Event.case_id == case_id, Event.action == action)))


def subjects(sink: Sink, to: str) -> list[str]:
    return [r.message["Subject"] for r in sink.to(to)]


@pytest.mark.parametrize("spelling", [
    '"bs"@x.example', "BS@X.EXAMPLE.", "@r.example:bs@x.example", "<bs@x.example>",
    "@a.example,@b.example:Bs@X.Example", '"b\\s"@x.example'])
def test_every_spelling_of_one_mailbox_is_one_mailbox(spelling: str):
    assert canonical_mailbox(spelling) == "bs@x.example"


def test_a_quoted_local_part_keeps_quotes_only_where_they_mean_something():
    assert canonical_mailbox('"b s"@X.example') == '"b s"@x.example'
    assert canonical_mailbox('"a@b"@x.example') == '"a@b"@x.example'
    assert canonical_mailbox('"first.last"@x.example') == "first.last@x.example"
    assert canonical_mailbox('"..x"@x.example') == '"..x"@x.example'


def test_three_spellings_of_one_mailbox_get_at_most_the_cap(tmp_path: Path, sink: Sink):
    env = flood_env(tmp_path, sink, max_per_sender_per_day=2)
    spellings = ['"bs"@x.example', "BS@X.EXAMPLE.", "@r.example:bs@x.example",
                 '"BS"@x.example.', "bs@x.example"]
    outcomes = [ingest(env, report(i, headers=f"Return-Path: <{s}>\r\n"),
                       NOW + dt.timedelta(minutes=i)) for i, s in enumerate(spellings)]
    assert all(o.route == "new_report" for o in outcomes)
    deliver(env, NOW + dt.timedelta(minutes=10))
    receipts = [r for r in sink.messages() if "alice@example.org" not in r.rcpt_tos]
    assert len(receipts) == 2
    assert all(r.rcpt_tos == ["bs@x.example"] for r in receipts)
    for outcome in outcomes[2:]:
        [withheld] = events(env, outcome.case_id, "receipt_withheld")
        assert "bs@x.example already had 2 automatic answers" in withheld
        assert "autoreply.max_per_sender_per_day" in withheld


def test_subaddresses_and_idn_spellings_count_as_one_target(tmp_path: Path, sink: Sink):
    env = flood_env(tmp_path, sink, max_per_sender_per_day=2)
    spellings = ["victim+0@example.com", "victim+1@example.com", "Victim@example.com",
                 "victim@exämple.com", "victim+2@xn--exmple-cua.com"]
    outcomes = [ingest(env, report(i, headers=f"Return-Path: <{s}>\r\n"),
                       NOW + dt.timedelta(minutes=i)) for i, s in enumerate(spellings)]
    deliver(env, NOW + dt.timedelta(minutes=10))
    receipts = [r for r in sink.messages() if "alice@example.org" not in r.rcpt_tos]
    # Two targets: victim@example.com (3 spellings) and the IDN domain (2 spellings).
    assert {r.rcpt_tos[0] for r in receipts} == {
        "victim+0@example.com", "victim+1@example.com", "victim@exämple.com",
        "victim+2@xn--exmple-cua.com"}
    assert events(env, outcomes[2].case_id, "receipt_withheld")


def test_automatic_answers_have_a_global_hourly_cap(tmp_path: Path, sink: Sink):
    env = flood_env(tmp_path, sink, max_per_hour=3)
    outcomes = [ingest(env, report(i), NOW + dt.timedelta(minutes=i)) for i in range(5)]
    deliver(env, NOW + dt.timedelta(minutes=10))
    answered = [i for i in range(5) if sink.to(f"reporter{i}@example.net")]
    assert answered == [0, 1, 2]
    for outcome in outcomes[3:]:
        [withheld] = events(env, outcome.case_id, "receipt_withheld")
        assert "3 automatic answers went out within the last hour (autoreply.max_per_hour)" \
            in withheld
    # An hour after those three, answers go out again.
    later = NOW + dt.timedelta(hours=1, minutes=5)
    ingest(env, report(7), later)
    deliver(env, later)
    assert len(sink.to("reporter7@example.net")) == 1


def test_a_flood_of_reports_reaches_the_team_as_a_digest(tmp_path: Path, sink: Sink):
    env = flood_env(tmp_path, sink, team_digest_after=3)
    outcomes = [ingest(env, report(i, body=f"Flood body {i}: overflow details."),
                       NOW + dt.timedelta(minutes=i)) for i in range(4)]
    deliver(env, NOW + dt.timedelta(minutes=5))
    # N+1 reports in an hour: N notices, the last one held for the digest.
    notices_sent = [s for s in subjects(sink, "alice@example.org") if "New report" in s]
    assert len(notices_sent) == 3
    held = outcomes[3].case_id
    assert not any(f"[{held}]" in s for s in notices_sent)
    assert "team told in the next digest" in events(env, held, "open")[0]
    # Every report still got its receipt and its case.
    assert all(sink.to(f"reporter{i}@example.net") for i in range(4))

    assert digest_sweep(env, NOW + dt.timedelta(minutes=6)) == 1
    deliver(env, NOW + dt.timedelta(minutes=6))
    [digest] = [r for r in sink.to("alice@example.org")
                if r.message["Subject"].startswith("Digest:")]
    body = digest.message.get_body().get_content()
    assert held in body
    assert not any(o.case_id in body for o in outcomes[:3])
    assert "Flood body" not in body
    assert digest.message["Auto-Submitted"] == "auto-generated"

    # The flood goes on: the next report waits for the next digest, an hour after the last.
    fifth = ingest(env, report(5), NOW + dt.timedelta(minutes=20))
    assert digest_sweep(env, NOW + dt.timedelta(minutes=30)) == 0
    assert digest_sweep(env, NOW + dt.timedelta(minutes=67)) == 1
    deliver(env, NOW + dt.timedelta(minutes=67))
    digests = [r for r in sink.to("alice@example.org")
               if r.message["Subject"].startswith("Digest:")]
    assert len(digests) == 2 and fifth.case_id in digests[1].message.get_body().get_content()
    assert digest_sweep(env, NOW + dt.timedelta(hours=3)) == 0  # nothing held: no mail


def test_a_receipt_quotes_a_short_subject_prefix_and_nothing_of_the_body(env: Env, sink: Sink):
    subject = "Cheap watches " + "x" * 40 + " ENDOFSUBJECT and more spam words here"
    raw = report(1, subject=subject, body="Visit spam.example for the best deals BODYMARK")
    raw = raw.replace(b"From: Reporter 1", b'From: "' + b"Buy now at spam.example " * 5 + b'"')
    ingest(env, raw, NOW)
    deliver(env, NOW)
    [receipt] = sink.to("reporter1@example.net")
    text = receipt.raw.decode()
    assert "BODYMARK" not in text and "ENDOFSUBJECT" not in text
    assert "Cheap watches xxxx" in receipt.message.get_body().get_content()
    assert len(receipt.message["Subject"]) <= len("[SEC-2026-0001] ") + 60
    assert text.count("spam.example") <= 2  # the display name, shortened, in To and greeting


def test_digests_and_quarantine_notices_on_postgresql(tmp_path: Path, pg_url: str, sink: Sink):
    env = make_env(tmp_path, db_url=pg_url, relay_port=sink.port,
                   extra="[autoreply]\nteam_digest_after = 1\nquarantine_digest_after = 1\n")
    try:
        reports = [ingest(env, report(i), NOW + dt.timedelta(minutes=i)) for i in range(2)]
        junk = [ingest(env, b"\x00 not mail %d\r\n" % i, NOW + dt.timedelta(minutes=i))
                for i in range(2)]
        assert [o.status for o in junk] == ["quarantined"] * 2
        assert digest_sweep(env, NOW + dt.timedelta(minutes=5)) == 2
        assert digest_sweep(env, NOW + dt.timedelta(minutes=6)) == 0
        deliver(env, NOW + dt.timedelta(minutes=6))
        team = subjects(sink, "alice@example.org")
        assert sorted(s.split(" from ")[0] for s in team if not s.startswith("[")) == [
            "Digest: 1 messages quarantined", "Digest: 1 new reports",
            f"Quarantined: message {junk[0].id}"]
        assert len([s for s in team if "New report" in s]) == 1
        assert reports[1].case_id in "".join(
            r.message.get_body().get_content() for r in sink.to("alice@example.org")
            if r.message["Subject"] == "Digest: 1 new reports")
    finally:
        env.factory.kw["bind"].dispose()
