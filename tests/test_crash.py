"""Crashes lose nothing: hundreds of reports in the IMAP inbox, the daemon killed with
SIGKILL at random moments several times, then restarted. Every report is exactly one case,
every outgoing mail was delivered, with at most one duplicate delivery per kill."""

from __future__ import annotations

import collections
import random
import signal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd.models import Case, Message, Outbox
from tests.components import Dovecot, Sink, pause, report, start_daemon, wait_for
from tests.conftest import make_env

REPORTS = 400
KILLS = 5


@pytest.mark.slow
def test_kill_9_loses_nothing(tmp_path: Path, dovecot: Dovecot, sink: Sink):
    # Every report gets its receipt and team notice (the flood limits would hold most back).
    env = make_env(tmp_path, imap=dovecot, relay_port=sink.port,
                   extra="[autoreply]\nmax_per_hour = 1000\nteam_digest_after = 1000\n")
    dovecot.append([report(i) for i in range(REPORTS)])
    rng = random.Random(20261121)
    log = tmp_path / "daemon.log"

    def progress() -> tuple[int, int]:
        with env.factory() as session:
            return (session.scalar(select(func.count(Message.id))) or 0,
                    session.scalar(select(func.count(Outbox.id)).where(
                        Outbox.status == "sent")) or 0)

    # The work: every report stored, and its two mails (receipt, team notice) sent. The kills
    # are spread over the whole of it, the k-th once (k+1)/(KILLS+1) of it is done, and each
    # must land while work is still in flight.
    total = REPORTS + 2 * REPORTS
    kills = 0
    for k in range(KILLS):
        target = total * (k + 1) // (KILLS + 1)
        proc = start_daemon(env.path, log)
        wait_for(lambda target=target: sum(progress()) >= target, timeout=120,
                 what=f"the daemon to do {target} of {total} units of work")
        pause(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1
        stored, sent = progress()
        assert stored + sent < total, f"kill {k + 1} came after all the work was done"

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
    # Every case wrote its receipt and its team notice, once: a lost row fails here.
    assert len(outbox) == 2 * REPORTS
    assert collections.Counter((r.case_id, r.kind) for r in outbox) == {
        (case, kind): 1 for case in {r.case_id for r in outbox}
        for kind in ("receipt", "team_new_case")}
    assert len({r.case_id for r in outbox}) == REPORTS
    assert dovecot.count("seclistd-processed") == REPORTS

    delivered = collections.Counter(r.message["Message-ID"] for r in sink.messages())
    for row in outbox:
        assert delivered[row.message_id] >= 1, f"outbox {row.id} never delivered"
    # A kill can cut off at most the mail in hand: at most one duplicate per kill.
    duplicates = sum(n - 1 for n in delivered.values())
    assert duplicates <= kills, f"{duplicates} duplicate deliveries for {kills} kills"
    assert max(delivered.values()) <= 1 + kills
    assert set(delivered) == {row.message_id for row in outbox}
