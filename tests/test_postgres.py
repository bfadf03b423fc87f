"""The multi-instance path on PostgreSQL: the pipeline end to end, relays in several
threads claiming with SKIP LOCKED (each mail sent once), and one IMAP intake at a time."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd import daemon, db, relay
from seclistd.intake import imap
from seclistd.intake.store import accept
from seclistd.models import Case, Outbox
from tests.components import Sink, report
from tests.conftest import Env, make_env

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str, sink: Sink) -> Iterator[Env]:
    """A migrated PostgreSQL database with the relay pointed at the sink."""
    env = make_env(tmp_path, db_url=pg_url, relay_port=sink.port)
    yield env
    env.factory.kw["bind"].dispose()


def test_pipeline_and_concurrent_relays_send_each_mail_once(pg_env: Env, sink: Sink):
    settings, factory = pg_env.settings, pg_env.factory
    for i in range(100):
        outcome = accept(factory, settings, report(i), source="ingest", now=NOW)
        assert outcome.case_id == f"SEC-2026-{i + 1:04d}"
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
    daemon.run_once(pg_env.settings, pg_env.factory.kw["bind"])
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
