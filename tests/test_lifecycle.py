"""A case's whole life with time driven explicitly: report, receipt, reminders, the fallback
acknowledgment, a human reply, confirm, disclose, close; the reject and duplicate paths;
reminders sent once; completeness, credit and reporter correspondence."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select

from seclistd import daemon, db
from seclistd.intake.store import accept
from seclistd.models import Case, Outbox
from seclistd.workflows import lifecycle, reminders
from tests.components import Received, Sink, report
from tests.conftest import Env

TZ_NY = dt.timezone(dt.timedelta(hours=-5))
# Thursday 19 Nov 2026, 10:00 in New York. Reminders: end of Fri 20 and Mon 23 (local);
# deadline: end of Tue 24 Nov.
T0 = dt.datetime(2026, 11, 19, 10, 0, tzinfo=TZ_NY)
COMPLETE = (
    "The config parser in version 1.4.2 has a heap overflow that allows a remote "
    "unauthenticated attacker to execute code by uploading a crafted file to the /api/import "
    "endpoint of a default installation, which exposes it to the network.\r\n"
    "Steps to reproduce:\r\n1. start the server\r\n2. upload poc.cfg\r\n"
    "No third-party software is involved.\r\nPlease credit me as Jane Doe (GitHub @janedoe).")


def at(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, 0, tzinfo=TZ_NY)


def deliver(env: Env, now: dt.datetime) -> None:
    daemon.drain_relay(env.settings, env.factory, lambda: now)


def sweep(env: Env, now: dt.datetime) -> int:
    with db.transaction(env.factory) as session:
        return reminders.sweep(session, now, env.settings)


def act(env: Env, now: dt.datetime, case_id: str, action: str, actor: str = "alice@example.org",
        **kw: object):
    with db.transaction(env.factory) as session:
        return lifecycle.act(session, now, env.settings, case_id,
                             lifecycle.Request(action=action, **kw), actor)  # type: ignore[arg-type]


def case(env: Env, case_id: str = "SEC-2026-0001") -> Case:
    with env.factory() as session:
        found = session.get(Case, case_id)
        assert found is not None
        return found


def new_mail(sink: Sink, seen: int) -> list[Received]:
    return sink.messages()[seen:]


def test_full_life(env: Env, sink: Sink):
    accept(env.factory, env.settings, report(1, body="It crashes."), source="ingest", now=T0)
    deliver(env, T0)
    receipt = sink.to("reporter1@example.net")[0].message
    assert receipt["Auto-Submitted"] == "auto-replied"
    body = receipt.get_body().get_content()
    assert "the affected version(s)" in body and "steps to reproduce" in body  # asks for them
    seen = len(sink.messages())

    # Nothing before the end of the first business day (Friday 20th, local).
    assert sweep(env, at(20, 23)) == 0
    assert sweep(env, at(21, 1)) == 1  # Saturday 01:00: Friday is over
    deliver(env, at(21, 1))
    [reminder] = new_mail(sink, seen)
    assert reminder.rcpt_tos == ["alice@example.org"]
    assert reminder.message["Subject"].startswith("[SEC-2026-0001] Reminder")
    assert reminder.message["Auto-Submitted"] == "auto-generated"
    assert reminder.message["In-Reply-To"] == "<report-1@example.net>"
    assert sweep(env, at(21, 2)) == 0  # sent once
    seen = len(sink.messages())

    assert sweep(env, at(24, 1)) == 1  # second reminder: Monday 23rd is over
    assert sweep(env, at(24, 23)) == 0  # the deadline is the end of Tuesday 24th
    assert sweep(env, at(25, 0)) == 1
    deliver(env, at(25, 0))
    mails = new_mail(sink, seen)
    assert [m.message["Subject"].split("] ")[1].split(":")[0] for m in mails] == [
        "Reminder", "Deadline missed", "Re"]
    fallback = mails[-1]
    assert fallback.rcpt_tos == ["reporter1@example.net"]
    assert fallback.message["Auto-Submitted"] == "auto-generated"
    assert fallback.message["In-Reply-To"] == "<report-1@example.net>"
    c = case(env)
    assert c.state == "acknowledged" and c.acknowledged_at == at(25, 0)
    assert sweep(env, at(25, 1)) == 0
    seen = len(sink.messages())

    # The reporter writes back with what was missing; the team gets it, the case knows.
    accept(env.factory, env.settings,
           report(2, sender="reporter1@example.net", subject="Re: [SEC-2026-0001] more",
                  body=COMPLETE, headers=f"In-Reply-To: {fallback.message['Message-ID']}\r\n"),
           source="ingest", now=at(25, 9))
    c = case(env)
    assert c.missing_information == [] and c.waiting_on == "team"
    # The credit wish came in a plain reply, and a From line proves nothing: it waits for
    # the one-time code mailed to the reporter's address.
    assert c.credit is None
    deliver(env, at(25, 9))
    [confirmation] = [m for m in new_mail(sink, seen) if "reporter1@example.net" in m.rcpt_tos]
    code = re.search(r"^Code: ([0-9a-f]{32})\r?$",
                     confirmation.message.get_body().get_content(), re.M).group(1)
    accept(env.factory, env.settings,
           report(3, sender="reporter1@example.net", subject="Re: [SEC-2026-0001] yes",
                  body=f"Confirm: {code}",
                  headers=f"In-Reply-To: {confirmation.message['Message-ID']}\r\n"),
           source="ingest", now=at(25, 9) + dt.timedelta(minutes=5))
    c = case(env)
    assert (c.credit, c.credit_github) == ("Jane Doe", "janedoe")
    seen = len(sink.messages())

    act(env, at(25, 10), c.id, "reply", text="Thanks, we reproduced it and are working on a fix.")
    act(env, at(25, 11), c.id, "confirm", versions="<= 1.4.2",
        cvss="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    act(env, at(27, 9), c.id, "comment", text="Fix merged in private fork; internal only.")
    act(env, at(30, 9), c.id, "disclose", text="Fixed in 1.4.3, advisory GHSA-xxxx.")
    act(env, at(30, 10), c.id, "close")
    deliver(env, at(30, 10))

    c = case(env)
    assert (c.state, c.resolution) == ("closed", "fixed")
    assert (c.severity, c.cvss_score) == ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8)
    to_reporter = [m for m in new_mail(sink, seen) if "reporter1@example.net" in m.rcpt_tos]
    assert len(to_reporter) == 2  # the reply and the disclosure; never the comment
    reply, disclosure = (m.message for m in to_reporter)
    assert reply["Auto-Submitted"] is None  # written by a person
    assert reply["In-Reply-To"] == "<report-3@example.net>"  # threaded on their last mail
    assert "we reproduced it" in reply.get_body().get_content()
    text = disclosure.get_body().get_content()
    assert "Jane Doe (GitHub @janedoe)" in text and "Fixed in 1.4.3" in text
    assert all("internal only" not in m.message.get_body().get_content()
               for m in sink.to("reporter1@example.net"))

    with env.factory() as session:
        events = [(e.action, e.from_state, e.to_state) for e in session.get(Case, c.id).events]
    assert events == [
        ("open", None, "new"), ("reminder", "new", "new"), ("reminder", "new", "new"),
        ("fallback_ack", "new", "acknowledged"),
        ("change_unverified", "acknowledged", "acknowledged"),
        ("information", "acknowledged", "acknowledged"),
        ("reply", "acknowledged", "acknowledged"),
        ("change_confirmed", "acknowledged", "acknowledged"),
        ("reply", "acknowledged", "acknowledged"), ("reply", "acknowledged", "acknowledged"),
        ("confirm", "acknowledged", "confirmed"), ("comment", "confirmed", "confirmed"),
        ("disclose", "confirmed", "disclosed"), ("close", "disclosed", "closed")]


def test_human_ack_stops_reminders_and_reporter_updates_are_reminded(env: Env, sink: Sink):
    accept(env.factory, env.settings, report(1, body=COMPLETE), source="ingest", now=T0)
    act(env, at(19, 15), "SEC-2026-0001", "ack", text="We are looking at it.")
    assert case(env).acknowledged_at == at(19, 15)
    assert sweep(env, at(26)) == 0  # no reminders for an acknowledged case
    act(env, at(19, 16), "SEC-2026-0001", "assign", email="alice@example.org")
    deliver(env, at(19, 16))
    seen = len(sink.messages())
    # 14 days after the last mail to the reporter, the handler is reminded, once.
    assert sweep(env, at(19, 15) + dt.timedelta(days=14, seconds=-1)) == 0
    assert sweep(env, at(19, 15) + dt.timedelta(days=14)) == 1
    assert sweep(env, at(19, 15) + dt.timedelta(days=14, hours=1)) == 0
    deliver(env, at(19, 15) + dt.timedelta(days=14))
    [nudge] = new_mail(sink, seen)
    assert nudge.rcpt_tos == ["alice@example.org"]
    assert "has not heard from us for 14 days" in nudge.message.get_body().get_content()
    # A reply to the reporter resets the clock.
    act(env, at(19, 15) + dt.timedelta(days=15), "SEC-2026-0001", "reply", text="Update.")
    assert sweep(env, at(19, 15) + dt.timedelta(days=28)) == 0


def test_reject_and_duplicate_paths(env: Env, sink: Sink):
    for i in (1, 2, 3):
        accept(env.factory, env.settings, report(i), source="ingest", now=T0)
    act(env, at(19, 11), "SEC-2026-0001", "reject", text="This is the documented behaviour.")
    act(env, at(19, 11), "SEC-2026-0002", "ack", text="Thanks, looking.")
    act(env, at(19, 12), "SEC-2026-0002", "duplicate", other="SEC-2026-0003",
        text="Same root cause.")
    rejected, duplicate = case(env, "SEC-2026-0001"), case(env, "SEC-2026-0002")
    assert (rejected.state, rejected.resolution) == ("closed", "rejected")
    assert (duplicate.state, duplicate.resolution) == ("closed", "duplicate")
    assert duplicate.duplicate_of == "SEC-2026-0003"
    deliver(env, at(19, 12))
    [_, rejection] = sink.to("reporter1@example.net")
    assert "documented behaviour" in rejection.message.get_body().get_content()
    assert sweep(env, at(30)) == 1  # only SEC-2026-0003 still waits for an answer


def test_illegal_actions_name_the_state_and_what_is_allowed(env: Env):
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    with pytest.raises(lifecycle.IllegalAction) as err:
        act(env, T0, "SEC-2026-0001", "disclose", text="x")
    assert str(err.value) == ("cannot disclose SEC-2026-0001: it is new; allowed now: ack, "
                              "assign, reject, duplicate, reply, comment, close")
    with pytest.raises(lifecycle.ActionError, match="not a valid CVSS vector"):
        act(env, T0, "SEC-2026-0001", "ack", text="ok")
        act(env, T0, "SEC-2026-0001", "confirm", cvss="CVSS:3.1/AV:X")
    with pytest.raises(lifecycle.ActionError, match="is not a mail address"):
        act(env, T0, "SEC-2026-0001", "assign", email="mallory at example.net")
    with pytest.raises(lifecycle.ActionError, match="not another case"):
        act(env, T0, "SEC-2026-0001", "duplicate", other="SEC-2026-0001")
    with pytest.raises(lifecycle.UnknownCase):
        act(env, T0, "SEC-2026-0099", "comment", text="x")
    with pytest.raises(lifecycle.ActionError, match="so it needs a text"):
        act(env, T0, "SEC-2026-0001", "reply")
    assert case(env).state == "acknowledged"  # the refused actions changed nothing


def test_reminders_are_sent_once_across_restarts_and_not_in_bursts(env: Env, sink: Sink):
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    # The daemon was down for a week: only the latest step (the deadline) happens.
    late = at(27)
    assert sweep(env, late) == 1
    fresh = db.session_factory(db.make_engine(env.settings.database.url))  # a "restart"
    with db.transaction(fresh) as session:
        assert reminders.sweep(session, late, env.settings) == 0
    with env.factory() as session:
        kinds = sorted(session.scalars(select(Outbox.kind).where(Outbox.kind != "receipt")))
    assert kinds == ["deadline_missed", "fallback_ack", "team_new_case"]


def test_fallback_off_tells_the_team_only(tmp_path, sink: Sink):
    from tests.conftest import make_env

    env = make_env(tmp_path, relay_port=sink.port, extra="[sla]\nfallback_ack = false\n")
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    sweep(env, at(25, 0))
    c = case(env)
    assert c.state == "new" and c.acknowledged_at is None
    assert [e.action for e in _events(env)][-1] == "deadline_missed"


def _events(env: Env):
    with env.factory() as session:
        return list(session.get(Case, "SEC-2026-0001").events)


def test_embargo_bounds(env: Env):
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    act(env, T0, "SEC-2026-0001", "ack", text="ok")
    act(env, T0, "SEC-2026-0001", "confirm")
    with pytest.raises(lifecycle.ActionError, match="in the past"):
        act(env, T0, "SEC-2026-0001", "embargo", until=T0 - dt.timedelta(hours=1))
    act(env, T0, "SEC-2026-0001", "embargo", until=T0 + dt.timedelta(days=7))
    act(env, T0, "SEC-2026-0001", "embargo", until=T0 + dt.timedelta(days=9))  # reschedule
    c = case(env)
    assert c.state == "embargoed" and c.embargo_until == T0 + dt.timedelta(days=9)


@pytest.mark.parametrize("reply_to", [None, "rita.private@example.net"])
def test_people_answer_from_or_reply_to_and_automatic_mail_goes_to_the_return_path(
        env: Env, sink: Sink, reply_to: str | None):
    bounces = "bounces+rita=example.net@lists.example.com"
    extra = f"Return-Path: <{bounces}>\r\n"
    if reply_to:
        extra += f"Reply-To: Rita <{reply_to}>\r\n"
    accept(env.factory, env.settings, report(1, sender="rita@example.net", body=COMPLETE,
                                              headers=extra), source="ingest", now=T0)
    person = reply_to or "rita@example.net"
    sweep(env, at(25, 0))  # past the deadline: the fallback acknowledgment
    act(env, at(25, 9), "SEC-2026-0001", "reply", text="We reproduced it.")
    act(env, at(25, 10), "SEC-2026-0001", "confirm")
    act(env, at(25, 11), "SEC-2026-0001", "disclose", text="Fixed in 1.4.3.")
    accept(env.factory, env.settings, report(2, sender="sam@example.net", headers=extra),
           source="ingest", now=T0)
    act(env, T0, "SEC-2026-0002", "ack", text="Thanks, looking.")
    act(env, T0, "SEC-2026-0002", "reject", text="Works as designed.")
    with env.factory() as session:
        sent = [(row.kind, row.to_addr) for row in session.scalars(
            select(Outbox).where(Outbox.kind.not_in(
                ("team_new_case", "reminder", "deadline_missed", "now_public")))
                .order_by(Outbox.id))]
    assert sent == [("receipt", bounces), ("fallback_ack", bounces), ("reply", person),
                    ("disclose", person), ("receipt", bounces),
                    ("ack", reply_to or "sam@example.net"),
                    ("reject", reply_to or "sam@example.net")]
