"""One bad row never stops a sweep or the relay: the case (or outbox row) that fails is
recorded with its error, retried with backoff, shown in `status` and told to the team once,
and every other case and mail goes on."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from seclistd import db, failures, relay
from seclistd.intake.store import accept
from seclistd.models import Case, Event, Outbox
from tests.components import Sink, cli, report
from tests.conftest import Env, make_env
from tests.test_lifecycle import T0, act, at, deliver, sweep

# The reproduction: a bulk mail (no receipt) whose return path is not ASCII. Before
# internationalised addresses were supported, the parser stored that return path with its
# bytes replaced, and the fallback acknowledgment to it raised in formataddr, inside the one
# transaction of the whole sweep. Such rows are still in databases written then.
BULK_UTF8_RETURN_PATH = "Return-Path: <víctim@exämple.net>\r\nPrecedence: bulk\r\n"
STORED_BY_THE_OLD_PARSER = "v\ufffd\ufffdctim@ex\ufffd\ufffdmple.net"
LATE = at(25, 1)  # the deadline (end of Tuesday 24 November, New York) has passed
CONTRACT = {"messages_total", "quarantined", "cases_by_state", "outbox_by_status",
            "sla_at_risk", "last_imap_pass"}


def open_two_cases(env: Env) -> None:
    """SEC-2026-0001 carries the bad return path, SEC-2026-0002 is an ordinary report."""
    accept(env.factory, env.settings, report(1, headers=BULK_UTF8_RETURN_PATH),
           source="ingest", now=T0)
    accept(env.factory, env.settings, report(2), source="ingest", now=T0)
    with db.transaction(env.factory) as session:
        session.get(Case, "SEC-2026-0001").reply_to = STORED_BY_THE_OLD_PARSER


def get(env: Env, case_id: str) -> Case:
    with env.factory() as session:
        found = session.get(Case, case_id)
        assert found is not None
        return found


def outbox(env: Env, **where: object) -> list[Outbox]:
    with env.factory() as session:
        return list(session.scalars(select(Outbox).filter_by(**where).order_by(Outbox.id)))


def test_a_case_the_sweep_cannot_handle_does_not_stop_the_others(env: Env, sink: Sink):
    open_two_cases(env)
    assert sweep(env, LATE) == 2
    deliver(env, LATE)

    # The ordinary case got its fallback acknowledgment and moved on.
    good = get(env, "SEC-2026-0002")
    assert good.state == "acknowledged" and good.acknowledged_at == LATE
    assert good.sweep_error is None
    [ack] = [r for r in sink.to("reporter2@example.net")
             if r.message["Subject"].startswith("[SEC-2026-0002] Re:")]
    assert "have not managed" in ack.message.get_body().get_content()

    # The bad one is untouched but for the recorded failure, and is retried with backoff.
    bad = get(env, "SEC-2026-0001")
    assert bad.state == "new" and bad.ack_stage == 0
    assert bad.sweep_failures == 1
    assert bad.sweep_error == "BadAddress: the recipient address holds characters no mail " \
                              "address may hold"
    assert bad.next_sla_at == LATE + dt.timedelta(seconds=300)
    assert not outbox(env, case_id="SEC-2026-0001", kind="deadline_missed")  # rolled back

    status = json.loads(cli(env.path, "status", "--json").stdout)
    assert set(status) >= CONTRACT
    assert status["cases_by_state"]["acknowledged"] == 1
    [shown] = status["sweep_failures"]
    assert shown["case_id"] == "SEC-2026-0001" and shown["failures"] == 1
    assert shown["error"] == bad.sweep_error
    assert shown["next_attempt_at"] == "2026-11-25T01:05:00-05:00"

    # The team hears of it once, with the error and what to do.
    [notice] = [r for r in sink.to("alice@example.org")
                if "Reminders stopped" in r.message["Subject"]]
    assert notice.message["Subject"].startswith("[SEC-2026-0001]")
    assert bad.sweep_error in notice.message.get_body().get_content()

    assert sweep(env, LATE + dt.timedelta(seconds=299)) == 0  # not due again yet
    assert sweep(env, LATE + dt.timedelta(seconds=300)) == 1  # fails again
    bad = get(env, "SEC-2026-0001")
    assert bad.sweep_failures == 2
    assert bad.next_sla_at == LATE + dt.timedelta(seconds=300 + 600)
    assert len(outbox(env, kind="sweep_failed")) == 1  # one notice per case, not per retry

    # Once the address is repaired, the next try acknowledges the reporter and clears it.
    with db.transaction(env.factory) as session:
        session.get(Case, "SEC-2026-0001").reply_to = "víctim@exämple.net"
    later = LATE + dt.timedelta(seconds=900)
    assert sweep(env, later) == 1
    deliver(env, later)
    bad = get(env, "SEC-2026-0001")
    assert (bad.state, bad.sweep_error, bad.sweep_failures) == ("acknowledged", None, 0)
    assert len(sink.to("víctim@exämple.net")) == 1
    with env.factory() as session:
        actions = session.scalars(select(Event.action).where(
            Event.case_id == "SEC-2026-0001").order_by(Event.id)).all()
    assert actions.count("sweep_failed") == 1 and "sweep_recovered" in actions
    assert json.loads(cli(env.path, "status", "--json").stdout)["sweep_failures"] == []


def test_a_case_closed_by_hand_leaves_the_sweep_failures(env: Env):
    open_two_cases(env)
    sweep(env, LATE)
    assert get(env, "SEC-2026-0001").sweep_failures == 1
    act(env, LATE, "SEC-2026-0001", "close", text="Spam, not a report.")
    closed = get(env, "SEC-2026-0001")
    assert (closed.state, closed.sweep_error, closed.next_sla_at) == ("closed", None, None)
    assert json.loads(cli(env.path, "status", "--json").stdout)["sweep_failures"] == []


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str, sink: Sink) -> Iterator[Env]:
    env = make_env(tmp_path, db_url=pg_url, relay_port=sink.port)
    yield env
    env.factory.kw["bind"].dispose()


def test_a_failing_case_does_not_stop_the_sweep_on_postgres(pg_env: Env, sink: Sink):
    open_two_cases(pg_env)
    assert sweep(pg_env, LATE) == 2
    assert get(pg_env, "SEC-2026-0002").state == "acknowledged"
    bad = get(pg_env, "SEC-2026-0001")
    assert (bad.state, bad.sweep_failures) == ("new", 1)
    assert bad.sweep_error.startswith("BadAddress:")
    with pg_env.factory() as session:
        from seclistd import views

        shown = views.status(session, LATE, pg_env.settings.project.tz)["sweep_failures"]
    assert [s["case_id"] for s in shown] == ["SEC-2026-0001"]
    assert len(outbox(pg_env, kind="sweep_failed")) == 1
    assert len(outbox(pg_env, kind="fallback_ack")) == 1


def test_one_outbox_row_that_raises_does_not_stop_the_relay(env: Env, sink: Sink):
    """Before, an unexpected error in sealing or sending one row left drain() at once: the
    rows behind it stayed leased and unsent, and the same row came first again each time."""
    for i in range(1, 4):
        accept(env.factory, env.settings, report(i), source="ingest", now=T0)

    def seal(raw: bytes, encrypt_to: str | None, must: bool) -> tuple[bytes, bool]:
        if b"To: Reporter 1 <reporter1@example.net>" in raw:
            raise RuntimeError("keyring vanished")
        return raw, False

    def drain(now: dt.datetime) -> int:
        transport = relay.make_transport(env.settings.relay)
        try:
            return relay.drain(env.factory, env.settings.relay, transport, lambda: now,
                               relay.lease_owner(), batch=2, seal=seal)
        finally:
            transport.close()

    assert drain(T0) == 5  # two more receipts, three team notices
    assert not sink.to("reporter1@example.net")
    [bad] = outbox(env, to_addr="reporter1@example.net")
    assert (bad.status, bad.attempts, bad.lease_owner) == ("pending", 1, None)
    # What and where, never the error's own words (they may quote content).
    assert bad.last_error.startswith("RuntimeError at ") and "in seal" in bad.last_error
    assert "vanished" not in bad.last_error
    assert bad.next_attempt_at == T0 + dt.timedelta(seconds=300)
    listing = cli(env.path, "outbox", "list")
    assert "RuntimeError at " in listing.stdout

    drain(T0 + dt.timedelta(days=5, seconds=1))
    [bad] = outbox(env, to_addr="reporter1@example.net")
    assert bad.status == "failed"
    assert bad.last_error.startswith("gave up after 5 days: RuntimeError at ")


def test_a_database_error_is_described_without_its_parameters(env: Env):
    with pytest.raises(Exception) as caught, db.transaction(env.factory) as session:
        session.execute(text("INSERT INTO counters (name, year, value) VALUES "
                             "('case', 2026, 1), ('case', 2026, :secret)"),
                        {"secret": "report text"})
    described = failures.describe(caught.value)
    assert described.startswith("IntegrityError (sqlite3.IntegrityError) at ")
    plain = failures.describe(ValueError("bad\x00\r\nBcc: x"))
    assert plain == "ValueError" and "bad" not in plain  # never the error's own words
