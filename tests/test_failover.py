"""Several daemons, one PostgreSQL: three `seclistd run` processes share one database, one
Dovecot mailbox and one relay. A few hundred reports come in by IMAP and through each
daemon's listener; each opens one case, and its reporter and the team hear of it once. The
daemon holding the IMAP intake is then killed with SIGKILL in the middle of a batch, and
another one takes the intake over within seconds. Below, the parts on their own: the intake
lock when its connection dies, and a sweep running in one daemon at a time."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from seclistd import config, db, scheduler
from seclistd.intake import imap
from seclistd.models import Case, Message, Outbox
from tests.components import (
    CLOCK,
    Dovecot,
    Sink,
    free_port,
    report,
    start_daemon,
    wait_for,
    wait_port,
    write_config,
)

DAEMONS = 3
BY_IMAP = 150  # first wave, into the mailbox
BY_LISTENER = 10  # first wave, through each daemon's listener
SECOND_WAVE = 120  # into the mailbox, while the intake's holder is killed (large enough that a
# fast holder is still in the middle of it when the kill lands)
THIRD_WAVE = 10  # into the mailbox once it is dead: only a new holder can take them
TAKEOVER = "IMAP intake lock taken"
LIMITS = """
[autoreply]
team_digest_after = 1000
max_per_hour = 1000
"""


class Cluster:
    def __init__(self, base: Path, pg_url: str, dovecot: Dovecot, sink: Sink):
        self.paths: list[Path] = []
        self.logs: list[Path] = []
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for n in range(DAEMONS):
            home = base / f"d{n}"
            home.mkdir()
            port = free_port()
            self.paths.append(write_config(home, db_url=pg_url, imap=dovecot,
                                           relay_port=sink.port, listener_port=port,
                                           extra=LIMITS))
            self.logs.append(home / "daemon.log")
            self.ports.append(port)
        settings = config.load(str(self.paths[0]))
        db.migrate(settings.database.url)
        self.engine = db.make_engine(settings.database.url)
        self.factory = db.session_factory(self.engine)

    def start(self) -> None:
        self.procs = [start_daemon(path, log)
                      for path, log in zip(self.paths, self.logs, strict=True)]
        for port in self.ports:
            wait_port(port, timeout=60)

    def log(self, n: int) -> str:
        return self.logs[n].read_text(errors="replace")

    def holders(self) -> list[int]:
        """The daemons that took the intake lock (each says so once per take)."""
        return [n for n in range(DAEMONS) if TAKEOVER in self.log(n)]

    def stored(self) -> int:
        with self.factory() as session:
            return session.scalar(select(func.count(Message.id))) or 0

    def settled(self, cases: int) -> bool:
        """Every report has its case, and nothing is waiting to be sent."""
        with self.factory() as session:
            opened = session.scalar(select(func.count(Case.id)))
            waiting = session.scalar(select(func.count(Outbox.id)).where(
                Outbox.status != "sent"))
        return opened == cases and waiting == 0

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.engine.dispose()


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, dovecot: Dovecot, sink: Sink) -> Iterator[Cluster]:
    c = Cluster(tmp_path, pg_url, dovecot, sink)
    try:
        yield c
    finally:
        c.stop()


def deliver(port: int, numbers: range) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for i in numbers:
            client.sendmail(f"reporter{i}@example.net", ["security@example.org"], report(i))


def test_three_daemons_share_the_work_and_survive_the_intake_holders_death(
        cluster: Cluster, dovecot: Dovecot, sink: Sink):
    cluster.start()
    # One holder; the others stand by.
    wait_for(lambda: len(cluster.holders()) == 1, timeout=30, what="one intake holder")
    wait_for(lambda: all("standing by" in cluster.log(n) for n in range(DAEMONS)
                         if n not in cluster.holders()), timeout=30, what="two standbys")

    # First wave: into the mailbox, and through every daemon's listener at the same time.
    dovecot.append([report(i) for i in range(BY_IMAP)])
    for n, port in enumerate(cluster.ports):
        first = BY_IMAP + n * BY_LISTENER
        deliver(port, range(first, first + BY_LISTENER))
    total = BY_IMAP + DAEMONS * BY_LISTENER
    wait_for(lambda: cluster.settled(total), timeout=120, interval=0.2, what="the first wave")
    [holder] = cluster.holders()
    assert dovecot.count("INBOX") == 0

    # Second wave: kill the holder once it has stored a part of it.
    before = cluster.stored()
    dovecot.append([report(i) for i in range(total, total + SECOND_WAVE)])
    wait_for(lambda: cluster.stored() >= before + 3, timeout=30, interval=0.01,
             what="the holder to start on the second wave")
    cluster.procs[holder].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    cluster.procs[holder].wait(timeout=10)
    unread = before + SECOND_WAVE - cluster.stored()
    assert unread > 0  # it died in the middle of the wave: its successor finishes it
    total += SECOND_WAVE

    # Another daemon takes the intake within seconds (the lock's retry is 3 s).
    wait_for(lambda: [n for n in cluster.holders() if n != holder], timeout=15, interval=0.05,
             what="another daemon to take the intake over")
    took = time.monotonic() - killed_at
    assert took < 10, f"the intake was taken over after {took:.1f}s"
    [successor] = [n for n in cluster.holders() if n != holder]

    # Mail that arrives after the death is read by the successor alone.
    dovecot.append([report(i) for i in range(total, total + THIRD_WAVE)])
    total += THIRD_WAVE
    # The killed daemon's claimed outbox rows are freed by the leases sweep (every 15 s).
    wait_for(lambda: cluster.settled(total), timeout=120, interval=0.2, what="every wave")
    assert dovecot.count("INBOX") == 0
    assert dovecot.count("seclistd-processed") == BY_IMAP + SECOND_WAVE + THIRD_WAVE
    assert len(cluster.holders()) == 2  # the dead one and its successor; nobody else
    assert cluster.log(successor).count(TAKEOVER) == 1
    assert cluster.log(successor).count("from imap: processed") >= unread + THIRD_WAVE

    # The database: one message and one case per report, one receipt and one team notice
    # per case, every row sent.
    reporters = {f"reporter{i}@example.net" for i in range(total)}
    with cluster.factory() as session:
        assert session.scalar(select(func.count(Message.id))) == total
        assert session.scalar(select(func.count(func.distinct(Case.id)))) == total
        assert {e for (e,) in session.execute(select(Case.reporter))} == reporters
        rows = session.execute(select(Outbox.kind, Outbox.to_addr, Outbox.message_id)).all()
    receipts = collections.Counter(to for kind, to, _ in rows if kind == "receipt")
    assert set(receipts) == reporters and set(receipts.values()) == {1}
    assert sum(1 for kind, to, _ in rows if kind == "team_new_case") == total
    assert len(rows) == 2 * total

    # The sink: each row arrived; a mail is never sent for two rows. The one mail the killed
    # daemon may have had in flight (sent, not yet marked) can arrive twice, the same mail
    # with its own Message-ID, as the relay documents; nothing else.
    row_ids = {message_id for _, _, message_id in rows}
    got = collections.Counter(r.message["Message-ID"] for r in sink.messages())
    assert set(got) == row_ids
    assert sum(n - 1 for n in got.values()) <= 1, [m for m, n in got.items() if n > 1]
    for address in ("alice@example.org", "reporter0@example.net",
                    f"reporter{total - 1}@example.net"):
        mails = {r.message["Message-ID"] for r in sink.to(address)}
        assert len(mails) == (total if address == "alice@example.org" else 1)

    for n in range(DAEMONS):
        assert "Traceback" not in cluster.log(n), cluster.log(n)[-3000:]


def test_a_holder_whose_lock_connection_dies_knows_it_and_a_standby_takes_over(pg_url: str):
    db.migrate(pg_url)
    engine = db.make_engine(pg_url)
    holder, standby = imap.IntakeLock(engine), imap.IntakeLock(engine)
    try:
        assert holder.acquire() and holder.held()
        assert holder.acquire()  # asking again while holding is not a second lock
        assert not standby.acquire()
        assert standby.conn is None  # a standby keeps no connection between its tries
        assert holder.conn is not None
        with holder.conn.engine.connect() as admin:  # the holder's session ends (as on a kill)
            pid = holder.conn.execute(text("SELECT pg_backend_pid()")).scalar()
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            admin.commit()
        wait_for(standby.acquire, timeout=10, what="the standby to take the lock")
        assert not holder.held()
        with pytest.raises(imap.LostLock):
            holder.check()
        assert not holder.acquire()  # it comes back as a standby
        standby.release()
        assert holder.acquire()
        holder.release()
    finally:
        engine.dispose()


def test_a_sweep_running_in_one_daemon_is_skipped_by_the_others(pg_url: str, tmp_path: Path):
    settings = config.load(str(write_config(tmp_path, db_url=pg_url)))
    db.migrate(pg_url)
    engine = db.make_engine(pg_url)
    factory = db.session_factory(engine)
    calls: list[str] = []

    def sweep(session: Session, now: dt.datetime, _settings: config.Settings) -> int:
        calls.append("ran")
        return 1

    try:
        with db.transaction(factory) as busy:  # another daemon is inside this sweep
            assert scheduler.exclusive(busy, sweep)
            assert scheduler.run_sweep(factory, lambda: CLOCK, settings, sweep) == 0
            assert calls == []
        assert scheduler.run_sweep(factory, lambda: CLOCK, settings, sweep) == 1
        assert calls == ["ran"]
        assert scheduler.sweep_key(sweep) != scheduler.sweep_key(scheduler.sweep_leases)
    finally:
        engine.dispose()
