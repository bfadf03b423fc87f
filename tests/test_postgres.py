"""The multi-instance path on PostgreSQL: the pipeline end to end, relays in several
threads claiming with SKIP LOCKED (each mail sent once), and one IMAP intake at a time."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from sqlalchemy import func, select

from seclistd import config, daemon, db, relay
from seclistd.intake import imap
from seclistd.intake.store import accept
from seclistd.models import Case, Outbox
from tests.components import Sink, report, write_config

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)


def pg_settings(tmp_path: Path, pg_url: str, sink: Sink) -> config.Settings:
    settings = config.load(str(write_config(tmp_path, db_url=pg_url, relay_port=sink.port)))
    db.migrate(settings.database.url)
    return settings


def test_pipeline_and_concurrent_relays_send_each_mail_once(tmp_path: Path, pg_url: str,
                                                            sink: Sink):
    settings = pg_settings(tmp_path, pg_url, sink)
    engine = db.make_engine(settings.database.url)
    factory = db.session_factory(engine)
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
    engine.dispose()


def test_one_imap_intake_at_a_time(tmp_path: Path, pg_url: str, sink: Sink):
    settings = pg_settings(tmp_path, pg_url, sink)
    first, second = (imap.IntakeLock(db.make_engine(settings.database.url)) for _ in range(2))
    assert first.acquire()
    assert not second.acquire()
    first.release()  # the holder stops (or dies: its session, and so the lock, goes away)
    assert second.acquire()
    second.release()


def test_run_once_on_postgres(tmp_path: Path, pg_url: str, sink: Sink):
    settings = pg_settings(tmp_path, pg_url, sink)
    engine = db.make_engine(settings.database.url)
    accept(db.session_factory(engine), settings, report(1), source="ingest", now=NOW)
    daemon.run_once(settings, engine)
    assert len(sink.to("reporter1@example.net")) == 1
    engine.dispose()


def test_concurrent_sla_sweeps_send_each_reminder_once(tmp_path: Path, pg_url: str,
                                                       sink: Sink):
    from seclistd.workflows import reminders

    settings = pg_settings(tmp_path, pg_url, sink)
    engine = db.make_engine(settings.database.url)
    factory = db.session_factory(engine)
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
    engine.dispose()
