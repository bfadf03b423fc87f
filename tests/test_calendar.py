"""The acknowledgment deadline on the business-day calendar (DESIGN.md §3)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from seclistd.calendar import BusinessCalendar
from seclistd.config import CalendarSettings


def deadline(received: str, tz: str = "America/New_York", **cal: object) -> str:
    calendar = BusinessCalendar(CalendarSettings(**cal), ZoneInfo(tz))  # type: ignore[arg-type]
    return calendar.deadline(dt.datetime.fromisoformat(received), 3).isoformat()


@pytest.mark.parametrize(("received", "due"), [
    # Thursday 24 Dec 2026; 25 Dec is a holiday: Mon 28, Tue 29, Wed 30.
    ("2026-12-24T10:00:00-05:00", "2026-12-30T23:59:59-05:00"),
    # Tuesday before Thanksgiving (26 Nov 2026): Wed 25, Fri 27, Mon 30.
    ("2026-11-24T09:00:00-05:00", "2026-11-30T23:59:59-05:00"),
    # Late Friday in New York is Saturday in UTC: counting starts from the local Friday.
    ("2026-11-21T03:30:00+00:00", "2026-11-25T23:59:59-05:00"),
    # Saturday 7 Nov: Mon 9, Tue 10, Wed 11 is Veterans Day, so Thu 12.
    ("2026-11-07T12:00:00-05:00", "2026-11-12T23:59:59-05:00"),
])
def test_deadline_us(received: str, due: str):
    assert deadline(received) == due


def test_east_of_utc_counts_from_the_local_date():
    # 23:30 UTC Thursday is already Friday in Berlin: Mon, Tue, Wed (no Thanksgiving in DE).
    assert deadline("2026-11-19T23:30:00+00:00", "Europe/Berlin", country="DE") == \
        "2026-11-25T23:59:59+01:00"


def test_dst_change_keeps_local_end_of_day():
    # Europe leaves summer time on Sunday 25 Oct 2026; received Friday 23 Oct.
    assert deadline("2026-10-23T12:00:00+02:00", "Europe/Berlin", country="DE") == \
        "2026-10-28T23:59:59+01:00"


def test_workdays_and_extra_holidays():
    assert deadline("2026-11-19T10:00:00-05:00", workdays=("mon", "tue", "wed", "thu"),
                    extra_holidays=("2026-11-23",)) == "2026-11-30T23:59:59-05:00"
