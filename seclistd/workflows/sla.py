"""The acknowledgment promise as a schedule: when a case next needs the SLA sweep.

A case in ``new`` passes through steps: one reminder to the team at the end of each of
``sla.remind_after_business_days``, then the deadline (``ack_due``). ``ack_stage`` counts
the steps done. An open case past ``new`` needs a reminder to its handler each
``sla.reporter_update_days`` without a mail to the reporter. ``schedule`` stores the next
moment in ``next_sla_at`` (indexed), so a sweep reads only the cases that are due.
"""

from __future__ import annotations

import datetime as dt

from seclistd.calendar import calendar_for
from seclistd.config import Settings
from seclistd.models import Case
from seclistd.workflows import states

AFTER_END_OF_DAY = dt.timedelta(seconds=1)


def ack_steps(case: Case, settings: Settings) -> list[dt.datetime]:
    """When each reminder and then the deadline fall due, in order."""
    calendar = calendar_for(settings.calendar, settings.project.tz)
    reminders = [calendar.deadline(case.received_at, days) + AFTER_END_OF_DAY
                 for days in settings.sla.remind_after_business_days]
    return [*reminders, case.ack_due + AFTER_END_OF_DAY]


def update_due(case: Case, settings: Settings) -> dt.datetime:
    """When the handler is next reminded that the reporter has not heard from us."""
    base = case.last_reporter_contact_at or case.acknowledged_at or case.received_at
    return base + dt.timedelta(days=settings.sla.reporter_update_days
                               * ((case.update_reminders or 0) + 1))


def schedule(case: Case, settings: Settings) -> None:
    if case.state == states.NEW:
        steps = ack_steps(case, settings)
        stage = case.ack_stage or 0
        case.next_sla_at = steps[stage] if stage < len(steps) else None
    elif case.state in states.OPEN_STATES:
        case.next_sla_at = update_due(case, settings)
    else:
        case.next_sla_at = None
    if case.next_sla_at is None:  # nothing left for the sweep: a failure of it is moot
        case.sweep_error, case.sweep_failures = None, 0
