"""Signals and logs of `seclistd run`: SIGHUP reloads the team and lists without dropping a
connection (and keeps the old config when the new one is bad), SIGTERM answers the message
in hand after its commit, journald priority prefixes, and no secret or body in the log."""

from __future__ import annotations

import logging
import re
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd.models import Case
from tests.components import (
    IMAP_PASSWORD,
    Sink,
    case_id,
    free_port,
    report,
    start_daemon,
    wait_for,
    wait_port,
    write_config,
)
from tests.conftest import make_env

SECRET_PHRASE = "purple-walrus-overflow-7731"


def new_case_notices(sink: Sink, address: str) -> list[str]:
    return [r.message["Subject"] for r in sink.to(address)]


def logged(log: Path, start: int = 0) -> str:
    return log.read_bytes()[start:].decode("utf-8", "replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_sighup_reloads_team_and_keeps_the_open_connection(tmp_path: Path, sink: Sink):
    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(env.path, log, wait=True)
    try:
        wait_port(port, timeout=30)
        client = smtplib.SMTP("127.0.0.1", port)
        with client:
            client.ehlo()
            client.sendmail("reporter1@example.net", ["security@example.org"], report(1))
            wait_for(lambda: new_case_notices(sink, "alice@example.org"),
                     what="alice's notice of the first case")
            assert new_case_notices(sink, "bob@example.org") == []

            # Bob joins the team; the listener port changes too, which needs a restart.
            write_config(tmp_path, relay_port=sink.port, listener_port=free_port(),
                         team=["alice@example.org", "bob@example.org"])
            mark = log.stat().st_size
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in logged(log, mark),
                     what="the reload to be logged")
            assert "listener.port changed" in logged(log, mark)
            assert "restart" in logged(log, mark)

            # The connection opened before the SIGHUP still takes a report.
            client.sendmail("reporter2@example.net", ["security@example.org"], report(2))
        notices = wait_for(lambda: [s for s in new_case_notices(sink, "bob@example.org")
                                    if case_id(2) in s], what="bob's notice of the new case")
        assert len(notices) == 1
        assert not any(case_id(1) in s for s in new_case_notices(sink, "bob@example.org"))
        # The listener kept its socket (the new port needs a restart).
        wait_port(port, timeout=5)
    finally:
        stop(proc)
    assert "test-password" not in logged(log)


def test_sighup_with_a_bad_config_keeps_the_old_one(tmp_path: Path, sink: Sink):
    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(env.path, log, wait=True)
    try:
        good = env.path.read_text()
        env.path.write_text(good.replace('[team]\nmembers = [',
                                         '[team]\nmembers = [{ email = "not an address" }, '))
        mark = log.stat().st_size
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "not reloaded" in logged(log, mark), what="the refusal to be logged")
        refusal = [line for line in logged(log, mark).splitlines() if "not reloaded" in line]
        assert len(refusal) == 1 and "team.members" in refusal[0]
        assert proc.poll() is None
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("reporter1@example.net", ["security@example.org"], report(1))
        wait_for(lambda: [s for s in new_case_notices(sink, "alice@example.org")
                          if case_id(1) in s], what="the old team's notice")
    finally:
        stop(proc)


def test_sigterm_answers_the_message_in_hand_after_its_commit(tmp_path: Path, sink: Sink):
    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(env.path, log, wait=True)
    try:
        wait_port(port, timeout=30)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.mail("reporter1@example.net")
            client.rcpt("security@example.org")
            code, _ = client.docmd("DATA")
            assert code == 354
            raw = report(1)
            half = len(raw) // 2
            client.send(raw[:half])
            # SIGTERM arrives while the message is being received.
            mark = log.stat().st_size
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "stopping" in logged(log, mark), what="the daemon to stop")
            # A new connection is no longer accepted...
            with pytest.raises(OSError):
                smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
            # ...but the message in hand is finished, and answered after its commit.
            client.send(raw[half:] + b".\r\n")
            code, text = client.getreply()
            assert code == 250, text
            with env.factory() as session:
                assert session.scalar(select(func.count(Case.id))) == 1
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    with env.factory() as session:
        assert session.scalar(select(Case.id)) == case_id(1)


def test_journal_priorities_and_no_secrets_in_the_log(tmp_path: Path, sink: Sink):
    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port)
    password = "hunter2-imap-secret-5531"
    env.path.write_text(env.path.read_text().replace(IMAP_PASSWORD, password))
    assert password in env.path.read_text()
    log = tmp_path / "daemon.log"
    proc = start_daemon(env.path, log, wait=True,
                        env={"JOURNAL_STREAM": "8:12345", "SECLISTD_LOG_LEVEL": "DEBUG"})
    try:
        wait_port(port, timeout=30)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("reporter1@example.net", ["security@example.org"],
                            report(1, subject=f"Crash {SECRET_PHRASE}",
                                   body=f"Reproducer: {SECRET_PHRASE}\nmore lines\n"))
        wait_for(lambda: sink.to("reporter1@example.net"), what="the receipt")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in logged(log), what="the reload")
    finally:
        stop(proc)
    text = logged(log)
    assert SECRET_PHRASE not in text
    assert password not in text and "test-password" not in text
    lines = [line for line in text.splitlines() if line]
    assert lines
    for line in lines:
        assert re.match(r"<[2-7]>", line), line
        # No timestamp: journald adds its own.
        assert not re.match(r"<\d>\d{4}-\d\d-\d\d", line), line
    assert any(line.startswith("<6>") and "seclistd running" in line for line in lines)
    assert any(line.startswith("<6>") and "configuration reloaded" in line for line in lines)


def test_logged_exceptions_show_frames_never_their_text():
    from seclistd.cli.common import JournalFormatter

    try:
        raise ValueError(f"could not parse {SECRET_PHRASE}")
    except ValueError:
        record = logging.LogRecord("seclistd.relay", logging.ERROR, __file__, 1,
                                   "outbox %s to %s: unexpected error",
                                   (7, "rita@example.net"), sys.exc_info())
    for journal in (True, False):
        text = JournalFormatter(journal).format(record)
        assert SECRET_PHRASE not in text
        assert "ValueError" in text and "test_signals.py" in text
        if journal:
            assert all(line.startswith("<3>") for line in text.splitlines())
