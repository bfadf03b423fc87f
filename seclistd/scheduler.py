"""Scheduled sweeps: short APScheduler jobs that each claim due rows in their own transaction.

Deadlines live in our own tables, never in an APScheduler job store, so several daemons on
one database never double-fire (APScheduler's FAQ: processes must not share a job store).
Within a sweep each row has its own savepoint (``reminders.sweep``): one row that fails is
recorded on itself and retried with backoff, and the rest of the sweep goes on.
``sweep_once`` runs every sweep once, for ``run --once``; ``start`` schedules them.
On PostgreSQL each sweep also takes a transaction advisory lock of its own
(``pg_try_advisory_xact_lock``): while one daemon runs a sweep, the others skip that turn,
so a sweep's decisions that rest on more than its claimed rows (the digest's "one per hour")
are never taken twice, and the rows themselves are claimed ``FOR UPDATE SKIP LOCKED``.
The member sweeps do the same per member (``member_notices.each_member``): bounce warnings
and removals (``bounces.sweep``, every 10 minutes: cheap, a query for due rows) and the key
check (``member_keys.sweep``: one gpg call per member, so daily, and at each start).
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from seclistd.config import Settings
from seclistd.db import transaction
from seclistd.errors import describe, trace
from seclistd.relay import release_dead_leases
from seclistd.workflows import (
    bounces,
    disclosure,
    member_keys,
    notice_reminders,
    notices,
    reminders,
    requests,
)

log = logging.getLogger(__name__)

SWEEP_LOCK_CLASS = 0x5EC1  # the first key of every sweep's advisory lock (the intake's differs)

Sweep = Callable[[Session, dt.datetime, Settings], int]


def sweep_leases(session: Session, now: dt.datetime, settings: Settings) -> int:
    freed = release_dead_leases(session)
    if freed:
        log.info("released %d outbox leases of processes that died", freed)
    return freed


# name -> (sweep, seconds between runs)
SWEEPS: dict[str, tuple[Sweep, int]] = {
    # Cheap (this host's leased rows only): often, so that the rows a killed daemon had
    # claimed go out soon from another daemon on its host.
    "leases": (sweep_leases, 15),
    "sla": (reminders.sweep, 60),
    # Embargoes that ended: disclose (every 20 s, so an advisory is out within the minute).
    "disclosure": (disclosure.sweep, 20),
    "digests": (notices.sweep, 60),
    "bounces": (bounces.sweep, 600),
    "member_keys": (member_keys.sweep, 86400),
    "requests": (requests.sweep, 300),  # join requests silent past their expiry
    "notice_reminders": (notice_reminders.sweep, 300),  # unacknowledged embargoed notices
}


def sweep_key(sweep: Sweep) -> int:
    """The second key of the sweep's advisory lock: stable across processes and versions."""
    return zlib.crc32(f"{sweep.__module__}.{sweep.__name__}".encode()) & 0x7FFFFFFF


def exclusive(session: Session, sweep: Sweep) -> bool:
    """Take the sweep's lock for this transaction; False: another daemon runs it now."""
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: BEGIN IMMEDIATE already makes every transaction exclusive
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:c, :k)"),
                                {"c": SWEEP_LOCK_CLASS, "k": sweep_key(sweep)}).scalar())


def run_sweep(factory: sessionmaker[Session], clock: Callable[[], dt.datetime],
              settings: Settings, sweep: Sweep) -> int:
    try:
        with transaction(factory) as session:
            if not exclusive(session, sweep):
                log.debug("sweep %s runs in another daemon; skipped", sweep.__name__)
                return 0
            return sweep(session, clock(), settings)
    except Exception as exc:  # noqa: BLE001 - one failed sweep must not stop the others
        # The error's own text may quote SQL parameters or content: its type and frames only.
        log.error("sweep %s failed (%s); it runs again at its next turn\n%s", sweep.__name__,
                  describe(exc), trace(exc))
        return 0


def sweep_once(factory: sessionmaker[Session], clock: Callable[[], dt.datetime],
               settings: Settings) -> None:
    for sweep, _interval in SWEEPS.values():
        run_sweep(factory, clock, settings, sweep)


def run_live_sweep(factory: sessionmaker[Session], clock: Callable[[], dt.datetime],
                   current: Callable[[], Settings], sweep: Sweep) -> int:
    """``run_sweep`` with the settings of the moment (the daemon's, swapped on SIGHUP)."""
    return run_sweep(factory, clock, current(), sweep)


def start(factory: sessionmaker[Session], clock: Callable[[], dt.datetime],
          settings: Settings, current: Callable[[], Settings] | None = None) -> Any:
    """A started BackgroundScheduler running every sweep (imported here: only the daemon
    needs APScheduler); with ``current``, each run reads the settings it returns."""
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(job_defaults={
        "misfire_grace_time": 1, "coalesce": True, "max_instances": 1}, timezone=dt.UTC)
    for name, (sweep, interval) in SWEEPS.items():
        live = current if current is not None else (lambda: settings)
        scheduler.add_job(run_live_sweep, "interval", seconds=interval, id=name,
                          args=(factory, clock, live, sweep), next_run_time=clock())
    scheduler.start()
    return scheduler
