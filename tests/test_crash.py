"""Crashes lose nothing: hundreds of reports in the IMAP inbox, the daemon killed with
SIGKILL at random moments several times, then restarted. Every report is exactly one case,
every outgoing mail was delivered, with at most one duplicate delivery per kill."""

from __future__ import annotations

import collections
import random
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd.models import Case, Message, Outbox
from tests.components import Dovecot, Sink, report, start_daemon, wait_for
from tests.conftest import make_env

REPORTS = 400
KILLS = 5


@pytest.mark.slow
def test_kill_9_loses_nothing(tmp_path: Path, dovecot: Dovecot, sink: Sink):
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port)
    dovecot.append([report(i) for i in range(REPORTS)])
    rng = random.Random(20261121)
    log = tmp_path / "daemon.log"

    def progress() -> tuple[int, int]:
        with env.factory() as session:
            return (session.scalar(select(func.count(Message.id))) or 0,
                    session.scalar(select(func.count(Outbox.id)).where(
                        Outbox.status == "sent")) or 0)

    kills = 0
    for k in range(KILLS):
        before = progress()
        proc = start_daemon(env.path, log)
        # Let it make some progress (intake on odd kills, relay on even ones), then a random
        # moment more, then kill it without warning.
        wait_for(lambda before=before, k=k: progress()[k % 2] > before[k % 2]
                 or progress()[1] == 2 * REPORTS, timeout=60, what="the daemon to make progress")
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1

    proc = start_daemon(env.path, log, wait=True)
    try:
        def settled() -> bool:
            with env.factory() as session:
                pending = session.scalar(select(func.count(Outbox.id)).where(
                    Outbox.status != "sent")) or 0
                cases = session.scalar(select(func.count(Case.id))) or 0
            return cases == REPORTS and pending == 0 and dovecot.count("INBOX") == 0

        wait_for(settled, timeout=180, interval=0.5, what="all reports handled and sent")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    with env.factory() as session:
        reporters = collections.Counter(session.scalars(select(Case.reporter)))
        outbox = list(session.scalars(select(Outbox)))
        assert session.scalar(select(func.count(Message.id))) == REPORTS
    assert len(reporters) == REPORTS and set(reporters.values()) == {1}
    assert dovecot.count("seclistd-processed") == REPORTS

    delivered = collections.Counter(r.message["Message-ID"] for r in sink.messages())
    for row in outbox:
        assert delivered[row.message_id] >= 1, f"outbox {row.id} never delivered"
    duplicates = sum(n - 1 for n in delivered.values())
    assert duplicates <= kills, f"{duplicates} duplicate deliveries for {kills} kills"
    assert set(delivered) == {row.message_id for row in outbox}
