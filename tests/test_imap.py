"""IMAP intake against a real Dovecot: move after commit, quarantine folder, UIDVALIDITY,
IDLE pick-up by the running daemon, and a reconnect after the connection drops."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path

from sqlalchemy import func, select

from seclistd import daemon, db
from seclistd.intake import imap
from seclistd.models import Case, Message
from tests.components import Dovecot, Sink, report, ticking, wait_for
from tests.conftest import Env, make_env


def count(env: Env, model: type, *where: object) -> int:
    with env.factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_pass_stores_then_moves_to_processed_and_quarantine(tmp_path: Path, dovecot: Dovecot,
                                                            sink: Sink):
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port)
    junk = b"\xff\xfe\x01 binary junk without any header\r\n" * 3
    dovecot.append([report(1), report(2), junk])
    daemon.run_once(env.settings, db.make_engine(env.settings.database.url), ticking())

    assert dovecot.count("INBOX") == 0
    assert dovecot.count("seclistd-processed") == 2
    assert dovecot.count("seclistd-quarantine") == 1
    assert count(env, Case) == 2
    assert count(env, Message, Message.status == "quarantined") == 1
    assert len(sink.to("reporter1@example.net")) == 1
    # Raw bytes are kept exactly as fetched.
    with env.factory() as session:
        stored = session.scalar(select(Message.raw).where(Message.status == "quarantined"))
    assert stored == junk


def test_crash_before_move_is_recovered_without_reprocessing(tmp_path: Path, dovecot: Dovecot,
                                                             sink: Sink, monkeypatch):
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port)
    dovecot.append([report(i) for i in range(5)])
    calls = {"n": 0}
    original = imap.move

    def failing_move(client, uids, folder):  # the process "dies" before the MOVE
        calls["n"] += 1
        raise ConnectionError("connection lost before MOVE")

    monkeypatch.setattr(imap, "move", failing_move)
    client = imap.connect(env.settings.imap)
    try:
        imap.ensure_folders(client, env.settings.imap)
        with contextlib.suppress(ConnectionError):
            imap.run_pass(client, env.settings, env.factory, ticking())
    finally:
        client.logout()
    assert calls["n"] == 1 and dovecot.count("INBOX") == 5 and count(env, Case) == 5

    monkeypatch.setattr(imap, "move", original)
    daemon.run_once(env.settings, db.make_engine(env.settings.database.url), ticking())
    assert dovecot.count("INBOX") == 0 and dovecot.count("seclistd-processed") == 5
    assert count(env, Case) == 5 and count(env, Message) == 5


def test_uidvalidity_change_does_not_duplicate(tmp_path: Path, dovecot: Dovecot, sink: Sink):
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port)
    folder = "Reports"
    settings = dataclasses.replace(env.settings,
                                   imap=dataclasses.replace(env.settings.imap, folder=folder))
    client = dovecot.client()
    client.create_folder(folder)
    client.logout()
    dovecot.append([report(1)], folder=folder)
    engine = db.make_engine(settings.database.url)
    daemon.run_once(settings, engine, ticking())
    # The folder is recreated with the same message in it: new UIDVALIDITY, UID 1 again.
    client = dovecot.client()
    client.delete_folder(folder)
    client.create_folder(folder)
    client.logout()
    dovecot.append([report(1), report(2)], folder=folder)
    daemon.run_once(settings, engine, ticking())
    assert count(env, Case) == 2 and count(env, Message) == 2
    assert dovecot.count(folder) == 0


def test_daemon_picks_up_new_mail_by_idle_and_reconnects(tmp_path: Path, dovecot: Dovecot,
                                                         sink: Sink):
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port)
    # A poll interval far beyond every deadline below: only IDLE can deliver in time.
    settings = dataclasses.replace(env.settings, imap=dataclasses.replace(
        env.settings.imap, idle=True, poll_interval=3600))
    runner = daemon.Daemon(settings, clock=ticking())
    # run() installs signal handlers, which only the main thread may do: the test runs the
    # daemon's intake and relay loops in threads instead (tests/test_daemon.py runs it whole).
    intake = imap.ImapIntake(settings, runner.engine, runner.factory, runner.clock, runner.stop,
                             runner.wake.set)
    thread = threading.Thread(target=intake.run, daemon=True)
    relay_thread = threading.Thread(target=runner._relay_loop, daemon=True)
    thread.start()
    relay_thread.start()
    try:
        # The first pass is over and the intake waits in IDLE: what comes now, IDLE brings.
        wait_for(intake.idling.is_set, what="the intake to enter IDLE")
        dovecot.append([report(1)])
        wait_for(lambda: sink.to("reporter1@example.net"), what="receipt after IDLE")
        # Kill every IMAP session on the server side: the intake must notice at once (not
        # after the IDLE period) and reconnect, then wait in IDLE again.
        dovecot_kick(dovecot)
        wait_for(lambda: not intake.idling.is_set(), what="the intake to notice the drop")
        wait_for(intake.idling.is_set, what="the intake to reconnect and IDLE again")
        dovecot.append([report(2)])
        wait_for(lambda: sink.to("reporter2@example.net"), what="receipt after reconnect")
    finally:
        runner.request_stop()
        thread.join(timeout=15)
        relay_thread.join(timeout=15)
    assert not thread.is_alive()
    assert count(env, Case) == 2


def dovecot_kick(dovecot: Dovecot) -> None:
    import subprocess

    subprocess.run(["doveadm", "-c", str(dovecot.base / "dovecot.conf"), "kick", dovecot.user],
                   check=True, capture_output=True)


def test_polling_when_idle_is_off(tmp_path: Path, dovecot: Dovecot, sink: Sink):
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port)
    settings = dataclasses.replace(env.settings, imap=dataclasses.replace(
        env.settings.imap, idle=False, poll_interval=1))
    stop = threading.Event()
    intake = imap.ImapIntake(settings, db.make_engine(settings.database.url), env.factory,
                             ticking(), stop)
    thread = threading.Thread(target=intake.run, daemon=True)
    thread.start()
    try:
        dovecot.append([report(1)])
        wait_for(lambda: count(env, Case) == 1, what="the polled message")
        dovecot.append([report(2)])
        wait_for(lambda: count(env, Case) == 2, what="the next poll")
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert dovecot.count("seclistd-processed") == 2


def test_fetches_are_grouped_by_size():
    sizes = {1: 10, 2: 10, 3: 50, 4: 5, 5: 100}
    assert imap.by_budget([1, 2, 3, 4, 5], sizes, 60) == [[1, 2], [3, 4], [5]]
    assert imap.by_budget([1, 2], {}, 60) == [[1, 2]]
