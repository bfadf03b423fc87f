"""The SLA sweep: reminders, the fallback acknowledgment and reporter-update reminders.

Runs as a short scheduler job: it claims the cases whose ``next_sla_at`` has come (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL), acts on each, and reschedules it, in one transaction
with the mail it queues. A reminder is therefore sent exactly once, across restarts and
across daemons. A case found several steps behind (the daemon was down) gets only the
latest step, not a burst of stale reminders.

Each case is handled in its own savepoint: a case whose step raises is rolled back alone,
its error recorded on it (``sweep_error``, ``sweep_failures``), retried with backoff through
``next_sla_at``, listed by ``status``, and the team is told once; the other cases go on.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from seclistd import failures
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
        try:
            with session.begin_nested():
                _step(session, now, settings, case)
                session.flush()
        except Exception as exc:  # noqa: BLE001 - one case must not stop the sweep
            _failed(session, now, settings, case, exc)
    if cases:
        log.info("SLA sweep handled %d cases", len(cases))
    return len(cases)


def _step(session: Session, now: dt.datetime, settings: Settings, case: Case) -> None:
    """The case's due step and its next moment (inside the case's own savepoint)."""
    if case.state == states.NEW:
        _ack_step(session, now, settings, case)
    elif case.state in states.OPEN_STATES:
        _update_reminder(session, now, settings, case)
    sla.schedule(case, settings)
    if case.sweep_error is not None:
        states.record(session, now, case, actor=SYSTEM, action="sweep_recovered",
                      detail=f"the SLA sweep works again after {case.sweep_failures} "
                             "failed attempt(s)")
        case.sweep_error, case.sweep_failures = None, 0


def _failed(session: Session, now: dt.datetime, settings: Settings, case: Case,
            exc: Exception) -> None:
    """Record the failure on the case (its savepoint is rolled back), retry it with backoff,
    and tell the team the first time: one notice per failing case, not one per retry."""
    error = failures.describe(exc)
    log.error("SLA sweep of %s failed (it is retried with backoff): %s", case.id, error,
              exc_info=not isinstance(exc, SQLAlchemyError))
    first = not case.sweep_failures
    case.sweep_failures = (case.sweep_failures or 0) + 1
    case.sweep_error = error
    retry_at = now + dt.timedelta(seconds=failures.backoff(case.sweep_failures))
    case.next_sla_at = retry_at
    if not first:
        return
    told = _tell_team(session, now, settings, case, error, retry_at)
    states.record(session, now, case, actor=SYSTEM, action="sweep_failed",
                  detail=f"{error}; retried with backoff; {told}")


def _tell_team(session: Session, now: dt.datetime, settings: Settings, case: Case, error: str,
               retry_at: dt.datetime) -> str:
    """The one notice to the team about a case the sweep cannot handle; what became of it."""
    try:
        with session.begin_nested():
            body = render("team_sweep_failed.txt.j2", settings.templates.dir, case_id=case.id,
                          error=error, retry_at=lifecycle.local_time(settings, retry_at),
                          project=settings.project.name,
                          security_address=settings.project.security_address)
            sent = lifecycle.notify_team(session, now, settings, case, kind="sweep_failed",
                                         subject="Reminders stopped for this case", body=body)
            session.flush()
    except Exception as exc:  # noqa: BLE001 - the failure stays recorded and in `status`
        log.error("could not tell the team that the sweep of %s failed: %s", case.id,
                  failures.describe(exc))
        return f"the team could not be told ({failures.describe(exc)})"
    return f"team told: {', '.join(sent)}" if sent else "no team to tell"


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
