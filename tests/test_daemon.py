"""The daemon as a process: SMTP and LMTP listener (250 only after commit), size limit,
recipient check, and a clean exit 0 on SIGTERM."""

from __future__ import annotations

import signal
import smtplib
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd.models import Case
from tests.components import (
    TEST_CLOCK,
    Sink,
    case_id,
    cli,
    faketime_env,
    free_port,
    report,
    start_daemon,
    wait_for,
    wait_port,
)
from tests.conftest import make_env


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
def test_listener_answers_after_commit_and_receipt_goes_out(tmp_path: Path, sink: Sink,
                                                            protocol: str):
    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port,
                   listener_protocol=protocol, extra="\n[limits]\nmax_message_bytes = 65536\n")
    proc = start_daemon(env.path, tmp_path / "daemon.log")
    try:
        wait_port(port, timeout=30)
        client = smtplib.LMTP("127.0.0.1", port) if protocol == "lmtp" else smtplib.SMTP(
            "127.0.0.1", port)
        with client:
            refused = client.sendmail("reporter1@example.net",
                                      ["security@example.org", "nobody@example.org"],
                                      report(1))
            # The answer came after the commit: the case is there the moment we hear 250.
            with env.factory() as session:
                assert session.scalar(select(func.count(Case.id))) == 1
            assert list(refused) == ["nobody@example.org"]
            with pytest.raises(smtplib.SMTPException) as too_big:
                client.sendmail("big@example.net", ["security@example.org"],
                                report(2, body="x" * 100_000))
            assert "552" in str(too_big.value) or "size" in str(too_big.value).lower()
        [receipt] = wait_for(lambda: sink.to("reporter1@example.net"), what="receipt")
        assert receipt.message["Subject"].startswith(f"[{case_id(1)}]")
        assert receipt.message["Auto-Submitted"] == "auto-replied"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "test-password" not in log


def test_sigterm_exits_zero_within_seconds(tmp_path: Path, sink: Sink):
    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port)
    proc = start_daemon(env.path, tmp_path / "daemon.log")
    wait_port(port, timeout=30)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert "stopped" in (tmp_path / "daemon.log").read_text()


def test_run_once_drains_and_exits(tmp_path: Path, sink: Sink):
    env = make_env(tmp_path, relay_port=sink.port)
    (tmp_path / "r.eml").write_bytes(report(1))
    assert cli(env.path, "ingest", str(tmp_path / "r.eml")).returncode == 0
    done = cli(env.path, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert len(sink.to("reporter1@example.net")) == 1
    assert len(sink.to("alice@example.org")) == 1


def test_tells_systemd_ready_and_stopping(tmp_path: Path, sink: Sink):
    import socket

    port = free_port()
    env = make_env(tmp_path, relay_port=sink.port, listener_port=port)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(30)
    import os
    import subprocess
    import sys

    with open(tmp_path / "daemon.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "seclistd", "--config", str(env.path),
                                 "run"], stdout=log, stderr=log,
                                env={**os.environ, **faketime_env(TEST_CLOCK.now()),
                                     "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000"})
    try:
        # A watchdog period of 1 ms: a WATCHDOG sent before READY would come first.
        assert notify.recv(256) == b"READY=1"
        assert notify.recv(256) == b"WATCHDOG=1"  # every WATCHDOG_USEC / 2
    finally:
        proc.send_signal(signal.SIGTERM)
        states = []
        while b"STOPPING=1" not in states:
            states.append(notify.recv(256))
        assert proc.wait(timeout=15) == 0
        notify.close()


def test_sigterm_during_startup_is_a_clean_stop(tmp_path: Path, sink: Sink):
    env = make_env(tmp_path, relay_port=sink.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(env.path, log)

    def opened_database() -> bool:
        # The engine (and so _sqlite3) is loaded after the signal handlers are installed,
        # and before the daemon's threads start.
        try:
            return "_sqlite3" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False

    wait_for(opened_database, interval=0.005, what="the daemon to open its database")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
