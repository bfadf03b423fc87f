"""One ingest-to-receipt flow at fixed dates in other years, so that a test or a piece of
code that assumes today's date (or this year, or winter time) fails at once rather than on
a holiday. Each date is chosen for what it crosses: a daylight-saving change inside the
acknowledgment window, and a holiday observed on a Monday."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.components import TEST_CLOCK, Sink, case_id, cli, report
from tests.conftest import Env

DATES = [
    # Friday 7 March 2031, 07:00 in New York (EST); summer time starts on Sunday the 9th:
    # three business days later is the end of Wednesday the 12th, in EDT.
    (dt.datetime(2031, 3, 7, 12, 0, tzinfo=dt.UTC), "-05:00",
     "2031-03-12T23:59:59-04:00", "Wednesday 12 March 2031"),
    # Thursday 1 July 2027, 08:00 EDT; Independence Day falls on a Sunday and is observed on
    # Monday the 5th: Friday the 2nd, Tuesday the 6th, Wednesday the 7th.
    (dt.datetime(2027, 7, 1, 12, 0, tzinfo=dt.UTC), "-04:00",
     "2027-07-07T23:59:59-04:00", "Wednesday 7 July 2027"),
]


@pytest.mark.parametrize(("clock", "offset", "due", "due_text"), DATES,
                         ids=[d[0].date().isoformat() for d in DATES])
def test_report_to_receipt_at_a_fixed_date(env: Env, sink: Sink, clock: dt.datetime,
                                           offset: str, due: str, due_text: str):
    TEST_CLOCK.restart(clock)
    done = cli(env.path, "ingest", "-", input=report(1))
    expected_id = case_id(1, clock)
    assert done.returncode == 0 and f"new case {expected_id}" in done.stdout, done.stderr
    shown = json.loads(cli(env.path, "--json", "cases", "show", expected_id).stdout)
    assert shown["received_at"].startswith(clock.astimezone(env.settings.project.tz)
                                           .strftime("%Y-%m-%dT%H:%M"))
    assert shown["received_at"].endswith(offset)
    assert shown["ack_due"] == due

    assert cli(env.path, "run", "--once").returncode == 0
    [receipt] = sink.to("reporter1@example.net")
    assert receipt.message["Subject"].startswith(f"[{expected_id}]")
    body = " ".join(receipt.message.get_body().get_content().split())
    assert due_text in body, body
