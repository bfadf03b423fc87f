"""The multi-instance path on PostgreSQL: the pipeline end to end, relays in several
threads claiming with SKIP LOCKED (each mail sent once), and one IMAP intake at a time."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from seclistd import daemon, db, relay
from seclistd.intake import imap
from seclistd.intake.store import accept
from seclistd.models import Case, Message, Outbox
from tests.components import CLOCK, Sink, case_id, report, ticking
from tests.conftest import Env, make_env

NOW = CLOCK  # the clock of the CLI and daemons the tests start


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str, sink: Sink) -> Iterator[Env]:
    """A migrated PostgreSQL database with the relay pointed at the sink; the flood limits
    raised, since the tests send many reports in one hour on purpose."""
    env = make_env(tmp_path, db_url=pg_url, relay_port=sink.port,
                   extra="[autoreply]\nteam_digest_after = 1000\nmax_per_hour = 1000\n")
    yield env
    env.factory.kw["bind"].dispose()


def test_pipeline_and_concurrent_relays_send_each_mail_once(pg_env: Env, sink: Sink):
    settings, factory = pg_env.settings, pg_env.factory
    for i in range(100):
        outcome = accept(factory, settings, report(i), source="ingest", now=NOW)
        assert outcome.case_id == case_id(i + 1, NOW)
    assert accept(factory, settings, report(5), source="ingest", now=NOW).duplicate

    counts: list[int] = []

    def worker(n: int) -> None:
        transport = relay.make_transport(settings.relay)
        try:
            counts.append(relay.drain(factory, settings.relay, transport, lambda: NOW,
                                      f"worker-{n}", batch=5))
        finally:
            transport.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(counts) == 200
    assert len([c for c in counts if c]) > 1  # the work was really shared
    ids = [r.message["Message-ID"] for r in sink.messages()]
    assert len(ids) == 200 and len(set(ids)) == 200
    with factory() as session:
        assert session.scalar(select(func.count(Case.id))) == 100
        assert session.scalar(select(func.count(Outbox.id)).where(
            Outbox.status == "sent")) == 200


def test_one_imap_intake_at_a_time(pg_env: Env):
    settings = pg_env.settings
    first, second = (imap.IntakeLock(db.make_engine(settings.database.url)) for _ in range(2))
    assert first.acquire()
    assert not second.acquire()
    first.release()  # the holder stops (or dies: its session, and so the lock, goes away)
    assert second.acquire()
    second.release()


def test_run_once_on_postgres(pg_env: Env, sink: Sink):
    accept(pg_env.factory, pg_env.settings, report(1), source="ingest", now=NOW)
    daemon.run_once(pg_env.settings, pg_env.factory.kw["bind"], ticking(NOW))
    assert len(sink.to("reporter1@example.net")) == 1


def test_concurrent_sla_sweeps_send_each_reminder_once(pg_env: Env):
    from seclistd.workflows import reminders

    settings, factory = pg_env.settings, pg_env.factory
    for i in range(60):
        accept(factory, settings, report(i), source="ingest", now=NOW)
    late = NOW + dt.timedelta(days=10)  # every case is past its deadline
    handled: list[int] = []

    def sweeper() -> None:
        own = db.session_factory(db.make_engine(settings.database.url))  # another "daemon"
        with db.transaction(own) as session:
            handled.append(reminders.sweep(session, late, settings))

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(handled) == 60
    with factory() as session:
        fallbacks = session.scalar(select(func.count(Outbox.id)).where(
            Outbox.kind == "fallback_ack"))
        assert fallbacks == 60
        assert session.scalar(select(func.count(Case.id)).where(
            Case.state == "acknowledged")) == 60


def test_nul_in_an_encrypted_report_opens_its_case_and_leaks_nowhere(
        tmp_path: Path, pg_url: str, sink: Sink, caplog: pytest.LogCaptureFixture):
    from tests.pgp import encrypted_mail, entity
    from tests.test_openpgp import REPORTER, make_world

    caplog.set_level(logging.DEBUG)
    with make_world(tmp_path, sink, db_url=pg_url) as world:
        inner = entity("The heap overflow in cfg_read\x00 lets an attacker run code in 1.4.2.")
        armored = world.reporter.encrypt(inner, world.project_fpr)
        raw = encrypted_mail(REPORTER, "report", armored)
        outcome = accept(world.factory, world.settings, raw, source="ingest", now=NOW)
        assert outcome.status == "processed" and outcome.reason is None
        assert outcome.case_id == f"SEC-{NOW.year}-0001"
        with world.factory() as session:
            stored = session.get(Message, outcome.id)
            assert stored.raw == raw  # the bytes as received, NUL and all (inside ciphertext)
            assert "cfg_read\ufffd lets" in stored.text  # the text, stored safely
            assert session.get(Case, outcome.case_id).encrypted
            # The team notice quotes the report: no NUL goes out either.
            outgoing = session.scalars(select(Outbox.raw)).all()
            assert outgoing and all(b"\x00" not in raw for raw in outgoing)
    assert "cfg_read" not in caplog.text and "heap overflow" not in caplog.text


def test_a_database_error_puts_no_content_in_the_reason_or_the_log(
        pg_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    from seclistd.workflows import report as workflow

    def refused_by_the_database(session, now, settings, message, mail, *args):  # noqa: ANN001
        # PostgreSQL quotes the value it refuses, SQLAlchemy adds the parameters.
        session.execute(text("SELECT CAST(:value AS integer)"), {"value": mail.text})

    monkeypatch.setattr(workflow, "open_case", refused_by_the_database)
    caplog.set_level(logging.DEBUG)
    raw = report(1, body="unpublished: the token check in auth.go is skipped")
    outcome = accept(pg_env.factory, pg_env.settings, raw, source="ingest", now=NOW)
    assert outcome.status == "quarantined"
    assert outcome.reason.startswith(
        "internal error while processing: DataError (psycopg.errors.InvalidTextRepresentation)")
    assert "unpublished" not in outcome.reason and "auth.go" not in outcome.reason
    assert "processing failed" in caplog.text
    assert "unpublished" not in caplog.text and "auth.go" not in caplog.text
    with pg_env.factory() as session:
        assert session.scalar(select(Message.raw)) == raw
