"""Business days: the acknowledgment deadline on the configured holiday calendar.

The deadline is the end (23:59:59 local) of the N-th working day after the *local* date of
receipt in ``project.timezone``; counting from a UTC date would be a day early east of UTC.
Holidays come from the ``holidays`` package (country and subdivision) plus
``calendar.extra_holidays``; working days are ``calendar.workdays``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo

import holidays

from seclistd.config import WEEKDAYS, CalendarSettings


@dataclass(frozen=True)
class BusinessCalendar:
    settings: CalendarSettings
    tz: ZoneInfo

    @cached_property
    def _holidays(self) -> holidays.HolidayBase:
        return holidays.country_holidays(self.settings.country,
                                         subdiv=self.settings.subdivision or None)

    @cached_property
    def _extra(self) -> frozenset[dt.date]:
        return frozenset(dt.date.fromisoformat(d) for d in self.settings.extra_holidays)

    @cached_property
    def _workdays(self) -> frozenset[int]:
        return frozenset(WEEKDAYS.index(d) for d in self.settings.workdays)

    def is_working_day(self, day: dt.date) -> bool:
        return (day.weekday() in self._workdays and day not in self._extra
                and day not in self._holidays)

    def nth_working_day_after(self, day: dt.date, n: int) -> dt.date:
        if not self._workdays:
            raise ValueError("calendar.workdays is empty")
        count = 0
        while count < n:
            day += dt.timedelta(days=1)
            if self.is_working_day(day):
                count += 1
        return day

    def end_of_day(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=self.tz)

    def deadline(self, received: dt.datetime, business_days: int) -> dt.datetime:
        """End of the ``business_days``-th working day after the local date of ``received``."""
        local_date = received.astimezone(self.tz).date()
        return self.end_of_day(self.nth_working_day_after(local_date, business_days))


@lru_cache(maxsize=8)
def calendar_for(settings: CalendarSettings, tz: ZoneInfo) -> BusinessCalendar:
    """One calendar per configuration: building the holiday table costs about a millisecond."""
    return BusinessCalendar(settings, tz)
