"""The SLA sweep: reminders, the fallback acknowledgment and reporter-update reminders.

Runs as a short scheduler job: it claims the cases whose ``next_sla_at`` has come (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL), acts on each, and reschedules it, in one transaction
with the mail it queues. A reminder is therefore sent exactly once, across restarts and
across daemons. A case found several steps behind (the daemon was down) gets only the
latest step, not a burst of stale reminders.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.mail.render import render
from seclistd.models import Case
from seclistd.workflows import lifecycle, sla, states

log = logging.getLogger(__name__)

SYSTEM = "seclistd"
BATCH = 500


def sweep(session: Session, now: dt.datetime, settings: Settings) -> int:
    cases = session.scalars(
        select(Case).where(Case.next_sla_at <= now).order_by(Case.next_sla_at)
        .limit(BATCH).with_for_update(skip_locked=True)).all()
    for case in cases:
        if case.state == states.NEW:
            _ack_step(session, now, settings, case)
        elif case.state in states.OPEN_STATES:
            _update_reminder(session, now, settings, case)
        sla.schedule(case, settings)
    if cases:
        log.info("SLA sweep handled %d cases", len(cases))
    return len(cases)


def _ack_step(session: Session, now: dt.datetime, settings: Settings, case: Case) -> None:
    steps = sla.ack_steps(case, settings)
    due = [i for i, at in enumerate(steps) if at <= now and i >= (case.ack_stage or 0)]
    if not due:
        return
    step = due[-1]
    case.ack_stage = step + 1
    view = lifecycle.case_view(case, settings)
    reminders = settings.sla.remind_after_business_days
    if step < len(reminders):
        body = render("team_reminder.txt.j2", settings.templates.dir, case=view,
                      days=reminders[step], business_days=settings.sla.ack_business_days)
        sent = lifecycle.notify_team(session, now, settings, case, kind="reminder",
                                     subject=f"Reminder: no answer yet: {case.subject}",
                                     body=body, handler_only=True)
        states.record(session, now, case, actor=SYSTEM, action="reminder",
                      detail=f"{reminders[step]} business day(s) without an answer; "
                             f"reminded {', '.join(sent) or 'nobody (no team)'}")
        return
    body = render("team_deadline_missed.txt.j2", settings.templates.dir, case=view,
                  business_days=settings.sla.ack_business_days,
                  fallback=settings.sla.fallback_ack)
    lifecycle.notify_team(session, now, settings, case, kind="deadline_missed",
                          subject=f"Deadline missed: {case.subject}", body=body)
    if not settings.sla.fallback_ack:
        states.record(session, now, case, actor=SYSTEM, action="deadline_missed",
                      detail="no human answer by the deadline; fallback_ack is off")
        return
    body = render("fallback_ack.txt.j2", settings.templates.dir, case=view)
    lifecycle.send_to_reporter(session, now, settings, case, kind="fallback_ack", body=body,
                               auto_submitted="auto-generated")
    case.acknowledged_at = now
    states.record(session, now, case, actor=SYSTEM, action="fallback_ack",
                  detail="no human answer by the deadline: acknowledged automatically, "
                         "team told", to_state=states.ACKNOWLEDGED)


def _update_reminder(session: Session, now: dt.datetime, settings: Settings,
                     case: Case) -> None:
    if sla.update_due(case, settings) > now:
        return
    case.update_reminders = (case.update_reminders or 0) + 1
    days = (now - (case.last_reporter_contact_at or case.received_at)).days
    body = render("update_reminder.txt.j2", settings.templates.dir,
                  case=lifecycle.case_view(case, settings), days=days)
    sent = lifecycle.notify_team(session, now, settings, case, kind="update_reminder",
                                 subject=f"The reporter has not heard from us: {case.subject}",
                                 body=body, handler_only=True)
    states.record(session, now, case, actor=SYSTEM, action="update_reminder",
                  detail=f"reporter not updated for {days} days; reminded {', '.join(sent)}")
